"""AVS-Mamba's Multi-scale Temporal Encoder (MTE) and its blocks (Gong et al., IEEE TMM 2025; official
SitongGong/AVS-Mamba@91c4fc3a:model/cross_scale_temporal_v2.py, ``Layer``, and model/mamba_3d_.py).

One MTE layer runs, on the res3/res4/res5 maps of a clip:

1. a **cross-scale VSS block**: per frame, one 4-direction 2-D scan over the concatenated tokens of the three scales;
2. a **MixFFN** (SegFormer) on each scale;
3. a **cross-scale Temporal Mamba Block (TMB)**: one K-direction 3-D scan over the T * sum(H_s W_s) tokens of the clip.

Within a layer each block (with its LayerNorm) is shared by the three scales, as in the official code. Every block is
pre-norm with a DropPath residual, drawn independently for each scale as in the official code: per frame in the VSS
and MixFFN, per clip in the TMB. All scans are built on ``MultiScanMixer`` (``modules/multi_scan.py``). Maps are
channel-last ``(B, T, H, W, C)`` throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from avs_mamba.modules.layers import DropPath
from avs_mamba.modules.multi_scan import MultiScanMixer
from avs_mamba.ops.scan_orders import directions_2d, directions_3d

__all__ = ["CrossScaleVSS", "MixFFN", "MTELayer", "MultiScaleTemporalEncoder", "TemporalMambaBlock", "conv_kernel"]

LN_EPS = 1e-6  # the wrappers' LayerNorms (the Mamba blocks' inner out_norm keeps torch's 1e-5)


def conv_kernel(kernel: Sequence[int]) -> int | tuple[int, int, int]:
    """Map a (kt, kh, kw) depthwise kernel to ``MultiScanMixer``'s ``d_conv``: (1, k, k) is the per-frame k x k conv
    (the official "3-D" 1x3x3 conv, which does not mix frames), anything else a true Conv3d."""
    kt, kh, kw = kernel
    return kh if kt == 1 and kh == kw else (kt, kh, kw)


def _as_list(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


class CrossScaleVSS(nn.Module):
    """Pre-norm VSS block scanning each frame's scales as one sequence (4 directions: row/column-major +/- reverse).

    The reversed directions reverse the whole concatenation, so they run res5 -> res4 -> res3.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        dt_rank: int = 16,
        expand: float = 2,
        d_conv: int = 3,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mixer = MultiScanMixer(
            d_model, d_state, d_conv, expand, dt_rank, directions=directions_2d(), backend=backend
        )
        self.drop_path = DropPath(drop_path, per="frame")  # official: (B*T, ...) tensors

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """xs: scales ``(B, T, H_s, W_s, C)`` -> same shapes."""
        B, T = xs[0].shape[:2]
        # Fold time into the batch: the VSS scan never crosses frames.
        frames = [self.norm(x).reshape(B * T, 1, *x.shape[2:]) for x in xs]  # (B*T, 1, H_s, W_s, C)
        ys = self.mixer(frames)
        return [x + self.drop_path(y.reshape(x.shape)) for x, y in zip(xs, ys, strict=True)]


class MixFFN(nn.Module):
    """Pre-norm SegFormer MixFFN: Linear C->rC, depthwise 3x3 conv, GELU, Linear rC->C, DropPath residual."""

    def __init__(self, d_model: int, ffn_ratio: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = d_model * ffn_ratio
        self.norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.fc1 = nn.Linear(d_model, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.drop_path = DropPath(drop_path, per="frame")  # official: (B*T, ...) tensors
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # SegFormer's init (kept by the official MixFFN): trunc-normal(0.02) Linear, He-normal (fan-out) conv.
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        fan_out = self.dwconv.kernel_size[0] * self.dwconv.kernel_size[1] * self.dwconv.out_channels
        fan_out //= self.dwconv.groups
        nn.init.normal_(self.dwconv.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, T, H, W, C)`` -> same shape."""
        B, T, H, W, C = x.shape
        h = self.fc1(self.norm(x)).reshape(B * T, H, W, -1).permute(0, 3, 1, 2)  # (B*T, rC, H, W)
        h = F.gelu(self.dwconv(h)).permute(0, 2, 3, 1).reshape(B, T, H, W, -1)
        return x + self.drop_path(self.fc2(h))


class TemporalMambaBlock(nn.Module):
    """Pre-norm Temporal Mamba Block: depthwise (1x3x3 by default) conv, K-direction 3-D scan over the clip.

    Given a list of scales it scans them as one sequence per direction (MTE's cross-scale TMB); given one map it is
    CIP's single-scale TMB. Directions: ``directions_3d(k)``, the prefix thw, twh, hwt, wht, htw, wth of the
    official scan-order ablation, each forward and reversed.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        dt_rank: int = 16,
        expand: float = 2,
        k: int = 8,
        kernel: Sequence[int] = (1, 3, 3),
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mixer = MultiScanMixer(
            d_model, d_state, conv_kernel(kernel), expand, dt_rank, directions=directions_3d(k), backend=backend
        )
        self.drop_path = DropPath(drop_path, per="clip")  # official: (B, T, ...) tensors

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
        """x: ``(B, T, H, W, C)`` or a list of scales ``(B, T, H_s, W_s, C)`` -> the same."""
        xs = _as_list(x)
        ys = self.mixer([self.norm(s) for s in xs])
        out = [s + self.drop_path(y) for s, y in zip(xs, ys, strict=True)]
        return out[0] if isinstance(x, Tensor) else out


class MTELayer(nn.Module):
    """One MTE layer: [cross-scale VSS -> MixFFN] (``spatial``) then cross-scale TMB (``tmb``)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        dt_rank: int = 16,
        expand: float = 2,
        ffn_ratio: int = 4,
        k: int = 8,
        d_conv: int = 3,
        tmb_kernel: Sequence[int] = (1, 3, 3),
        spatial: bool = True,
        tmb: bool = True,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not (spatial or tmb):
            raise ValueError("an MTE layer needs the spatial branch (VSS + MixFFN), the TMB, or both; both are off")
        self.vss = CrossScaleVSS(d_model, d_state, dt_rank, expand, d_conv, drop_path, backend) if spatial else None
        self.ffn = MixFFN(d_model, ffn_ratio, drop_path) if spatial else None
        self.tmb = (
            TemporalMambaBlock(d_model, d_state, dt_rank, expand, k, tmb_kernel, drop_path, backend) if tmb else None
        )

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """xs: scales ``(B, T, H_s, W_s, C)`` -> same shapes."""
        xs = list(xs)
        if self.vss is not None:
            xs = [self.ffn(x) for x in self.vss(xs)]
        if self.tmb is not None:
            xs = self.tmb(xs)
        return xs


class MultiScaleTemporalEncoder(nn.Module):
    """A stack of ``MTELayer``s over the res3/res4/res5 maps (2 layers in the paper)."""

    def __init__(self, num_layers: int = 2, **layer_kwargs) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the MTE needs num_layers >= 1, got {num_layers}; switch it off with mte.enabled=false")
        self.layers = nn.ModuleList(MTELayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """xs: scales ``(B, T, H_s, W_s, C)`` (res3, res4, res5) -> same shapes."""
        xs = list(xs)
        for layer in self.layers:
            xs = layer(xs)
        return xs
