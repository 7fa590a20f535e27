"""Hard masks from logits and their PNG files, shared by ``avs-bench evaluate --save-masks`` and ``avs-bench predict``.

One binarisation for both commands, the one the metrics use: ``sigmoid(logit) > 0.5`` for binary models (S4/MS3, the
official M_J rule) and the argmax class for semantic ones (AVSS). Binary masks are written as 8-bit greyscale PNGs
with 0 / 255 (AVSBench's ground-truth convention), semantic masks as palette PNGs in the AVSBench colours, so a
predicted file reads back like a ground-truth file of the same task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from avs_mamba.data.avsbench import avss_palette

__all__ = ["hard_masks", "save_mask", "mask_file_name"]


def hard_masks(logits: Tensor) -> Tensor:
    """``[B, T, K, H, W]`` logits -> uint8 ``[B, T, H, W]``: K = 1 gives {0, 1} (sigmoid > 0.5), K > 1 class ids."""
    if logits.ndim != 5:
        raise ValueError(f"logits must be [B, T, K, H, W], got shape {tuple(logits.shape)}")
    logits = logits.detach().to(torch.float32)
    if logits.shape[2] == 1:
        return (torch.sigmoid(logits[:, :, 0]) > 0.5).to(torch.uint8)
    return logits.argmax(2).to(torch.uint8)


def mask_file_name(frame: int) -> str:
    """File name of the mask of 0-based frame ``frame``: 1-based and zero-padded (``0001.png``), sorting in order."""
    return f"{frame + 1:04d}.png"


def save_mask(path: str | Path, mask: np.ndarray | Tensor, num_classes: int) -> None:
    """Write one ``[H, W]`` hard mask: binary as 0/255 greyscale, semantic as a palette PNG (parents created)."""
    array = np.asarray(torch.as_tensor(mask).cpu(), dtype=np.uint8)
    if array.ndim != 2:
        raise ValueError(f"a mask must be [H, W], got shape {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if num_classes == 1:
        Image.fromarray(array * np.uint8(255)).save(path)  # uint8 [H, W]: mode L
        return
    image = Image.fromarray(array)
    image.putpalette(  # an L image with a palette becomes a P image of the same indices
        avss_palette(max(num_classes, 2)).reshape(-1).tolist()
    )
    image.save(path)
