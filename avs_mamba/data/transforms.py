"""Frame/mask geometry, the official AVS-Mamba training augmentation, and ImageNet normalisation.

* :class:`ClipGeometry`: a crop box in source pixels resized to ``size x size`` in one PIL call
  (``resize_geometry``: the plain resize of val/test and of un-augmented S4/MS3 training), or, with ``resize_to``,
  a resize of the whole frame followed by an integer crop (``short_side_crop_geometry``: the official AVSS train
  transform, which resizes the short side to ``size`` and then centre-crops, as
  SitongGong/AVS-Mamba@08b38b2:dataloader/v2_dataset.py ``crop_resize_img`` does).
* :class:`TrainAugment`: the S4/MS3/AVSS training augmentation of SitongGong/AVS-Mamba@08b38b2:dataloader/
  {s4,ms3,v2}_dataset.py with the transforms of dataloader/transforms.py, reproduced as the code runs it:
  horizontal flip (p 0.5), SSD photometric distortion (brightness, contrast, saturation, hue, channel swap, with
  the official code's uint8 wrap-around), then, for S4/MS3, with p 0.5 either a short-side resize to one of
  ``scales`` (longest side at most ``max_size``) or a resize to one of ``crop_scales``, a random crop with sides in
  ``[crop_min, crop_max]`` and a resize to one of ``scales``. Masks follow the geometry with PyTorch's legacy
  nearest rule, thresholded at 0.5. Draws are independent per frame (``per_frame``, official) or shared by the
  clip's frames; a frame without a mask gets no resize or crop in the official per-frame form (the official
  ``resize``/``crop`` return the input unchanged when the mask is None). Every draw comes from a
  ``torch.Generator`` seeded by (seed, epoch, clip, frame), so a run is reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipGeometry",
    "Draws",
    "TrainAugment",
    "resize_geometry",
    "short_side_crop_geometry",
    "apply_to_image",
    "apply_to_mask",
    "photometric_distort",
    "nearest_resize",
    "normalize_frames",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ClipGeometry:
    """One geometry for every frame of a clip.

    Attributes:
        box: (left, top, right, bottom) crop in source pixels (floats allowed); with ``resize_to``, in the pixels of
            the resized frame (integers, ``size`` wide and high).
        size: output side length in pixels (square output).
        flip: mirror horizontally after the crop-resize.
        resize_to: (width, height) the whole frame is resized to before the crop (no resampling after it).
    """

    box: tuple[float, float, float, float]
    size: int
    flip: bool = False
    resize_to: tuple[int, int] | None = None

    def with_size(self, size: int) -> ClipGeometry:
        """Same crop and flip, another output size (e.g. masks kept at the evaluation resolution)."""
        if self.resize_to is not None:
            scale = size / self.size
            left, top = round(self.box[0] * scale), round(self.box[1] * scale)
            resize_to = (int(self.resize_to[0] * scale), int(self.resize_to[1] * scale))
            return ClipGeometry((left, top, left + size, top + size), size, self.flip, resize_to)
        return dataclasses.replace(self, size=size)


def resize_geometry(width: int, height: int, size: int) -> ClipGeometry:
    """The whole frame resized to ``size x size`` (aspect not kept, as the official val/test transform)."""
    return ClipGeometry(box=(0.0, 0.0, float(width), float(height)), size=size)


def short_side_crop_geometry(width: int, height: int, size: int) -> ClipGeometry:
    """Official AVSS train transform: resize the short side to ``size`` (long side ``int()``-truncated), then
    centre-crop ``size x size`` at ``round((long - size) / 2)``."""
    if width > height:
        out_w, out_h = int(1.0 * width * size / height), size
    else:
        out_w, out_h = size, int(1.0 * height * size / width)
    x1 = int(round((out_w - size) / 2.0))
    y1 = int(round((out_h - size) / 2.0))
    return ClipGeometry(box=(x1, y1, x1 + size, y1 + size), size=size, resize_to=(out_w, out_h))


def _is_identity(geometry: ClipGeometry, width: int, height: int) -> bool:
    return (
        geometry.resize_to is None
        and geometry.box == (0.0, 0.0, float(width), float(height))
        and width == height == geometry.size
    )


def _apply(image: Image.Image, geometry: ClipGeometry, resample: Image.Resampling) -> Image.Image:
    if geometry.resize_to is not None:
        image = image.resize(geometry.resize_to, resample).crop(tuple(int(v) for v in geometry.box))
    elif not _is_identity(geometry, image.width, image.height):
        image = image.resize((geometry.size, geometry.size), resample, box=geometry.box)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if geometry.flip else image


def apply_to_image(image: Image.Image, geometry: ClipGeometry) -> Image.Image:
    """Crop-resize (bilinear) and optionally flip one RGB frame."""
    return _apply(image, geometry, Image.Resampling.BILINEAR)


def apply_to_mask(mask: np.ndarray, geometry: ClipGeometry, resample: Literal["nearest", "bilinear"] = "nearest"):
    """Crop-resize and optionally flip one ``[H, W]`` uint8 label map.

    ``nearest`` keeps the labels; ``bilinear`` (binary masks only) returns float32 soft targets in [0, 1]: the 0/255
    mask resized bilinearly and divided by 255, as the official S4/MS3 ``mask_transform`` (ToPILImage, Resize,
    ToTensor) of SitongGong/AVS-Mamba@08b38b2:dataloader/s4_dataset.py produces them.
    """
    if resample == "bilinear":
        image = Image.fromarray((mask > 0).astype(np.uint8) * 255)
        return np.asarray(_apply(image, geometry, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    out = np.asarray(_apply(Image.fromarray(mask), geometry, Image.Resampling.NEAREST))
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------------------------------------------
# Official training augmentation


class Draws:
    """Uniform, integer and coin draws from one ``torch.Generator`` (the augmentation's only randomness)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def coin(self, p: float = 0.5) -> bool:
        return self.uniform(0.0, 1.0) < p

    def randint(self, low: int, high: int) -> int:
        """Integer in ``[low, high]``, both ends included (Python's ``random.randint``)."""
        return int(torch.randint(low, high + 1, (), generator=self.generator))


_FLT_EPSILON = np.float32(np.finfo(np.float32).eps)
_CHANNEL_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV's float ``COLOR_BGR2HSV`` (H in [0, 360), S = diff / |V|, V = max), on any float range."""
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    vmin = np.minimum(np.minimum(r, g), b)
    diff = v - vmin
    s = diff / (np.abs(v) + _FLT_EPSILON)
    k = np.float32(60.0) / (diff + _FLT_EPSILON)
    h = np.where(
        v == r, (g - b) * k, np.where(v == g, (b - r) * k + np.float32(120.0), (r - g) * k + np.float32(240.0))
    )
    h = np.where(h < 0, h + np.float32(360.0), h)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def _hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's float ``COLOR_HSV2BGR`` (hue taken modulo 360, S and V used as they are)."""
    h, s, v = hsv[..., 0] * np.float32(6.0 / 360.0), hsv[..., 1], hsv[..., 2]
    h = np.mod(h, np.float32(6.0))
    sector = np.floor(h).astype(np.int64)
    frac = h - sector
    bad = (sector < 0) | (sector >= 6)
    sector, frac = np.where(bad, 0, sector), np.where(bad, np.float32(0.0), frac)
    tab = np.stack([v, v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))], axis=-1)
    # (b, g, r) columns of tab per sector, as OpenCV's sector_data
    index = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])[sector]
    out = np.take_along_axis(tab, index, axis=-1)
    return np.where((s == 0)[..., None], v[..., None], out).astype(np.float32)


def photometric_distort(image: Image.Image, draws: Draws, overflow: Literal["wrap", "clip"] = "wrap") -> Image.Image:
    """SSD photometric distortion as SitongGong/AVS-Mamba@08b38b2:dataloader/transforms.py ``PhotometricDistort``.

    On the float RGB array, each step with p 0.5: brightness +U(-32, 32); then in random order either contrast
    x U(0.5, 1.5) before or after the HSV steps (saturation x U(0.5, 1.5), hue + U(-18, 18) degrees); then a random
    channel permutation. The official code labels the RGB array "BGR", so its HSV conversion reads the channels
    reversed; this one does the same. No clipping happens between steps, and the final ``astype('uint8')`` wraps
    out-of-range values modulo 256 (x86-64 NumPy); ``overflow="clip"`` clips to [0, 255] instead.
    """
    img = np.asarray(image, dtype=np.float32).copy()

    def contrast(x: np.ndarray) -> np.ndarray:
        return x * np.float32(draws.uniform(0.5, 1.5)) if draws.coin() else x

    def hsv_steps(x: np.ndarray) -> np.ndarray:
        hsv = _bgr_to_hsv(x)
        if draws.coin():
            hsv[..., 1] *= np.float32(draws.uniform(0.5, 1.5))
        if draws.coin():
            hue = hsv[..., 0] + np.float32(draws.uniform(-18.0, 18.0))
            hue = np.where(hue > 360.0, hue - np.float32(360.0), hue)
            hsv[..., 0] = np.where(hue < 0.0, hue + np.float32(360.0), hue)
        return _hsv_to_bgr(hsv)

    if draws.coin():
        img = img + np.float32(draws.uniform(-32.0, 32.0))
    img = hsv_steps(contrast(img)) if draws.coin() else contrast(hsv_steps(img))
    if draws.coin():
        img = img[..., list(_CHANNEL_PERMS[draws.randint(0, len(_CHANNEL_PERMS) - 1)])]
    if overflow == "clip":
        out = np.clip(img, 0, 255).astype(np.uint8)
    else:
        out = (np.trunc(np.nan_to_num(img)).astype(np.int64) & 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(out))


def nearest_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """PyTorch's legacy ``interpolate(mode="nearest")`` of a label map: source index ``floor(dst * in / out)``."""
    h, w = mask.shape
    rows = np.minimum(np.floor(np.arange(height, dtype=np.float32) * np.float32(h / height)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(width, dtype=np.float32) * np.float32(w / width)).astype(np.int64), w - 1)
    return np.ascontiguousarray(mask[rows[:, None], cols[None, :]])


def _short_side_size(width: int, height: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) of the official ``resize`` to short side ``size`` with the long side at most ``max_size``."""
    if max_size is not None:
        lo, hi = float(min(width, height)), float(max(width, height))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclasses.dataclass(frozen=True)
class TrainAugment:
    """The official training augmentation (see the module docstring); pixel sizes refer to ``reference_size``-px
    source frames (AVSBench S4/MS3 frames are 224 px) and scale with the actual frame's short side.

    Attributes:
        flip_p: probability of the horizontal flip.
        photometric: apply :func:`photometric_distort`; ``overflow`` is its out-of-range rule.
        geometry: apply the random resize / crop branch (S4/MS3 official; AVSS has none).
        scales, max_size: short sides of the final random resize and the cap on the long side.
        crop_p: probability of the resize-crop-resize branch (the official ``RandomSelect`` picks it with p 0.5).
        crop_scales, crop_min, crop_max: short sides of its first resize and the crop side range (S4 224, MS3 384).
        per_frame: independent draws per frame (official); False shares one draw across the clip's frames.
    """

    flip_p: float = 0.5
    photometric: bool = True
    overflow: Literal["wrap", "clip"] = "wrap"
    geometry: bool = True
    scales: tuple[int, ...] = (288, 320, 352, 392, 416, 448, 480, 512)
    max_size: int = 640
    crop_p: float = 0.5
    crop_scales: tuple[int, ...] = (400, 500, 600)
    crop_min: int = 224
    crop_max: int = 600
    per_frame: bool = True
    reference_size: int = 224

    def __post_init__(self) -> None:
        for name in ("flip_p", "crop_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.scales or not self.crop_scales or min(*self.scales, *self.crop_scales) < 1:
            raise ValueError(f"scales and crop_scales must be non-empty lists of positive sizes, got {self}")
        if not 0 < self.crop_min <= self.crop_max:
            raise ValueError(f"crop sides must satisfy 0 < crop_min <= crop_max, got {self.crop_min}, {self.crop_max}")

    def __call__(
        self, image: Image.Image, mask: np.ndarray | None, draws: Draws
    ) -> tuple[Image.Image, np.ndarray | None]:
        """Augment one frame and its ``[H, W]`` uint8 mask (or None); the outputs may have any size."""
        if draws.coin(self.flip_p):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = None if mask is None else np.ascontiguousarray(mask[:, ::-1])
        if self.photometric:
            image = photometric_distort(image, draws, self.overflow)
        if not self.geometry or (mask is None and self.per_frame):
            return image, mask
        k = min(image.size) / self.reference_size  # 1 on AVSBench's 224-px frames

        def px(value: int) -> int:
            return max(1, int(round(value * k)))

        def resize(image: Image.Image, mask: np.ndarray | None, choices: tuple[int, ...], max_size: int | None):
            size = px(choices[draws.randint(0, len(choices) - 1)])
            h, w = _short_side_size(image.width, image.height, size, max_size)
            image = image.resize((w, h), Image.Resampling.BILINEAR)
            return image, None if mask is None else (nearest_resize(mask, h, w) > 0).astype(np.uint8)

        if draws.coin(1.0 - self.crop_p):
            return resize(image, mask, self.scales, px(self.max_size))
        image, mask = resize(image, mask, self.crop_scales, None)
        lo, hi = px(self.crop_min), px(self.crop_max)
        cw = draws.randint(lo, max(lo, min(image.width, hi)))
        ch = draws.randint(lo, max(lo, min(image.height, hi)))
        cw, ch = min(cw, image.width), min(ch, image.height)
        top, left = draws.randint(0, image.height - ch), draws.randint(0, image.width - cw)
        image = image.crop((left, top, left + cw, top + ch))
        mask = None if mask is None else np.ascontiguousarray(mask[top : top + ch, left : left + cw])
        return resize(image, mask, self.scales, px(self.max_size))


def normalize_frames(images: list[Image.Image]) -> torch.Tensor:
    """RGB frames (same size) -> float32 ``[T, 3, H, W]``, scaled to [0, 1] then ImageNet mean/std normalised."""
    stacked = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # [T, H, W, 3]
    x = torch.from_numpy(stacked).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std
