"""Small layers shared by the blocks: stochastic depth (DropPath) and the depthwise conv of the scan blocks.

Written here because timm is not a dependency (its reachable wheels pull a CUDA torch). Semantics follow timm's
``drop_path``: per-sample residual-branch dropping (Huang et al., "Deep Networks with Stochastic Depth", 2016), with
the kept samples scaled by 1/keep_prob so the expectation is unchanged. For truncated-normal init use
``torch.nn.init.trunc_normal_``, which torch ships.

What a "sample" is depends on the layout the official code applies timm's DropPath to: AVS-Mamba's VSS, MixFFN, V2A
and A2V blocks run on ``(B*T, ...)`` tensors there, so one draw per frame; its TMBs on ``(B, T, ...)``, one draw per
clip (SitongGong/AVS-Mamba@91c4fc3a: ``model/cross_scale_temporal_v2.py``, ``model/cross_modal_mamba.py``,
``model/mamba_3d_.py``). :class:`DropPath` takes ``per="frame"`` or ``per="clip"`` for the project's ``(B, T, ...)``
tensors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DWConvTHW", "DropPath", "drop_path"]

DROP_PATH_UNITS = ("sample", "clip", "frame")
_SAMPLE_DIMS = {"sample": 1, "clip": 1, "frame": 2}  # leading dims that index one sample


def drop_path(
    x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True, sample_dims: int = 1
) -> Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob`` during training.

    Args:
        x: the residual branch output; its first ``sample_dims`` dims index the samples.
        drop_prob: probability in [0, 1] that a sample's branch is dropped.
        training: identity when False.
        scale_by_keep: divide kept samples by 1 - drop_prob.
        sample_dims: 1: one draw per entry of dim 0 (timm); 2: one per entry of dims (0, 1), e.g. per frame of a
            ``(B, T, ...)`` tensor.

    Returns:
        Tensor shaped like x.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
    if not 1 <= sample_dims <= x.dim():
        raise ValueError(f"drop_path sample_dims must be in 1..{x.dim()} for a {x.dim()}-D input, got {sample_dims}")
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over every other dim.
    mask = x.new_empty(x.shape[:sample_dims] + (1,) * (x.dim() - sample_dims)).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: ``x + DropPath(p)(branch(x))``.

    Args:
        drop_prob: probability that a sample's branch is dropped.
        scale_by_keep: divide kept samples by 1 - drop_prob.
        per: ``"sample"`` (dim 0, timm), ``"clip"`` (dim 0 of a ``(B, T, ...)`` tensor: the same draw for every frame
            of a clip) or ``"frame"`` (one draw per (b, t) of a ``(B, T, ...)`` tensor).
    """

    def __init__(
        self, drop_prob: float = 0.0, scale_by_keep: bool = True, per: Literal["sample", "clip", "frame"] = "sample"
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"DropPath drop_prob must be in [0, 1], got {drop_prob}")
        if per not in DROP_PATH_UNITS:
            raise ValueError(f"DropPath per must be one of {DROP_PATH_UNITS}, got {per!r}")
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep
        self.per = per

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, ...) or, for ``per="frame"``, (B, T, ...) -> same shape; identity in eval mode."""
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep, _SAMPLE_DIMS[self.per])

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}, per={self.per}"


class DWConvTHW(nn.Module):
    """Depthwise 'same' convolution over (B, C, T, H, W) feature maps, as the scan blocks use before the scan.

    An int kernel k is a k x k Conv2d applied frame by frame: VSS/V2A/A2V's 3 x 3 conv, and also the official TMB's
    "3-D" Conv3d with kernel (1, 3, 3), which does not mix frames. A 3-tuple (kt, kh, kw) is a true Conv3d (kt > 1
    mixes neighbouring frames). Parameters are named and shaped like nn.Conv2d / nn.Conv3d (``weight``, ``bias``) and
    initialised the same way.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int | tuple[int, int, int] = 3,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        sizes = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(sizes) not in (1, 3) or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(
                "kernel_size must be an odd int k (per-frame k x k) or three odd ints (kt, kh, kw), "
                f"got {kernel_size!r}"
            )
        self.dim = dim
        self.kernel_size: tuple[int, ...] = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
        self.weight = nn.Parameter(torch.empty(dim, 1, *self.kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(dim, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv*d's default: kaiming-uniform(a=sqrt(5)) weight, bias U(+-1/sqrt(fan_in)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(math.prod(self.kernel_size))
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W) -> (B, C, T, H, W)."""
        if x.dim() != 5 or x.shape[1] != self.dim:
            raise ValueError(f"DWConvTHW expects (B, C={self.dim}, T, H, W), got shape {tuple(x.shape)}")
        padding = tuple(k // 2 for k in self.kernel_size)
        if len(self.kernel_size) == 3:
            return F.conv3d(x, self.weight, self.bias, padding=padding, groups=self.dim)
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # every frame on its own
        y = F.conv2d(frames, self.weight, self.bias, padding=padding, groups=self.dim)
        return y.reshape(B, T, C, H, W).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"{self.dim}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
