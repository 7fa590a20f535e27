"""Qualitative mask overlays: one PNG per clip, rows frame | ground truth | prediction, one column per frame.

Binary tasks (S4/MS3) draw both masks on a dimmed grey copy of the frame, so no mask colour can be mistaken for an
object's own colour: the ground truth in solid white, the prediction scored against it pixel by pixel, true
positives bluish green, false positives vermillion, false negatives sky blue (Okabe-Ito colours, readable with
colour-vision deficiencies). AVSS colours each class with the AVSBench palette on the frame. Masks at another
resolution than the frames are resized to the frames (nearest).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from avs_mamba.checkpointing import atomic_write_bytes
from avs_mamba.data.avsbench import avss_palette
from avs_mamba.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ALPHA", "GT_COLOUR", "TP_COLOUR", "FP_COLOUR", "FN_COLOUR", "overlay_grid", "save_overlay"]

ALPHA = 0.5  # opacity of the AVSS class tint
GT_COLOUR = (255, 255, 255)
TP_COLOUR = (0, 158, 115)  # Okabe-Ito bluish green
FP_COLOUR = (213, 94, 0)  # vermillion
FN_COLOUR = (86, 180, 233)  # sky blue
_GREY_LEVEL = 0.55  # the frame's luminance is scaled by this, so white and the three colours stand out


def _to_rgb(frames: Tensor) -> np.ndarray:
    """ImageNet-normalised ``[T, 3, H, W]`` -> uint8 ``[T, H, W, 3]``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (frames.float().cpu() * std + mean).clamp(0, 1) * 255
    return rgb.permute(0, 2, 3, 1).round().to(torch.uint8).numpy()


def _resize_labels(labels: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Integer ``[T, h, w]`` -> ``[T, H, W]`` by nearest neighbour."""
    if tuple(labels.shape[-2:]) != size:
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
    return labels.round().long().cpu().numpy()


def _tint(rgb: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Blend ``colours[label]`` over ``rgb`` where ``label`` > 0 (0 = background stays untouched)."""
    out = rgb.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - ALPHA) * out[fg] + ALPHA * colours[labels[fg]]
    return out.round().astype(np.uint8)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Dimmed luminance (ITU-R BT.601 weights) of ``[..., 3]`` uint8 images, as float32 RGB."""
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat((_GREY_LEVEL * luma)[..., None], 3, axis=-1)


def _paint(base: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    """Solid colours over ``base`` where each boolean mask is set (later masks win)."""
    out = base.copy()
    for mask, colour in masks:
        out[mask] = np.asarray(colour, dtype=np.float32)
    return out.round().astype(np.uint8)


def overlay_grid(frames: Tensor, target: Tensor, logits: Tensor) -> np.ndarray:
    """The overlay image of one clip as uint8 ``[3H, T*W, 3]``.

    Args:
        frames: ``[T, 3, H, W]`` normalised frames.
        target: ``[T, h, w]`` ground truth: 0/1 masks, or class ids (255 = ignore, shown as background). Binary
            rows: ground truth in white, prediction as TP / FP / FN colours, both on the dimmed grey frame.
        logits: ``[T, K, h', w']`` model output; K = 1 is read with a sigmoid (> 0.5), K > 1 with an argmax.
    """
    T, _, H, W = frames.shape
    rgb = _to_rgb(frames)
    K = logits.shape[1]
    if K == 1:
        pred = _resize_labels((logits[:, 0].float() > 0).long(), (H, W)) > 0  # sigmoid(x) > 0.5  <=>  x > 0
        gt = _resize_labels(target.long(), (H, W)) > 0
        grey = _grey(rgb)
        gt_img = _paint(grey, [(gt, GT_COLOUR)])
        pred_img = _paint(grey, [(pred & gt, TP_COLOUR), (pred & ~gt, FP_COLOUR), (~pred & gt, FN_COLOUR)])
    else:
        pred = logits.float().argmax(1)
        colours = avss_palette(K).astype(np.float32)
        gt = torch.where(target.long() >= K, torch.zeros_like(target.long()), target.long())
        gt_img = _tint(rgb, _resize_labels(gt, (H, W)), colours)
        pred_img = _tint(rgb, _resize_labels(pred, (H, W)), colours)
    rows = [np.concatenate(list(img), axis=1) for img in (rgb, gt_img, pred_img)]  # each [H, T*W, 3]
    return np.concatenate(rows, axis=0)


def save_overlay(path: str | Path, frames: Tensor, target: Tensor, logits: Tensor) -> Path:
    """Write :func:`overlay_grid` of one clip as a PNG (atomically); returns the path."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_grid(frames, target, logits)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
