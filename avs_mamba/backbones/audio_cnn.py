"""A small trainable log-mel CNN: the audio encoder of the random-init (smoke) profile.

VGGish has 72 M parameters and is only useful pretrained; without its checkpoint a compact CNN that trains with
the rest of the model learns the synthetic sounds faster. It takes the same input as VGGish and has the same
output width by default, so the two are interchangeable inside a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["LogMelCNN"]


class LogMelCNN(nn.Module):
    """Conv3x3 -> GroupNorm -> ReLU -> MaxPool2 per width, then average over time and a linear projection of the
    flattened (channel x frequency) map.

    The frequency axis is kept to the end, as VGGish keeps it (it flattens its last map into fully connected
    layers): a sound's identity is largely *where* its energy sits on the mel axis, and convolutions are blind to
    position, so pooling over frequency would leave the encoder to guess it from border effects.

    Args:
        out_dim: embedding width.
        widths: channels of the conv blocks; each block halves both spatial axes.
        num_bands: mel bands of the input (VGGish: 64).
    """

    def __init__(self, out_dim: int = 128, widths: Sequence[int] = (16, 32, 64, 128), num_bands: int = 64) -> None:
        super().__init__()
        if out_dim < 1 or not widths or min(widths) < 1 or num_bands < 2 ** len(widths):
            raise ValueError(
                f"LogMelCNN needs out_dim >= 1, positive widths and num_bands >= 2**len(widths), got {out_dim},"
                f" {list(widths)}, {num_bands}"
            )
        self.out_dim = out_dim
        blocks: list[nn.Module] = []
        in_ch = 1
        for w in widths:
            # GroupNorm rather than BatchNorm: smoke batches are a handful of frames, and eval must match train.
            blocks += [nn.Conv2d(in_ch, w, 3, padding=1), nn.GroupNorm(math.gcd(8, w), w), nn.ReLU(inplace=True)]
            blocks.append(nn.MaxPool2d(2))
            in_ch = w
        self.features = nn.Sequential(*blocks)
        self.num_bands = num_bands
        self.proj = nn.Linear(in_ch * (num_bands >> len(widths)), out_dim)
        self.min_frames = 2 ** len(widths)

    def forward(self, x: Tensor) -> Tensor:
        """x: log-mel examples [N, 1, F, M] (VGGish: F = 96 frames, M = 64 bands) -> embeddings [N, out_dim]."""
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] < self.min_frames or x.shape[3] != self.num_bands:
            raise ValueError(
                f"LogMelCNN expects log-mel examples [N, 1, F, {self.num_bands}] with F >= {self.min_frames}, "
                f"got shape {list(x.shape)}"
            )
        x = self.features(x).mean(dim=2)  # average over time: (N, widths[-1], num_bands / 2**len(widths))
        return self.proj(x.flatten(1))
