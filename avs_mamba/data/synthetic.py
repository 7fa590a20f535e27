"""Synthetic AVSBench: S4-, MS3- and AVSS-like clips written in the real on-disk layouts.

The embedded default dataset, so that the whole suite runs on a CPU with nothing to download. It is written in
exactly the layouts of AVSBench (``Single-source/``, ``Multi-sources/``, AVSS ``metadata.csv`` + per-clip folders),
so the real loaders read it unchanged.

**Classes.** Class ``c`` (0-based; AVSS label id ``c + 1``) has a visual signature, shape ``c mod 6`` (disc,
square, triangle, diamond, ring, cross) x colour ``c mod 8`` x texture ``c div 24`` (solid, striped, checked),
unique for up to 70 classes (the first 6 differ in both shape and colour), and a sound: the HTK-mel range
150-6000 Hz is cut into ``num_classes`` equal bands, class ``c`` owns band ``c``; even classes play a harmonic tone
(fundamental at the band centre, 2nd and 3rd harmonics at 1/2 and 1/4 amplitude), odd classes band-limited noise
filling the middle 60 % of the band. Names read like ``red-disc`` or ``blue-square-striped``.

**Visuals.** A frame is a smooth, low-saturation grey gradient (per clip) plus fresh pixel noise (per frame), with
flat-coloured, non-overlapping objects, each in its own cell of a ``g x g`` grid (``g = ceil(sqrt(#objects))``),
radius 30-40 % of the cell. Textures darken alternate stripes / checks to 55 %. Objects are static unless they are
the sounding member of a temporal-hard pair.

**Sounds and masks.** The WAV (16 kHz mono int16) is the sum of the sounding objects' class sounds, each scaled
per second by its loudness (0 = silent; 10 ms ramps between seconds), plus a faint white-noise floor. Ground
truth for second ``k`` contains exactly the objects sounding during that second. Every clip also holds
``num_distractors`` *silent distractors*: objects of classes that sound in no part of the clip, so a model must
listen to know which object to segment.

**Temporal-hard clips** (a ``temporal_hard_fraction`` of clips): one sounding object gets a silent twin of the same
class. The twin keeps a constant size and brightness; the sounding one's radius and brightness follow its
loudness, which varies strongly from second to second, over the same range as the twin's. In any one frame the
two look alike; only how the object changes across frames, in step with the audio, tells them apart.

**Tasks.** *S4*: one source, sounding all clip long (5 s); train clips have the mask of frame 1 only. *MS3*: 2 to
``max_sources`` sources whose on/off state switches per second (each second has at least one source on, each
source is on in at least one second); the mask of second ``k`` contains only the objects on in that second.
*AVSS*: ``v1s`` clips are S4-like (5 s, train labels for frame 0 only), ``v1m`` MS3-like (5 s) and ``v2``
1-to-``max_sources``-source switching clips of 10 s; labels are class indices (``labels_semantic``) and VOC-palette
colours (``labels_rgb``), frames are JPEGs ``avss_aspect`` times wider than tall with the objects in the centre
square, so the loaders' resize and centre-crop paths are exercised without cutting objects.

**Files.** S4/MS3 write PNG frames, single-channel 0/255 PNG masks, the WAV and its log-mel ``.pkl`` (computed
from the quantised WAV samples, so both audio paths of the loaders agree); CSV headers are ``name,start,category,
split`` (S4) and ``video_id,split`` (MS3), the columns the official code reads by position. AVSS writes JPEG frames,
``audio.wav`` only (as the official release) and a 71-entry ``label2idx.json`` (background 0, the synthetic classes
1..K, placeholders ``unused-j`` after). Frames and masks are stored at ``image_size`` (default 64 px; real S4/MS3
store both at 224 x 224): loaders resize frames to what the experiment asks for and keep S4/MS3 eval masks as
stored. Each root also gets ``synth_clips.csv`` (per clip: temporal-hard flag, sources, silent objects, per-source
on/off pattern; for slicing results) and ``synth_config.json``.

**Determinism.** Each clip draws from its own ``numpy`` generator seeded by (seed, kind, split, index), PNGs carry
no timestamps, JPEG settings are fixed, CSV rows are sorted, and the memory-address storage key inside pickled
tensors is zeroed: one seed gives byte-identical output, whatever the order clips are written in.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io.wavfile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from avs_mamba.data.audio import SAMPLE_RATE, hertz_to_mel, save_audio_pkl, waveform_to_examples
from avs_mamba.data.avsbench import NUM_CLASSES, avss_palette

__all__ = [
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "ROOT_NAMES",
    "SynthClass",
    "SynthObject",
    "SynthClip",
    "SplitCounts",
    "SynthConfig",
    "synth_classes",
    "sample_clip",
    "render_clip",
    "semantic_labels",
    "clip_audio",
    "generate",
]

Task = Literal["s4", "ms3", "avss", "all"]
Kind = Literal["s4", "ms3", "v1s", "v1m", "v2"]

SPLITS = ("train", "val", "test")
KINDS: tuple[str, ...] = ("s4", "ms3", "v1s", "v1m", "v2")
ROOT_NAMES = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSS"}
SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 205, 40),
    "magenta": (205, 60, 200),
    "cyan": (40, 200, 215),
    "orange": (240, 130, 30),
    "white": (240, 240, 240),
}
TEXTURES = ("solid", "striped", "checked")
MAX_CLASSES = 70  # AVSS: 70 sounding classes + background
TEXTURE_SHADE = 0.55  # darker half of a striped / checked texture
BAND_HZ = (150.0, 6000.0)  # inside VGGish's 125-7500 Hz mel range
SOURCE_RMS = 0.08
NOISE_FLOOR_RMS = 0.002
RAMP_SECONDS = 0.01


# ----------------------------------------------------------------------------------------------------------------
# Classes


@dataclass(frozen=True)
class SynthClass:
    """One synthetic class: visual signature and sound. ``index`` is 0-based; the AVSS label id is ``index + 1``."""

    index: int
    name: str
    shape: str
    colour: tuple[int, int, int]
    texture: str
    sound: str  # "tone" (harmonic, fundamental at the band centre) or "noise" (band-limited)
    band_hz: tuple[float, float]  # the class's own frequency band

    @property
    def f0(self) -> int:
        """The tone's fundamental: the band's mel centre, rounded to whole Hz (so one second is one period)."""
        lo, hi = hertz_to_mel(np.array(self.band_hz))
        return round(float(_mel_to_hertz((lo + hi) / 2)))


def _mel_to_hertz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of the HTK mel scale used by ``hertz_to_mel``."""
    return 700.0 * (np.exp(np.asarray(mel, dtype=np.float64) / 1127.0) - 1.0)


def synth_classes(num_classes: int) -> list[SynthClass]:
    """The ``num_classes`` synthetic classes (see the module docstring for the scheme)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
    colour_names = list(COLOURS)
    edges = _mel_to_hertz(np.linspace(*hertz_to_mel(np.array(BAND_HZ)), num_classes + 1))
    classes = []
    for c in range(num_classes):
        # c mod 6 and c mod 8 determine c mod 24 (CRT), and c div 24 picks the texture: unique up to 72 classes.
        shape, colour, texture = SHAPES[c % 6], colour_names[c % 8], TEXTURES[c // 24]
        name = f"{colour}-{shape}" + ("" if texture == "solid" else f"-{texture}")
        band = (float(edges[c]), float(edges[c + 1]))
        sound = "tone" if c % 2 == 0 else "noise"
        classes.append(SynthClass(c, name, shape, COLOURS[colour], texture, sound, band))
    return classes


# ----------------------------------------------------------------------------------------------------------------
# Config


class SplitCounts(BaseModel):
    """Number of clips per split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: int = Field(ge=0)
    val: int = Field(ge=0)
    test: int = Field(ge=0)


class SynthConfig(BaseModel):
    """Knobs of the synthetic dataset. Unknown keys and out-of-range values raise (pydantic ``ValidationError``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0)
    image_size: int = Field(64, ge=32, le=512, description="stored frame and mask height (S4/MS3: width too), px")
    avss_aspect: float = Field(1.5, ge=1.0, le=2.0, description="AVSS frame width / height")
    # 4 = the fewest an MS3 clip needs (3 sources + 1 distractor). Each class is one sound -> look pairing that a
    # random-init model has to discover from masks alone; with 8 the 4-epoch smoke recipe stays near the
    # audio-blind level (S4 test M_J ~0.5), with 4 it learns them (~0.74). Raise it for a harder benchmark.
    num_classes: int = Field(4, ge=2, le=MAX_CLASSES)
    num_distractors: int = Field(1, ge=0, le=4, description="silent objects of non-sounding classes per clip")
    max_sources: int = Field(3, ge=2, le=4, description="most sources in an MS3 / v1m / v2 clip")
    temporal_hard_fraction: float = Field(0.25, ge=0.0, le=1.0)
    s4: SplitCounts = SplitCounts(train=200, val=40, test=40)
    ms3: SplitCounts = SplitCounts(train=100, val=20, test=20)
    avss_v1s: SplitCounts = SplitCounts(train=60, val=15, test=15)
    avss_v1m: SplitCounts = SplitCounts(train=40, val=10, test=10)
    avss_v2: SplitCounts = SplitCounts(train=60, val=15, test=15)

    @model_validator(mode="after")
    def _enough_classes(self) -> SynthConfig:
        need = self.max_sources + self.num_distractors
        if self.num_classes < need:
            raise ValueError(
                f"num_classes={self.num_classes} is too small: a clip needs up to max_sources + num_distractors"
                f" = {need} distinct classes"
            )
        return self

    def counts(self, kind: str) -> SplitCounts:
        """Split counts of one clip kind (s4, ms3, v1s, v1m, v2)."""
        return {"s4": self.s4, "ms3": self.ms3, "v1s": self.avss_v1s, "v1m": self.avss_v1m, "v2": self.avss_v2}[kind]


# ----------------------------------------------------------------------------------------------------------------
# Clip specification (what is where, and when it sounds)


@dataclass
class SynthObject:
    """One drawn object. Per-second arrays have length ``seconds``; it sounds in second k iff ``loudness[k] > 0``."""

    cls: int
    cx: float  # centre, pixels from the left edge of the frame
    cy: float
    radius: np.ndarray  # [T] px
    brightness: np.ndarray  # [T] colour multiplier
    loudness: np.ndarray  # [T] in [0, 1]


@dataclass
class SynthClip:
    """Everything needed to render one clip's frames, masks and audio."""

    kind: str
    split: str
    index: int
    seconds: int
    height: int
    width: int
    objects: list[SynthObject]
    temporal_hard: bool
    render_seed: int
    audio_seed: int

    def sounding(self) -> np.ndarray:
        """``[num_objects, T]`` bool: which object sounds in which second."""
        return np.stack([o.loudness > 0 for o in self.objects])

    def source_classes(self) -> list[int]:
        """Classes of the objects that sound at some point, in object order."""
        return [o.cls for o in self.objects if (o.loudness > 0).any()]


def _clip_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """Generator owned by one clip, so output does not depend on generation order."""
    return np.random.default_rng(np.random.SeedSequence([seed, KINDS.index(kind), SPLITS.index(split), index]))


def _switching(rng: np.random.Generator, num_sources: int, seconds: int) -> np.ndarray:
    """``[num_sources, seconds]`` on/off: every second has a source on, every source is on at least once."""
    while True:
        on = rng.random((num_sources, seconds)) < 0.6
        if on.any(axis=0).all() and on.any(axis=1).all():
            return on


def _pulse(rng: np.random.Generator, seconds: int) -> np.ndarray:
    """Per-second loudness of a temporal-hard source: spans at least 0.5 between its quietest and loudest second."""
    while True:
        level = rng.uniform(0.15, 1.0, seconds)
        if np.ptp(level) >= 0.5:
            return level


def sample_clip(kind: Kind, split: str, index: int, config: SynthConfig) -> SynthClip:
    """Draw clip ``index`` of a split: classes, positions, sizes and per-second loudness of every object."""
    if kind not in KINDS:
        raise ValueError(f"unknown clip kind {kind!r}; expected one of {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = _clip_rng(config.seed, kind, split, index)
    seconds = 10 if kind == "v2" else 5
    height = config.image_size
    width = round(config.image_size * config.avss_aspect) if kind in ("v1s", "v1m", "v2") else height

    # Which sources sound when.
    if kind in ("s4", "v1s"):
        on = np.ones((1, seconds), dtype=bool)
    else:
        low = 1 if kind == "v2" else 2
        on = _switching(rng, int(rng.integers(low, config.max_sources + 1)), seconds)
    num_sources = on.shape[0]
    classes = rng.permutation(config.num_classes)[: num_sources + config.num_distractors]
    temporal_hard = bool(rng.random() < config.temporal_hard_fraction)
    twin_of = int(rng.integers(num_sources)) if temporal_hard else -1

    # Objects: sources, distractors, then the silent twin; loudness 0 = silent.
    num_objects = len(classes) + temporal_hard
    grid = math.ceil(math.sqrt(num_objects))
    cell = height / grid
    x0 = (width - height) / 2  # objects stay in the centre square
    cells = rng.permutation(grid * grid)[:num_objects]
    objects = []
    for i, cell_index in enumerate(cells):
        cls = int(classes[i]) if i < len(classes) else int(classes[twin_of])
        if i < num_sources:
            loudness = np.where(on[i], _pulse(rng, seconds) if i == twin_of else rng.uniform(0.6, 1.0, seconds), 0.0)
        else:
            loudness = np.zeros(seconds)
        if i == twin_of:  # sounding member of the pair: size and brightness follow loudness
            level = loudness
        elif i == len(classes):  # silent twin: a constant level drawn from the same range
            level = np.full(seconds, rng.uniform(0.15, 1.0))
        else:
            level = None
        if level is None:
            radius = np.full(seconds, cell * rng.uniform(0.30, 0.40))
            brightness = np.ones(seconds)
        else:
            radius = cell * (0.22 + 0.2 * level)
            brightness = 0.6 + 0.4 * level
        slack = max(0.0, cell / 2 - radius.max())  # jitter the centre without leaving the cell
        row, col = divmod(int(cell_index), grid)
        cx = x0 + (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        objects.append(SynthObject(cls, float(cx), float(cy), radius, brightness, loudness))
    render_seed, audio_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    return SynthClip(kind, split, index, seconds, height, width, objects, temporal_hard, render_seed, audio_seed)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test on coordinates normalised by the radius (object centred at 0, extent [-1, 1])."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":  # apex up, base at v = 0.8
        return (v <= 0.8) & (v >= -1.0) & (au <= (v + 1.0) / 1.8 * 0.95)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "cross":
        return ((au <= 0.35) & (av <= 1.0)) | ((av <= 0.35) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture_dark(texture: str, dx: np.ndarray, dy: np.ndarray, period: int) -> np.ndarray:
    """Pixels drawn in the darker shade (object-relative pixel offsets ``dx``, ``dy``)."""
    if texture == "solid":
        return np.zeros(dx.shape, dtype=bool)
    if texture == "striped":
        return np.floor((dx + dy) / period) % 2 == 1
    if texture == "checked":
        return (np.floor(dx / period) + np.floor(dy / period)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def render_clip(clip: SynthClip, config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Draw a clip.

    Returns:
        frames: uint8 ``[T, H, W, 3]``, one frame per second.
        object_masks: bool ``[num_objects, T, H, W]``, the pixels each object covers in each frame.
    """
    classes = synth_classes(config.num_classes)
    rng = np.random.default_rng(clip.render_seed)
    T, H, W = clip.seconds, clip.height, clip.width
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5  # pixel centres

    # Background: low-saturation grey with a linear gradient, plus per-frame noise.
    # Kept below 131 so that even the dimmest white object (0.6 x 240 = 144) stands out.
    grey = rng.uniform(65.0, 110.0) + rng.uniform(-8.0, 8.0, 3)
    angle = rng.uniform(0.0, 2 * np.pi)
    ramp = ((xx - W / 2) * np.cos(angle) + (yy - H / 2) * np.sin(angle)) / max(H, W)
    background = grey + rng.uniform(10.0, 25.0) * ramp[..., None]
    frames = background[None] + rng.normal(0.0, 3.0, (T, H, W, 3))

    period = max(2, config.image_size // 16)
    object_masks = np.zeros((len(clip.objects), T, H, W), dtype=bool)
    for i, obj in enumerate(clip.objects):
        cls = classes[obj.cls]
        dx, dy = xx - obj.cx, yy - obj.cy
        dark = _texture_dark(cls.texture, dx, dy, period)
        for t in range(T):
            inside = _shape_mask(cls.shape, dx / obj.radius[t], dy / obj.radius[t])
            colour = np.asarray(cls.colour, dtype=np.float64) * obj.brightness[t]
            pixels = np.where(dark[..., None], colour * TEXTURE_SHADE, colour)
            frames[t][inside] = pixels[inside]
            object_masks[i, t] = inside
    frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
    return frames, object_masks


def semantic_labels(clip: SynthClip, object_masks: np.ndarray) -> np.ndarray:
    """uint8 ``[T, H, W]`` label map: AVSS label id (class + 1) where an object sounds in that second, else 0."""
    labels = np.zeros(object_masks.shape[1:], dtype=np.uint8)
    for obj, masks in zip(clip.objects, object_masks, strict=True):
        for t in np.flatnonzero(obj.loudness > 0):
            labels[t][masks[t]] = obj.cls + 1
    return labels


# ----------------------------------------------------------------------------------------------------------------
# Audio


def _class_sound(cls: SynthClass, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A class's sound at RMS ``SOURCE_RMS``: harmonic tone or band-limited noise (float64 ``[num_samples]``)."""
    if cls.sound == "tone":
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # whole-Hz partials repeat every second: draw one, tile it
        second = np.zeros(SAMPLE_RATE)
        for k, amplitude in ((1, 1.0), (2, 0.5), (3, 0.25)):
            if k * cls.f0 < 7500.0:  # keep harmonics inside VGGish's mel range
                second += amplitude * np.sin(2 * np.pi * k * cls.f0 * t + rng.uniform(0, 2 * np.pi))
        wave = np.tile(second, -(-num_samples // SAMPLE_RATE))[:num_samples]
    else:
        lo, hi = hertz_to_mel(np.array(cls.band_hz))
        inner_lo, inner_hi = _mel_to_hertz([lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)])
        spectrum = np.fft.rfft(rng.standard_normal(num_samples))
        freqs = np.fft.rfftfreq(num_samples, 1.0 / SAMPLE_RATE)
        spectrum[(freqs < inner_lo) | (freqs > inner_hi)] = 0.0
        wave = np.fft.irfft(spectrum, num_samples)
    return wave * (SOURCE_RMS / np.sqrt(np.mean(wave**2)))


def _envelope(loudness: np.ndarray, num_samples: int) -> np.ndarray:
    """Sample-wise gain from per-second loudness, with short linear ramps at second boundaries."""
    knots_t, knots_v = [], []
    for k, level in enumerate(loudness):
        knots_t += [k + RAMP_SECONDS / 2, k + 1 - RAMP_SECONDS / 2]
        knots_v += [level, level]
    return np.interp(np.arange(num_samples) / SAMPLE_RATE, knots_t, knots_v)


def clip_audio(clip: SynthClip, config: SynthConfig) -> np.ndarray:
    """The clip's waveform as int16 ``[seconds * 16000]`` (what the WAV holds)."""
    classes = synth_classes(config.num_classes)
    rng = np.random.default_rng(clip.audio_seed)
    n = clip.seconds * SAMPLE_RATE
    mix = NOISE_FLOOR_RMS * rng.standard_normal(n)
    for obj in clip.objects:
        if (obj.loudness > 0).any():
            mix += _envelope(obj.loudness, n) * _class_sound(classes[obj.cls], n, rng)
    peak = np.abs(mix).max()
    if peak > 0.9:
        mix *= 0.9 / peak
    return np.clip(np.round(mix * 32768.0), -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------------------------------------------
# Writers (one per layout)


def _save_png(array: np.ndarray, path: Path, palette: np.ndarray | None = None) -> None:
    """PNG without timestamps or other metadata, so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        image = Image.fromarray(array)
    else:  # index image with a colour table, as PASCAL-VOC style label PNGs are stored
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array, np.uint8).tobytes())
        image.putpalette(palette.reshape(-1).tolist())
    image.save(path, format="PNG", optimize=False, compress_level=6)


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    """Baseline JPEG, quality 95, no chroma subsampling (libjpeg is deterministic for fixed settings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95, subsampling=0, optimize=False)


def _save_wav(samples: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.wavfile.write(path, SAMPLE_RATE, samples)


def _save_log_mel(samples: np.ndarray, path: Path, seconds: int) -> None:
    """Log-mel ``.pkl`` computed from the quantised samples, so it equals what the WAV gives."""
    examples = waveform_to_examples(samples.astype(np.float32) / 32768.0, SAMPLE_RATE)
    if examples.shape[0] != seconds:
        raise RuntimeError(
            f"{path}: {seconds} s of audio gave {examples.shape[0]} log-mel examples, expected {seconds}"
        )
    save_audio_pkl(examples, path)


def _clip_row(clip: SynthClip, name: str, classes: list[SynthClass]) -> dict[str, str | int]:
    """One row of ``synth_clips.csv``."""
    sounding = clip.sounding()
    silent = [classes[o.cls].name for o, s in zip(clip.objects, sounding, strict=True) if not s.any()]
    return {
        "name": name,
        "split": clip.split,
        "kind": clip.kind,
        "temporal_hard": int(clip.temporal_hard),
        "sources": "_".join(classes[c].name for c in clip.source_classes()),
        "silent": "_".join(silent),
        "on": "|".join("".join("1" if x else "0" for x in s) for s in sounding if s.any()),
    }


def _write_csv(path: Path, rows: list[dict[str, str | int]], fields: list[str]) -> None:
    """CSV with sorted rows and ``\\n`` line ends (byte-stable)."""
    rows = sorted(rows, key=lambda r: tuple(str(r[f]) for f in fields))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _binary_mask(clip: SynthClip, object_masks: np.ndarray, t: int) -> np.ndarray:
    """uint8 ``[H, W]`` 0/255 mask of the objects sounding in second ``t``."""
    mask = np.zeros(object_masks.shape[2:], dtype=bool)
    for obj, masks in zip(clip.objects, object_masks, strict=True):
        if obj.loudness[t] > 0:
            mask |= masks[t]
    return mask.astype(np.uint8) * 255


Row = dict[str, str | int]


def _write_s4_clip(root: Path, config: SynthConfig, split: str, index: int) -> tuple[Row, Row]:
    """One S4 clip under ``s4_data/{audio_wav, audio_log_mel, visual_frames, gt_masks}/{split}/{category}/``."""
    classes = synth_classes(config.num_classes)
    clip = sample_clip("s4", split, index, config)
    name = f"s4_{split}_{index:05d}"
    category = classes[clip.source_classes()[0]].name
    data, rel = root / "s4_data", Path(split, category)
    frames, object_masks = render_clip(clip, config)
    samples = clip_audio(clip, config)
    _save_wav(samples, data / "audio_wav" / rel / f"{name}.wav")
    _save_log_mel(samples, data / "audio_log_mel" / rel / f"{name}.pkl", clip.seconds)
    for t in range(clip.seconds):
        _save_png(frames[t], data / "visual_frames" / rel / name / f"{name}_{t + 1}.png")
    for t in range(1 if split == "train" else clip.seconds):  # S4 train: frame 1 only
        _save_png(_binary_mask(clip, object_masks, t), data / "gt_masks" / rel / name / f"{name}_{t + 1}.png")
    return {"name": name, "start": 0, "category": category, "split": split}, _clip_row(clip, name, classes)


def _write_ms3_clip(root: Path, config: SynthConfig, split: str, index: int) -> tuple[Row, Row]:
    """One MS3 clip under ``ms3_data/``; frames ``visual_frames/{name}/{name}.mp4_{k}.png`` have no split folder."""
    classes = synth_classes(config.num_classes)
    clip = sample_clip("ms3", split, index, config)
    name = f"ms3_{split}_{index:05d}"
    data = root / "ms3_data"
    frames, object_masks = render_clip(clip, config)
    samples = clip_audio(clip, config)
    _save_wav(samples, data / "audio_wav" / split / f"{name}.wav")
    _save_log_mel(samples, data / "audio_log_mel" / split / f"{name}.pkl", clip.seconds)
    for t in range(clip.seconds):
        _save_png(frames[t], data / "visual_frames" / name / f"{name}.mp4_{t + 1}.png")
        _save_png(_binary_mask(clip, object_masks, t), data / "gt_masks" / split / name / f"{name}_{t + 1}.png")
    return {"video_id": name, "split": split}, _clip_row(clip, name, classes)


def _write_avss_clip(root: Path, config: SynthConfig, label: str, split: str, index: int) -> tuple[Row, Row]:
    """One AVSS clip: ``{label}/{uid}/{frames/{i}.jpg, labels_rgb/{i}.png, labels_semantic/{i}.png, audio.wav}``."""
    classes = synth_classes(config.num_classes)
    clip = sample_clip(label, split, index, config)  # type: ignore[arg-type]
    vid = f"syn-{label}-{split}-{index:05d}"
    uid = f"{vid}_1" if label == "v1m" else f"{vid}_0_{clip.seconds * 1000}"
    folder = root / label / uid
    frames, object_masks = render_clip(clip, config)
    labels = semantic_labels(clip, object_masks)
    _save_wav(clip_audio(clip, config), folder / "audio.wav")
    for t in range(clip.seconds):
        _save_jpeg(frames[t], folder / "frames" / f"{t}.jpg")
    palette = avss_palette(256)
    for t in range(1 if (label == "v1s" and split == "train") else clip.seconds):  # v1s train: frame 0 only
        _save_png(labels[t], folder / "labels_semantic" / f"{t}.png")
        _save_png(labels[t], folder / "labels_rgb" / f"{t}.png", palette=palette)
    a_obj = "_".join(classes[c].name for c in clip.source_classes())
    meta = {"vid": vid, "uid": uid, "s_min": 0, "s_sec": 0, "a_obj": a_obj, "split": split, "label": label}
    return meta, _clip_row(clip, uid, classes)


def _write_clip(job: tuple[str, Path, SynthConfig, str, str, int]) -> tuple[Row, Row]:
    """Write one clip; returns its metadata-CSV row and its ``synth_clips.csv`` row."""
    task, root, config, label, split, index = job
    if task == "avss":
        return _write_avss_clip(root, config, label, split, index)
    return (_write_s4_clip if task == "s4" else _write_ms3_clip)(root, config, split, index)


def _jobs(task: str, root: Path, config: SynthConfig) -> list[tuple[str, Path, SynthConfig, str, str, int]]:
    kinds = ("v1s", "v1m", "v2") if task == "avss" else (task,)
    return [
        (task, root, config, kind, split, index)
        for kind in kinds
        for split in SPLITS
        for index in range(getattr(config.counts(kind), split))
    ]


def _write_metadata(task: str, root: Path, config: SynthConfig, rows: list[tuple[Row, Row]]) -> None:
    """The task's metadata CSV (+ ``label2idx.json`` for AVSS), ``synth_clips.csv`` and ``synth_config.json``."""
    meta, info = [m for m, _ in rows], [i for _, i in rows]
    if task == "s4":
        _write_csv(root / "s4_meta_data.csv", meta, ["name", "start", "category", "split"])
    elif task == "ms3":
        _write_csv(root / "ms3_meta_data.csv", meta, ["video_id", "split"])
    else:
        _write_csv(root / "metadata.csv", meta, ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"])
        # The AVSS label space always has 71 entries (the loader checks); ids past num_classes are placeholders.
        names = ["background"] + [c.name for c in synth_classes(config.num_classes)]
        names += [f"unused-{j}" for j in range(len(names), NUM_CLASSES["avss"])]
        (root / "label2idx.json").write_text(json.dumps({n: j for j, n in enumerate(names)}, indent=2) + "\n")
    _write_csv(root / "synth_clips.csv", info, ["name", "split", "kind", "temporal_hard", "sources", "silent", "on"])
    (root / "synth_config.json").write_text(json.dumps(config.model_dump(), indent=2, sort_keys=True) + "\n")


def generate(
    task: Task, out_dir: str | Path, config: SynthConfig | None = None, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write the synthetic dataset of one task (or ``"all"``) under ``out_dir``.

    Each task gets its own root, named as in AVSBench: ``Single-source`` (S4), ``Multi-sources`` (MS3), ``AVSS``.
    A clip's bytes depend only on ``config`` and its (task, split, index), so clips may be written in any order
    or split across processes.

    Args:
        task: ``"s4"``, ``"ms3"``, ``"avss"`` or ``"all"``.
        out_dir: parent folder of the task roots (created if missing).
        config: dataset knobs; ``None`` gives the default ``SynthConfig()``.
        overwrite: replace a task root that already exists; otherwise that is an error.

    Returns:
        ``{task: root}`` for every task written, the ``root`` to hand to the loaders.

    Raises:
        ValueError: unknown task.
        FileExistsError: a task root exists and ``overwrite`` is false.
    """
    tasks = list(ROOT_NAMES) if task == "all" else [task]
    if any(t not in ROOT_NAMES for t in tasks):
        raise ValueError(f"unknown task {task!r}; expected one of {[*ROOT_NAMES, 'all']}")
    config = config or SynthConfig()
    roots = {t: Path(out_dir) / ROOT_NAMES[t] for t in tasks}
    for root in roots.values():
        if root.exists() and not overwrite:
            raise FileExistsError(f"{root} already exists; remove it or pass overwrite=True (--overwrite) to replace")
    for t, root in roots.items():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        rows = [_write_clip(job) for job in _jobs(t, root, config)]
        _write_metadata(t, root, config, rows)
    return roots
