"""AVSBench S4 / MS3 / AVSS datasets reading the official on-disk layouts.

Layouts (OpenNLPLab/AVSBench loaders and preprocessing scripts):

* S4, root = ``Single-source/``: ``s4_meta_data.csv`` (col0 name, col2 category, column ``split``);
  ``s4_data/visual_frames/{split}/{category}/{name}/{name}_{k}.png`` (k = 1..5), ``gt_masks/`` likewise but
  train clips only have ``_1``; ``audio_log_mel/{split}/{category}/{name}.pkl``, ``audio_wav/.../{name}.wav``.
* MS3, root = ``Multi-sources/``: ``ms3_meta_data.csv`` (col0 name, ``split``); frames
  ``ms3_data/visual_frames/{name}/{name}.mp4_{k}.png`` (no split folder), ``gt_masks/{split}/{name}/{name}_{k}.png``
  for every split, audio under ``audio_log_mel/{split}/`` and ``audio_wav/{split}/``.
* AVSS, root = the AVSBench-semantic folder: ``metadata.csv`` (``uid``, ``split``, ``label`` in v1s/v1m/v2),
  ``{label}/{uid}/frames/{i}.jpg`` (0-based, 5 or 10), ``labels_rgb/{i}.png`` (VOC bit-interleaved palette) or
  ``labels_semantic/{i}.png`` (class index), ``audio.wav`` (or a cached ``audio.pkl``). Clips are padded to 10
  frames with zero frames, background labels and per-frame flags.

Every item is a dict: ``frames`` float32 [T,3,S,S] (ImageNet-normalised; padded frames are 0), ``audio`` float32
[T,1,96,64], ``masks`` [T,h,w] (S4/MS3 float32 0/1, AVSS int64 class index with 255 = ignore where
``labels_semantic`` says so), ``frame_flags`` / ``label_flags`` bool [T], ``id`` and, per layout, ``category``
(S4) or ``subset`` (AVSS). Train masks follow the frames' geometry (h = w = S); val/test masks stay at the
evaluation resolution (S4/MS3: as stored, 224 on real data; AVSS: resized like the frames), so a model running at
another size must resize its logits to the masks. Frames and masks without annotation are 0 (background), exactly
as the official loaders pad them; ``label_flags`` tells the loss and metrics which to use.

Any bad file raises ``DatasetError`` naming the file and what was expected.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from avs_mamba.data.audio import PadMode, load_audio_examples
from avs_mamba.data.transforms import (
    ClipGeometry,
    Draws,
    TrainAugment,
    apply_to_image,
    apply_to_mask,
    normalize_frames,
    resize_geometry,
    short_side_crop_geometry,
)

__all__ = [
    "TASKS",
    "SPLITS",
    "AVSS_SUBSETS",
    "NUM_FRAMES",
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "DatasetError",
    "avss_palette",
    "decode_palette_mask",
    "S4Dataset",
    "MS3Dataset",
    "AVSSDataset",
    "build_dataset",
]

TASKS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")
AVSS_SUBSETS = ("v1s", "v1m", "v2")
NUM_FRAMES = {"s4": 5, "ms3": 5, "avss": 10}  # T per item (AVSS pads 5-s clips to 10)
NUM_CLASSES = {"s4": 1, "ms3": 1, "avss": 71}  # AVSS: 70 classes + background (index 0)
IGNORE_INDEX = 255
AVSS_SUBSET_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
AUDIO_SOURCES = ("auto", "pkl", "wav")
LABEL_SOURCES = ("auto", "rgb", "semantic")
OFF_PALETTE = ("background", "error")
MASK_RESIZE = ("nearest", "bilinear")
_LOG = logging.getLogger("avs_mamba.data")

T = TypeVar("T")


class DatasetError(ValueError):
    """A problem with one dataset file. ``kind`` is a short tag (``missing_file``, ``unreadable_image``,
    ``wrong_frame_count``, ``unknown_palette_colour``, ``bad_csv``, ``bad_mask``, ``bad_audio``,
    ``size_mismatch``, ``bad_label_map``); ``path`` the offending file or folder."""

    def __init__(self, message: str, *, kind: str = "unknown", path: str | Path | None = None) -> None:
        self.kind = kind
        self.path = Path(path) if path is not None else None
        self.detail = message
        super().__init__(f"{path}: {message}" if path is not None else message)


# ---------------------------------------------------------------------------------------------------------------
# file readers


def _read_image(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image (lazy PIL errors surface here, attributed to the file)."""
    if not path.is_file():
        raise DatasetError(f"{what} not found", kind="missing_file", path=path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt files
        raise DatasetError(f"{what} is not a readable image ({err})", kind="unreadable_image", path=path) from err


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the image's header alone: the fast up-front scan (no pixel is decoded)."""
    if not path.is_file():
        raise DatasetError(f"{what} not found", kind="missing_file", path=path)
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as err:
        raise DatasetError(f"{what} is not a readable image ({err})", kind="unreadable_image", path=path) from err


def _read_frame(path: Path) -> Image.Image:
    return _read_image(path, "video frame").convert("RGB")


def _read_binary_mask(path: Path) -> np.ndarray:
    """S4/MS3 ground truth -> uint8 {0, 1}: a binary mask, 0 = background and one foreground value (255 in 'L' as
    AVSBench ships them, a raw index in 'P'; an RGB file whose channels are equal counts as grey).

    Anything else is an error, not a guess: the official loaders read S4 masks with PIL ``convert('1')``
    (OpenNLPLab/AVSBench@f7414aff:avs_scripts/avs_s4/dataloader.py), which dithers grey levels and maps colours
    through their luma, so a grey or colour mask would not be read as drawn by them nor by a ``value > 0`` rule.
    """
    im = _read_image(path, "ground-truth mask")
    if im.mode in ("RGB", "RGBA", "LA"):
        rgb = np.asarray(im.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise DatasetError(
                f"ground-truth mask is a colour ({im.mode}) image; expected a single-channel binary mask "
                "(0 = background, 255 = foreground)",
                kind="bad_mask",
                path=path,
            )
        arr = rgb[..., 0]
    else:  # 1, L, P (raw palette indices), I, F: the stored value
        arr = np.asarray(im)
    values = np.unique(arr)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:5].tolist()) + (", ..." if len(values) > 5 else "")
        raise DatasetError(
            f"ground-truth mask has {len(values)} grey levels ({shown}); expected a binary mask (0 = background, "
            "one foreground value, e.g. 0/255): re-save it thresholded (the official loader's PIL convert('1') "
            "would dither the grey levels)",
            kind="bad_mask",
            path=path,
        )
    return (arr > 0).astype(np.uint8)


def avss_palette(num_classes: int = NUM_CLASSES["avss"]) -> np.ndarray:
    """The AVSBench colour palette ``[num_classes, 3]`` uint8: PASCAL-VOC bit interleaving, class 0 = black."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for j in range(num_classes):
        lab, bit = j, 7
        while lab > 0:
            palette[j, 0] |= (lab & 1) << bit
            palette[j, 1] |= ((lab >> 1) & 1) << bit
            palette[j, 2] |= ((lab >> 2) & 1) << bit
            lab >>= 3
            bit -= 1
    return palette


_PALETTE_KEYS = {int(r) << 16 | int(g) << 8 | int(b): j for j, (r, g, b) in enumerate(avss_palette())}


def decode_palette_mask(
    rgb: np.ndarray, path: Path | str = "<array>", *, off_palette: str = "error", counts: list[int] | None = None
) -> np.ndarray:
    """``[H, W, 3]`` palette colours -> uint8 class indices.

    A colour outside the palette is class 0 with ``off_palette="background"``, as the official loaders map it
    (``color_mask_to_label`` argmax over no match, SitongGong/AVS-Mamba@08b38b2:dataloader/v2_dataset.py), its pixel
    count appended to ``counts``; with ``"error"`` it raises ``DatasetError`` naming the colours.
    """
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    unknown = [k for k in uniq.tolist() if k not in _PALETTE_KEYS]
    if unknown and off_palette == "background":
        lut = np.array([_PALETTE_KEYS.get(k, 0) for k in uniq.tolist()], dtype=np.uint8)
        if counts is not None:
            counts.append(int(np.isin(keys, unknown).sum()))
        return lut[inverse].reshape(keys.shape)
    if unknown:
        counts = {k: int((keys == k).sum()) for k in unknown[:3]}
        shown = ", ".join(f"RGB{(k >> 16, (k >> 8) & 255, k & 255)} x{n}px" for k, n in counts.items())
        raise DatasetError(
            f"{len(unknown)} colour(s) not in the 71-class AVSBench palette: {shown}",
            kind="unknown_palette_colour",
            path=path,
        )
    lut = np.array([_PALETTE_KEYS[k] for k in uniq.tolist()], dtype=np.uint8)
    return lut[inverse].reshape(keys.shape)


def _read_rgb_label(path: Path, off_palette: str = "error", counts: list[int] | None = None) -> np.ndarray:
    im = _read_image(path, "colour label (labels_rgb)")
    return decode_palette_mask(np.asarray(im.convert("RGB")), path, off_palette=off_palette, counts=counts)


def _read_index_label(path: Path) -> np.ndarray:
    """``labels_semantic`` PNG: pixel value = class index 0..70, 255 = ignore."""
    im = _read_image(path, "index label (labels_semantic)")
    if im.mode not in ("L", "P", "I", "I;16"):
        raise DatasetError(
            f"index label has mode {im.mode}; expected single-channel class indices", kind="bad_mask", path=path
        )
    arr = np.asarray(im).astype(np.int64)
    bad = (arr >= NUM_CLASSES["avss"]) & (arr != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(np.unique(arr[bad]).tolist()))[:5]
        raise DatasetError(
            f"class indices {values} outside 0..{NUM_CLASSES['avss'] - 1} (and not ignore {IGNORE_INDEX})",
            kind="bad_mask",
            path=path,
        )
    return arr.astype(np.uint8)


def _read_csv(path: Path, required: Sequence[str], min_columns: int) -> pd.DataFrame:
    """Read a metadata CSV as strings, checking it exists and has the columns the official loaders use."""
    if not path.is_file():
        raise DatasetError("metadata CSV not found", kind="missing_file", path=path)
    try:
        df = pd.read_csv(path, sep=",", dtype=str, keep_default_na=False)
    except Exception as err:  # pandas: ParserError, EmptyDataError, UnicodeDecodeError, ...
        raise DatasetError(f"metadata CSV is not readable ({err})", kind="bad_csv", path=path) from err
    missing = [c for c in required if c not in df.columns]
    if missing or df.shape[1] < min_columns:
        raise DatasetError(
            f"columns {list(df.columns)}; expected at least {min_columns} columns including {list(required)}",
            kind="bad_csv",
            path=path,
        )
    return df


# ---------------------------------------------------------------------------------------------------------------
# clip description and loading


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Where one clip's files are and how it is padded."""

    clip_id: str
    frame_dir: Path
    frame_pattern: re.Pattern[str]  # names in frame_dir that count as frames of this clip
    frames: tuple[Path, ...]  # the real frames, in time order
    masks: tuple[Path | None, ...]  # one per real frame; None = not annotated
    mask_reader: Callable[[Path], np.ndarray]
    audio_pkl: Path
    audio_wav: Path
    label_flags: tuple[bool, ...]  # length T
    mask_count: tuple[Path, re.Pattern[str]] | None = None  # (folder, pattern): must hold exactly ``masks``
    extra: tuple[tuple[str, str], ...] = ()
    # Off-palette pixel counts of the clip's colour labels, filled while they are read (AVSS labels_rgb).
    off_palette_counts: list[int] | None = dataclasses.field(default=None, compare=False)


def _attempt(fn: Callable[[], T], problems: list[DatasetError] | None) -> T | None:
    """Run ``fn``; raise its DatasetError, or record it and return None when collecting ``problems``."""
    if problems is None:
        return fn()
    try:
        return fn()
    except DatasetError as err:
        problems.append(err)
        return None


def _check_count(folder: Path, pattern: re.Pattern[str], expected: Sequence[Path], what: str) -> bool:
    """The files in ``folder`` matching ``pattern`` must be as many as ``expected`` (names listed when not)."""
    if not folder.is_dir():
        raise DatasetError(f"{what} folder not found", kind="missing_file", path=folder)
    found = {p.name for p in folder.iterdir() if pattern.fullmatch(p.name)}
    if len(found) != len(expected):
        wanted = {p.name for p in expected}
        missing, extra = sorted(wanted - found), sorted(found - wanted)
        detail = "".join(
            f"; {label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
            for label, names in (("missing", missing), ("unexpected", extra))
            if names
        )
        raise DatasetError(
            f"found {len(found)} {what} files, expected {len(expected)}{detail}",
            kind="wrong_frame_count",
            path=folder,
        )
    return True


class _AVSBenchDataset(Dataset, abc.ABC):
    """Shared loading: frame count check, decoding, clip-consistent geometry, padding, audio.

    Subclasses set ``rows`` (one metadata row per clip of the split) and describe a clip's files in
    ``clip_spec``.
    """

    task: str = ""
    csv_name: str = ""
    audio_pad: PadMode = "repeat"
    mask_dtype: torch.dtype = torch.float32

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 224,
        train_augment: TrainAugment | None = None,
        audio_source: str = "auto",
        *,
        mask_size: int | None = None,
        train_mask_resize: str = "nearest",
        seed: int = 0,
        skip_unknown_splits: bool = False,
    ) -> None:
        self.root = Path(root)
        self.skip_unknown_splits = skip_unknown_splits
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if mask_size is not None and (not isinstance(mask_size, int) or mask_size < 1):
            raise ValueError(f"mask_size must be a positive int or None, got {mask_size!r}")
        if audio_source not in AUDIO_SOURCES:
            raise ValueError(f"audio_source must be one of {AUDIO_SOURCES}, got {audio_source!r}")
        if train_augment is not None and split != "train":
            raise ValueError(f"train_augment is only allowed for the train split, got split {split!r}")
        if train_mask_resize not in MASK_RESIZE:
            raise ValueError(f"train_mask_resize must be one of {MASK_RESIZE}, got {train_mask_resize!r}")
        if not self.root.is_dir():
            raise DatasetError(f"{self.task.upper()} dataset root not found", kind="missing_file", path=self.root)
        self.split = split
        self.image_size = image_size
        self.mask_size = mask_size
        self.audio_source = audio_source
        self.augment = train_augment
        self.train_mask_resize = train_mask_resize
        self.seed = seed
        self.epoch = 0
        self._off_palette_reported: set[str] = set()
        self.num_frames = NUM_FRAMES[self.task]

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (they depend on seed, epoch and index only)."""
        self.epoch = epoch

    @abc.abstractmethod
    def clip_spec(self, index: int) -> ClipSpec:
        """Paths, flags and readers of clip ``index`` (no file is read)."""

    def __len__(self) -> int:
        return len(self.rows)

    def _select(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows of this split (the official loaders filter on the ``split`` column).

        A row whose split is none of train/val/test (a typo such as "trian") would silently drop its clip from every
        split: it is an error unless ``skip_unknown_splits`` (``check_dataset`` reports those rows itself)."""
        bad = df[~df["split"].isin(SPLITS)]
        if len(bad) and not self.skip_unknown_splits:
            raise DatasetError(
                f"{len(bad)} row(s) have a split outside {SPLITS}, e.g. line {bad.index[0] + 2} with split "
                f"{bad['split'].iloc[0]!r}; fix the metadata CSV (`avs-bench data check` lists every row)",
                kind="bad_csv",
                path=self.root / self.csv_name,
            )
        return df[df["split"] == self.split].reset_index(drop=True)

    # -- geometry -------------------------------------------------------------------------------------------------

    def _generator(self, index: int, frame: int = 0) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index, frame]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _train_geometry(self, width: int, height: int) -> ClipGeometry:
        """Deterministic train geometry when not augmenting (plain resize; AVSS overrides with its crop)."""
        return resize_geometry(width, height, self.image_size)

    def _eval_mask_geometry(self, frame_geometry: ClipGeometry, width: int, height: int) -> ClipGeometry | None:
        """S4/MS3 val/test: masks as stored unless ``mask_size`` asks otherwise (None = untouched)."""
        return None if self.mask_size is None else resize_geometry(width, height, self.mask_size)

    # -- loading --------------------------------------------------------------------------------------------------

    def _audio_path(self, spec: ClipSpec) -> Path:
        """``audio_source`` "pkl"/"wav" require that file; "auto" takes the cached log-mel, else the WAV."""
        pkl, wav = spec.audio_pkl, spec.audio_wav
        path = {"pkl": pkl, "wav": wav}.get(self.audio_source, pkl if pkl.is_file() else wav)
        if not path.is_file():
            expected = str(path) if self.audio_source != "auto" else f"{pkl} or {wav}"
            raise DatasetError(f"audio not found; expected {expected}", kind="missing_file", path=path)
        if path.stat().st_size == 0:
            raise DatasetError("audio file is empty", kind="bad_audio", path=path)
        return path

    def _load_audio(self, spec: ClipSpec) -> torch.Tensor:
        path = self._audio_path(spec)
        try:
            return load_audio_examples(path, self.num_frames, self.audio_pad)
        except FileNotFoundError as err:
            raise DatasetError(f"audio file not found ({err})", kind="missing_file", path=path) from err
        except ValueError as err:
            raise DatasetError(f"bad audio: {err}", kind="bad_audio", path=path) from err

    def _load_raw(
        self, spec: ClipSpec, problems: list[DatasetError] | None = None
    ) -> tuple[list[Image.Image], list[np.ndarray | None], torch.Tensor | None]:
        """Decode every file of a clip; with ``problems`` given, record each failure and keep going."""
        counted = _attempt(lambda: _check_count(spec.frame_dir, spec.frame_pattern, spec.frames, "frame"), problems)
        # A wrong count already explains missing frames; do not report each of them again.
        frames = [_attempt(lambda p=p: _read_frame(p), problems) for p in spec.frames] if counted else []
        masks_counted = True
        if spec.mask_count is not None:
            folder, pattern = spec.mask_count
            masks_counted = _attempt(lambda: _check_count(folder, pattern, spec.masks, "mask"), problems)
        masks = [
            None if p is None or not masks_counted else _attempt(lambda p=p: spec.mask_reader(p), problems)
            for p in spec.masks
        ]
        audio = _attempt(lambda: self._load_audio(spec), problems)
        loaded = [f for f in frames if f is not None]
        if loaded:
            size = loaded[0].size
            for path, frame in zip(spec.frames, frames, strict=True):
                if frame is not None and frame.size != size:
                    _attempt(lambda p=path, f=frame: self._size_error(p, f.size, size, "frame"), problems)
            for path, mask in zip(spec.masks, masks, strict=True):
                if mask is not None and mask.shape[::-1] != size:
                    _attempt(lambda p=path, m=mask: self._size_error(p, m.shape[::-1], size, "mask"), problems)
        return frames, masks, audio

    def _train_frames(
        self, index: int, frames: list[Image.Image], masks: list[np.ndarray | None]
    ) -> tuple[list[Image.Image], list[np.ndarray | None]]:
        """Augment (when configured) and bring each train frame and mask to ``image_size``; each frame gets its own
        final geometry, since per-frame augmentation leaves the frames of a clip at different sizes."""
        resample = self.train_mask_resize if self.mask_dtype == torch.float32 else "nearest"  # labels stay labels
        images, out = [], []
        for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            if self.augment is not None:
                draws = Draws(self._generator(index, t if self.augment.per_frame else 0))
                frame, mask = self.augment(frame, mask, draws)
            geometry = self._train_geometry(frame.width, frame.height)
            images.append(apply_to_image(frame, geometry))
            out.append(None if mask is None else apply_to_mask(mask, geometry, resample))
        return images, out

    def _report_off_palette(self, spec: ClipSpec) -> None:
        """Log, once per clip, how many label pixels had a colour outside the palette (read as background)."""
        counts = spec.off_palette_counts or []
        if sum(counts) and spec.clip_id not in self._off_palette_reported:
            self._off_palette_reported.add(spec.clip_id)
            _LOG.warning(
                "%s clip %s: %d label pixel(s) in %d frame(s) have a colour outside the AVSBench palette; read as "
                "class 0 (background) as the official loader does (data.off_palette=error refuses the clip)",
                self.task.upper(),
                spec.clip_id,
                sum(counts),
                sum(1 for c in counts if c),
            )

    @staticmethod
    def _size_error(path: Path | None, got: tuple[int, ...], want: tuple[int, ...], what: str) -> None:
        raise DatasetError(
            f"{what} is {got[0]}x{got[1]} (w x h), expected {want[0]}x{want[1]} like the clip's first frame",
            kind="size_mismatch",
            path=path,
        )

    def scan_problems(self, index: int) -> list[DatasetError]:
        """The problems of clip ``index`` found without decoding (milliseconds a clip): file counts, every frame's
        and mask's header and size, the audio file's presence. Same messages as :meth:`clip_problems`."""
        problems: list[DatasetError] = []
        spec = _attempt(lambda: self.clip_spec(index), problems)
        if spec is None:
            return problems
        counted = _attempt(lambda: _check_count(spec.frame_dir, spec.frame_pattern, spec.frames, "frame"), problems)
        frames = [_attempt(lambda p=p: _image_size(p, "video frame"), problems) for p in spec.frames] if counted else []
        masks_counted = True
        if spec.mask_count is not None:
            folder, pattern = spec.mask_count
            masks_counted = _attempt(lambda: _check_count(folder, pattern, spec.masks, "mask"), problems)
        gt = "ground-truth mask"  # the words of _read_binary_mask / _read_*_label, so both scans say the same
        mask_sizes = [
            None if p is None or not masks_counted else _attempt(lambda p=p: _image_size(p, gt), problems)
            for p in spec.masks
        ]
        _attempt(lambda: self._audio_path(spec), problems)
        size = next((f for f in frames if f is not None), None)
        for what, paths, sizes in (("frame", spec.frames, frames), ("mask", spec.masks, mask_sizes)):
            for path, got in zip(paths, sizes, strict=False):
                if size is not None and got is not None and got != size:
                    _attempt(lambda p=path, g=got, w=what: self._size_error(p, g, size, w), problems)
        return problems

    def clip_problems(self, index: int) -> list[DatasetError]:
        """Every problem of clip ``index`` (all files are read; nothing stops at the first failure)."""
        problems: list[DatasetError] = []
        spec = _attempt(lambda: self.clip_spec(index), problems)
        if spec is not None:
            self._load_raw(spec, problems)
        return problems

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One clip: frames [T,3,S,S], audio [T,1,96,64], masks [T,h,w], flags [T], id (+ category/subset)."""
        if index < 0:
            index += len(self)
        spec = self.clip_spec(index)
        frames, masks, audio = self._load_raw(spec)
        self._report_off_palette(spec)
        width, height = frames[0].size
        if self.split == "train":
            images, masks = self._train_frames(index, frames, masks)
            mask_hw = (self.image_size, self.image_size)
        else:
            geometry = resize_geometry(width, height, self.image_size)
            mask_geometry = self._eval_mask_geometry(geometry, width, height)
            images = [apply_to_image(f, geometry) for f in frames]
            if mask_geometry is not None:
                masks = [None if m is None else apply_to_mask(m, mask_geometry) for m in masks]
            mask_hw = (height, width) if mask_geometry is None else (mask_geometry.size, mask_geometry.size)

        T = self.num_frames
        real = normalize_frames(images)  # [n, 3, S, S]
        frames_out = real.new_zeros((T, *real.shape[1:]))
        frames_out[: real.shape[0]] = real

        masks_out = torch.zeros((T, *mask_hw), dtype=self.mask_dtype)
        for t, mask in enumerate(masks):
            if mask is not None:
                masks_out[t] = torch.as_tensor(np.array(mask), dtype=self.mask_dtype)

        frame_flags = torch.zeros(T, dtype=torch.bool)
        frame_flags[: len(frames)] = True
        item: dict[str, Any] = {
            "frames": frames_out,
            "audio": audio,
            "masks": masks_out,
            "frame_flags": frame_flags,
            "label_flags": torch.tensor(spec.label_flags, dtype=torch.bool),
            "id": spec.clip_id,
        }
        item.update(dict(spec.extra))
        return item


class S4Dataset(_AVSBenchDataset):
    """AVSBench-object Single-source (S4): 5 frames, masks for frame 1 only in train (semi-supervised)."""

    task = "s4"
    csv_name = "s4_meta_data.csv"

    def __init__(self, root: str | Path, split: str, image_size: int = 224, **kwargs: Any) -> None:
        super().__init__(root, split, image_size, **kwargs)
        df = _read_csv(self.root / self.csv_name, required=["split"], min_columns=3)
        # The official loader uses positional columns: col0 = video name, col2 = category.
        self.rows = self._select(df).iloc[:, [0, 2]].set_axis(["name", "category"], axis=1)
        self.data_dir = self.root / "s4_data"

    def clip_spec(self, index: int) -> ClipSpec:
        name, category = self.rows.iloc[index]
        sub = Path(self.split, category)
        frame_dir = self.data_dir / "visual_frames" / sub / name
        mask_dir = self.data_dir / "gt_masks" / sub / name
        annotated = 1 if self.split == "train" else 5
        return ClipSpec(
            clip_id=name,
            frame_dir=frame_dir,
            frame_pattern=re.compile(re.escape(name) + r"_\d+\.png"),
            frames=tuple(frame_dir / f"{name}_{k}.png" for k in range(1, 6)),
            masks=tuple(mask_dir / f"{name}_{k}.png" if k <= annotated else None for k in range(1, 6)),
            mask_reader=_read_binary_mask,
            audio_pkl=self.data_dir / "audio_log_mel" / sub / f"{name}.pkl",
            audio_wav=self.data_dir / "audio_wav" / sub / f"{name}.wav",
            label_flags=tuple(k <= annotated for k in range(1, 6)),
            extra=(("category", category),),
        )


class MS3Dataset(_AVSBenchDataset):
    """AVSBench-object Multi-sources (MS3): 5 frames named ``{name}.mp4_{k}.png``, all 5 annotated."""

    task = "ms3"
    csv_name = "ms3_meta_data.csv"

    def __init__(self, root: str | Path, split: str, image_size: int = 224, **kwargs: Any) -> None:
        super().__init__(root, split, image_size, **kwargs)
        df = _read_csv(self.root / self.csv_name, required=["split"], min_columns=2)
        self.rows = self._select(df).iloc[:, [0]].set_axis(["name"], axis=1)
        self.data_dir = self.root / "ms3_data"

    def clip_spec(self, index: int) -> ClipSpec:
        name = self.rows.iloc[index, 0]
        frame_dir = self.data_dir / "visual_frames" / name  # no split folder for frames
        mask_dir = self.data_dir / "gt_masks" / self.split / name
        return ClipSpec(
            clip_id=name,
            frame_dir=frame_dir,
            frame_pattern=re.compile(re.escape(name) + r"\.mp4_\d+\.png"),
            frames=tuple(frame_dir / f"{name}.mp4_{k}.png" for k in range(1, 6)),
            masks=tuple(mask_dir / f"{name}_{k}.png" for k in range(1, 6)),
            mask_reader=_read_binary_mask,
            audio_pkl=self.data_dir / "audio_log_mel" / self.split / f"{name}.pkl",
            audio_wav=self.data_dir / "audio_wav" / self.split / f"{name}.wav",
            label_flags=(True,) * 5,
        )


class AVSSDataset(_AVSBenchDataset):
    """AVSBench-semantic (AVSS): v1s/v1m (5 frames) and v2 (10 frames) clips padded to 10, 71 classes.

    Extra args: ``subsets`` (any of v1s, v1m, v2) and ``label_source``: ``"rgb"`` (``labels_rgb`` palette, what
    the official loader reads), ``"semantic"`` (``labels_semantic`` indices, 255 = ignore) or ``"auto"``
    (``labels_rgb`` when the clip has it, else ``labels_semantic``); ``off_palette``: a ``labels_rgb`` colour outside
    the palette is class 0 (``"background"``, the official loader's reading, logged once per clip with its pixel
    count) or a ``DatasetError`` (``"error"``). Train frames (after ``train_augment``, if any) get the official
    short-side resize then centre crop; val/test frames and masks are plainly resized to
    ``image_size`` (masks to ``mask_size`` if given). Rows of the split whose ``label`` is not v1s/v1m/v2 raise
    ``DatasetError`` unless ``skip_unknown_labels`` (``check_dataset`` sets it and reports those rows itself).
    """

    task = "avss"
    csv_name = "metadata.csv"
    audio_pad = "zero"
    mask_dtype = torch.int64

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 224,
        *,
        subsets: Sequence[str] = AVSS_SUBSETS,
        label_source: Literal["auto", "rgb", "semantic"] = "auto",
        off_palette: Literal["background", "error"] = "background",
        skip_unknown_labels: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, split, image_size, **kwargs)
        unknown = [s for s in subsets if s not in AVSS_SUBSETS]
        if unknown or not subsets:
            raise ValueError(f"subsets must be a non-empty selection of {AVSS_SUBSETS}, got {list(subsets)}")
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
        if off_palette not in OFF_PALETTE:
            raise ValueError(f"off_palette must be one of {OFF_PALETTE}, got {off_palette!r}")
        self.label_source = label_source
        self.off_palette = off_palette
        csv_path = self.root / self.csv_name
        df = _read_csv(csv_path, required=["uid", "split", "label"], min_columns=3)
        selected = self._select(df)
        bad = selected[~selected["label"].isin(AVSS_SUBSETS)]
        if len(bad) and not skip_unknown_labels:
            raise DatasetError(
                f"{len(bad)} {self.split} row(s) have a label outside {AVSS_SUBSETS}, e.g. uid "
                f"{bad['uid'].iloc[0]!r} with label {bad['label'].iloc[0]!r}",
                kind="bad_csv",
                path=csv_path,
            )
        self.rows = selected[selected["label"].isin(list(subsets))].reset_index(drop=True)[["uid", "label"]]
        self.classes = self._read_label_map(self.root / "label2idx.json")

    @staticmethod
    def _read_label_map(path: Path) -> list[str] | None:
        """Class names from ``label2idx.json`` in key order (only the order and length matter), if present."""
        if not path.is_file():
            return None
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"not a readable JSON file ({err})", kind="bad_label_map", path=path) from err
        if not isinstance(mapping, dict) or len(mapping) != NUM_CLASSES["avss"]:
            size = len(mapping) if isinstance(mapping, dict) else type(mapping).__name__
            raise DatasetError(
                f"label map has {size} entries, expected a dict of {NUM_CLASSES['avss']} classes",
                kind="bad_label_map",
                path=path,
            )
        return list(mapping)

    def _train_geometry(self, width: int, height: int) -> ClipGeometry:
        return short_side_crop_geometry(width, height, self.image_size)

    def _eval_mask_geometry(self, frame_geometry: ClipGeometry, width: int, height: int) -> ClipGeometry | None:
        return frame_geometry if self.mask_size is None else frame_geometry.with_size(self.mask_size)

    def clip_spec(self, index: int) -> ClipSpec:
        uid, subset = self.rows.iloc[index]
        clip_dir = self.root / subset / uid
        n = AVSS_SUBSET_FRAMES[subset]
        rgb_dir, sem_dir = clip_dir / "labels_rgb", clip_dir / "labels_semantic"
        use_rgb = self.label_source == "rgb" or (
            self.label_source == "auto" and (rgb_dir.is_dir() or not sem_dir.is_dir())
        )
        counts: list[int] = []
        rgb_reader = functools.partial(_read_rgb_label, off_palette=self.off_palette, counts=counts)
        label_dir, reader = (rgb_dir, rgb_reader) if use_rgb else (sem_dir, _read_index_label)
        # v1s train clips carry one annotation (frame 0); every other clip is fully annotated.
        annotated = 1 if (subset == "v1s" and self.split == "train") else n
        pad = NUM_FRAMES["avss"] - n
        return ClipSpec(
            clip_id=uid,
            frame_dir=clip_dir / "frames",
            frame_pattern=re.compile(r"\d+\.jpg"),
            frames=tuple(clip_dir / "frames" / f"{i}.jpg" for i in range(n)),
            masks=tuple(label_dir / f"{i}.png" if i < annotated else None for i in range(n)),
            mask_reader=reader,
            audio_pkl=clip_dir / "audio.pkl",
            audio_wav=clip_dir / "audio.wav",
            label_flags=tuple(i < annotated for i in range(n)) + (False,) * pad,
            mask_count=None if annotated == 1 else (label_dir, re.compile(r"\d+\.png")),
            extra=(("subset", subset),),
            off_palette_counts=counts,
        )


_DATASETS: dict[str, type[_AVSBenchDataset]] = {"s4": S4Dataset, "ms3": MS3Dataset, "avss": AVSSDataset}


def build_dataset(task: str, root: str | Path, split: str, **kwargs: Any) -> _AVSBenchDataset:
    """The dataset of ``task`` (s4, ms3, avss) for ``split``; ``kwargs`` go to its constructor."""
    if task not in _DATASETS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return _DATASETS[task](root, split, **kwargs)
