"""AVS-Mamba's Contextual Integration Pyramid (CIP) (Gong et al., IEEE TMM 2025; official
SitongGong/AVS-Mamba@91c4fc3a:model/mamba_cmfpn_.py, ``CrossModalFPN``), and the plain FPN it reduces to.

A 4-level top-down FPN over res5 -> res4 -> res3 (the MTE outputs) -> res2 (the stride-4 input projection). Each
level's Context Fusion Block is: lateral 1x1 conv -> TMB (single-scale, K directions) -> A2V (the clip's projected
audio) -> add the upsampled coarser output -> 3x3 conv + ReLU. The finest output goes through a 3x3 conv into the
stride-4 ``mask_features``. As in the official code (``norm=None``), the lateral and output convs have no norm and
no bias, ``mask_features`` has a bias, and all convs use Caffe2's Xavier fill.

With neither TMB nor A2V the module is the plain FPN of the ``cip.enabled=false`` ablation, on the same convs.

Options for the official code's quirks:

* ``res2_shares_res3_tmb``: the official code builds four TMBs but, through a commented-out line, runs res2 with the
  res3 TMB, leaving the fourth unused. True (the model's default) reproduces the sharing and builds only three;
  False gives res2 its own.
* ``upsample``: ``"nearest"`` (official code) or ``"bilinear"`` (the paper's Fig. 5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ContextIntegrationPyramid", "c2_xavier_fill"]

BlockFactory = Callable[[], nn.Module]
UPSAMPLE_MODES = ("nearest", "bilinear")


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill as fvcore's ``c2_xavier_fill``: kaiming-uniform with a = 1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _conv(in_chans: int, out_chans: int, kernel: int, bias: bool) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2, bias=bias)
    c2_xavier_fill(conv)
    return conv


class ContextIntegrationPyramid(nn.Module):
    """Top-down FPN with optional TMB and A2V in every level's fusion block.

    Args:
        d_model: channels of every level and of the output.
        num_levels: pyramid levels (4: res2..res5).
        tmb: builds a TMB ``(B, T, H, W, C) -> same``, or None for no TMB.
        a2v: builds an A2V block ``(vis (B, T, H, W, C), audio (B, T, C)) -> vis``, or None for no A2V.
        res2_shares_res3_tmb: run the finest level with the next level's TMB (official-code quirk).
        upsample: ``"nearest"`` or ``"bilinear"`` top-down upsampling.
    """

    def __init__(
        self,
        d_model: int,
        num_levels: int = 4,
        tmb: BlockFactory | None = None,
        a2v: BlockFactory | None = None,
        res2_shares_res3_tmb: bool = False,
        upsample: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"cip.upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.num_levels = num_levels
        self.upsample = upsample
        self.res2_shares_res3_tmb = res2_shares_res3_tmb
        self.lateral_convs = nn.ModuleList(_conv(d_model, d_model, 1, bias=False) for _ in range(num_levels))
        self.output_convs = nn.ModuleList(_conv(d_model, d_model, 3, bias=False) for _ in range(num_levels))
        self.mask_features = _conv(d_model, d_model, 3, bias=True)
        # Indexed by level, finest (res2) first; with sharing, level 0 uses tmbs[0] of a list starting at res3.
        num_tmbs = num_levels - 1 if res2_shares_res3_tmb else num_levels
        self.tmbs = None if tmb is None else nn.ModuleList(tmb() for _ in range(num_tmbs))
        self.a2vs = None if a2v is None else nn.ModuleList(a2v() for _ in range(num_levels))

    def _tmb(self, level: int) -> nn.Module:
        if self.res2_shares_res3_tmb:
            return self.tmbs[max(level - 1, 0)]
        return self.tmbs[level]

    def forward(self, feats: Sequence[Tensor], audio: Tensor | None, num_frames: int) -> Tensor:
        """Fuse the pyramid into mask features.

        Args:
            feats: ``num_levels`` maps ``(B*T, C, H_l, W_l)``, fine to coarse (res2, res3, res4, res5).
            audio: ``(B, T, C)`` projected audio for the A2V blocks (may be None without A2V).
            num_frames: T.

        Returns:
            ``(B*T, C, H_0, W_0)`` mask features at the finest level's resolution.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"the CIP expects {self.num_levels} feature levels, got {len(feats)}")
        if self.a2vs is not None and audio is None:
            raise ValueError("the CIP has A2V blocks but got audio=None")
        T = num_frames
        y: Tensor | None = None
        for level in reversed(range(self.num_levels)):
            cur = self.lateral_convs[level](feats[level])
            if self.tmbs is not None or self.a2vs is not None:
                BT, C, H, W = cur.shape
                x = cur.reshape(BT // T, T, C, H, W).permute(0, 1, 3, 4, 2)  # (B, T, H, W, C)
                if self.tmbs is not None:
                    x = self._tmb(level)(x)
                if self.a2vs is not None:
                    x = self.a2vs[level](x, audio)
                cur = x.permute(0, 1, 4, 2, 3).reshape(BT, C, H, W)
            if y is not None:
                align = {} if self.upsample == "nearest" else {"align_corners": False}
                cur = cur + F.interpolate(y, size=cur.shape[-2:], mode=self.upsample, **align)
            y = F.relu(self.output_convs[level](cur))
        return self.mask_features(y)
