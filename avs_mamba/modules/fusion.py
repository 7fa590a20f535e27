"""AVS-Mamba's cross-modal scan blocks (Gong et al., IEEE TMM 2025; official
SitongGong/AVS-Mamba@91c4fc3a:model/cross_modal_mamba.py, ``AudioVisionFusion``).

* **V2A** (vision -> audio, in the MAD): the audio tokens are APPENDED to every direction's visual sequence, so each
  token's scan output has seen the visual tokens; only the token outputs are read. ``level="frame"`` scans each frame
  with its own audio token (sequence length H*W + 1); ``level="temporal"`` scans the whole clip followed by the T
  audio tokens (length T*H*W + T). The vision branch has no gate; the gate is the audio branch's z.
* **A2V** (audio -> vision, in the CIP): the clip's T audio tokens are PREPENDED, so every visual token is conditioned
  on the audio through the state; the visual outputs are kept and gated by the visual z.

Both use K = 4 directions (row/column-major, frame after frame, and their reversals) and a width-4 causal conv over
the audio tokens, computed once forward in time and reversed with the token block for the reversed directions.
Frame-level V2A convolves length-1 token sequences, so only the conv's last tap is used (its other taps get a zero
gradient), exactly as in the official code.
Inputs are channel-last: visual ``(B, T, H, W, C)``, audio ``(B, T, C)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avs_mamba.modules.layers import DropPath, DWConvTHW
from avs_mamba.modules.multi_scan import MultiDirectionScan, MultiScanMixer
from avs_mamba.ops.causal_conv1d import causal_conv1d
from avs_mamba.ops.scan_orders import directions_2d

__all__ = ["AudioToVision", "VisionToAudio"]

LN_EPS = 1e-6


class _CausalConv(nn.Module):
    """Depthwise causal conv + SiLU over ``(N, E, L)`` token sequences (``causal_conv1d_fn`` semantics)."""

    def __init__(self, dim: int, width: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, width))
        self.bias = nn.Parameter(torch.empty(dim))
        # nn.Conv1d's default init (the official block holds an nn.Conv1d): U(+-1/sqrt(fan_in)), fan_in = width.
        bound = 1.0 / math.sqrt(width)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(N, E, L)`` -> ``(N, E, L)``."""
        return causal_conv1d(x, self.weight, self.bias, activation="silu")


class VisionToAudio(nn.Module):
    """Pre-norm V2A block updating the per-frame audio query from one level's visual map.

    Args:
        d_model: C.
        level: ``"frame"`` (each frame with its own token) or ``"temporal"`` (the clip with its T tokens).
        d_state, dt_rank, expand: SSM sizes (E = expand * C).
        d_conv: depthwise kernel of the visual branch (3).
        conv1d_width: causal conv width over the audio tokens (4).
        drop_path: stochastic-depth rate of the residual.
        backend: selective-scan backend.
    """

    def __init__(
        self,
        d_model: int,
        level: Literal["frame", "temporal"],
        d_state: int = 16,
        dt_rank: int = 16,
        expand: float = 2,
        d_conv: int = 3,
        conv1d_width: int = 4,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if level not in ("frame", "temporal"):
            raise ValueError(f"V2A level must be 'frame' or 'temporal', got {level!r}")
        self.level = level
        E = int(expand * d_model)
        self.norm_v = nn.LayerNorm(d_model, eps=LN_EPS)
        self.norm_a = nn.LayerNorm(d_model, eps=LN_EPS)
        self.in_proj_vis = nn.Linear(d_model, E, bias=False)
        self.conv_vis = DWConvTHW(E, d_conv)
        self.in_proj_audio = nn.Linear(d_model, 2 * E, bias=False)
        self.conv_audio = _CausalConv(E, conv1d_width)
        self.scan = MultiDirectionScan(
            E, d_state, dt_rank, directions=directions_2d(), tokens_at="end", backend=backend
        )
        self.out_norm = nn.LayerNorm(E)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self.drop_path = DropPath(drop_path, per="frame")  # official: (B*T, ...) tensors

    def forward(self, vis: Tensor, query: Tensor) -> Tensor:
        """Fuse vision into the audio query.

        Args:
            vis: ``(B, T, H, W, C)`` visual map of one level.
            query: ``(B, T, C)`` audio query, one token per frame.

        Returns:
            ``(B, T, C)`` updated query.
        """
        B, T, H, W, _ = vis.shape
        v = self.in_proj_vis(self.norm_v(vis)).permute(0, 4, 1, 2, 3)  # (B, E, T, H, W)
        v = F.silu(self.conv_vis(v))
        a, z = self.in_proj_audio(self.norm_a(query)).chunk(2, dim=-1)  # (B, T, E) each
        E = a.shape[-1]
        if self.level == "frame":
            # Each frame is its own sequence; the causal conv over a length-1 sequence sees only that token.
            v = v.transpose(1, 2).reshape(B * T, E, 1, H, W)
            tokens = self.conv_audio(a.reshape(B * T, 1, E).transpose(1, 2))  # (B*T, E, 1)
            out = self.scan(v, tokens=tokens, need_visual=False).tokens.reshape(B, T, E)
        else:
            tokens = self.conv_audio(a.transpose(1, 2))  # (B, E, T), causal over time
            out = self.scan(v, tokens=tokens, need_visual=False).tokens.transpose(1, 2)  # (B, T, E)
        return query + self.drop_path(self.out_proj(self.out_norm(out) * F.silu(z)))


class AudioToVision(nn.Module):
    """Pre-norm A2V block injecting the clip's audio into one visual map (prepended audio tokens, K = 4)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        dt_rank: int = 16,
        expand: float = 2,
        d_conv: int = 3,
        conv1d_width: int = 4,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(d_model, eps=LN_EPS)
        self.norm_a = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mixer = MultiScanMixer(
            d_model, d_state, d_conv, expand, dt_rank, directions=directions_2d(), tokens_at="start", backend=backend
        )
        E = self.mixer.d_inner
        self.in_proj_audio = nn.Linear(d_model, E, bias=False)  # no gate on the audio side
        self.conv_audio = _CausalConv(E, conv1d_width)
        self.drop_path = DropPath(drop_path, per="frame")  # official: (B*T, ...) tensors

    def forward(self, vis: Tensor, audio: Tensor) -> Tensor:
        """Fuse audio into vision.

        Args:
            vis: ``(B, T, H, W, C)``.
            audio: ``(B, T, C)`` projected audio features (the decoder never updates them).

        Returns:
            ``(B, T, H, W, C)``.
        """
        tokens = self.conv_audio(self.in_proj_audio(self.norm_a(audio)).transpose(1, 2))  # (B, E, T)
        return vis + self.drop_path(self.mixer(self.norm_v(vis), tokens=tokens))
