"""TPAVI: the AVSBench baseline (Zhou et al., "Audio-Visual Segmentation", ECCV 2022; AVSS extension IJCV 2024).

Official code: OpenNLPLab/AVSBench@f7414af:avs_scripts/{avs_s4,avs_ms3,avss}/model/{PVT,ResNet}_AVSModel.py and
``.../model/TPAVI.py``, re-implemented here. Pipeline (C = ``channels``, 256)::

    frames [B,T,3,H,W] -> backbone (ResNet-50 or PVT-v2, per frame) -> 4 maps (strides 4..32)
    each map -> ASPP-like neck (four 3x3 convs, dilation 3/6/12/18, summed) -> C channels
    stage i in tpavi_stages: TPAVI non-local block over the (T, H, W) volume of a window of frames, with keys from the
        audio (VGGish 128-d -> Linear -> C, broadcast over H x W) and values from the visual map
    DPT-style top-down decoder (residual conv units, x2 bilinear upsampling, align_corners=True) to stride 2; each
        residual unit adds relu(x), not x (the official in-place ReLU overwrites its input)
    -> conv3x3 C->128, x2 bilinear, conv3x3 128->32, ReLU, conv1x1 -> K logits at input resolution

The audio-visual matching (AVM) loss needs each TPAVI stage's audio features and visual map; they are returned in
``AVSOutput.extras`` as ``avm_audio{i}`` ``[B, T, C]`` and ``avm_visual{i}`` ``[B, T, C, h, w]`` for the loss module.
The visual maps are ReLU'd, as the official loss reads them: the decoder's first residual unit on each stage applies
``nn.ReLU(inplace=True)`` to the very tensor the model returns as ``feature_map_list``.

Choices (each an option where it matters):

* ``affinity="dense"`` forms the (T*H*W)^2 affinity of the official code (its memory and FLOPs are part of the
  baseline's cost: ~1 GB fp32 per 5-frame clip at stage 0 for 224^2 input). ``"factorized"`` computes the same
  output exactly with rank-T algebra (the keys are constant over H x W), for long clips or large inputs.
* ``audio_proj_bias=True``: the S4/MS3 code's ``align_channel`` Linear(128, C) has a bias; the AVSS code's has none
  (``tasks.avss`` of ``tpavi.yaml`` sets False).
* ``window=5``: the AVSS code groups frames by 5 even for 10-frame clips (two independent windows); S4/MS3 clips are
  5 frames, one window. ``window="clip"`` attends over the whole clip (quadratic in T; the scaling study's
  ``tpavi_wholeclip``). ``null`` means the default (5), as every option's null does.
* The top decoder path has no unused residual unit (the official ``path4.resConfUnit1`` is built but never called);
  every parameter here gets a gradient. This drops 1.18 M unused parameters from the official count.
* AVSS padded frames (``frame_flags`` False): their audio embeddings are zeroed before the model, as the official
  AVSS scripts do (OpenNLPLab/AVSBench@f7414af:avs_scripts/avss/train.py, test.py: ``audio_feature *
  vid_temporal_mask_flag``), and the neck maps, TPAVI outputs and logits are multiplied by the flag, as in the official
  AVSS model. Real frames sharing a 5-frame window with padded ones see the zeroed embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from avs_mamba.config import register_size_preset
from avs_mamba.modules.output import AVSOutput
from avs_mamba.registry import register_model

from .common import AVSBaseline, BaselineConfig, SegmentationHead

__all__ = ["ASPPNeck", "FeatureFusionBlock", "ResidualConvUnit", "TPAVI", "TPAVIBlock", "TPAVIConfig", "tpavi"]


# ----------------------------------------------------------------------------------------------------------------
# Blocks


class ASPPNeck(nn.Module):
    """Parallel dilated 3x3 convs (padding = dilation), outputs summed (official ``Classifier_Module``)."""

    def __init__(self, in_chans: int, out_chans: int, dilations: Sequence[int] = (3, 6, 12, 18)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_chans, out_chans, 3, padding=d, dilation=d) for d in dilations)
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[N, c_in, h, w]`` -> ``[N, C, h, w]``."""
        return torch.stack([conv(x) for conv in self.convs]).sum(0)


class TPAVIBlock(nn.Module):
    """Temporal pixel-wise audio-visual interaction: a non-local block whose keys come from the audio.

    ``theta`` (visual), ``phi`` (audio map) and ``g`` (visual) are 1x1x1 convs C -> C/2; the affinity
    ``theta^T phi / N`` (N = T*H*W, "dot" mode, no softmax) weights the values ``g``; ``W_z`` (1x1x1 conv + BatchNorm3d
    with zero-initialised affine) maps back to C, a residual adds the input and a LayerNorm over channels follows.

    Args:
        channels: C.
        audio_dim: width of the audio embedding (VGGish: 128).
        inter_channels: C' inside the block (default C / 2).
        affinity: ``"dense"`` (official) or ``"factorized"`` (same result without the N x N matrix).
        audio_bias: bias of the audio projection ``align_channel`` (official S4/MS3: yes; AVSS: no).
    """

    def __init__(
        self,
        channels: int,
        audio_dim: int = 128,
        inter_channels: int | None = None,
        affinity: Literal["dense", "factorized"] = "dense",
        audio_bias: bool = True,
    ) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.affinity = affinity
        self.align_channel = nn.Linear(audio_dim, channels, bias=audio_bias)
        self.theta = nn.Conv3d(channels, inter, 1)
        self.phi = nn.Conv3d(channels, inter, 1)
        self.g = nn.Conv3d(channels, inter, 1)
        self.W_z = nn.Sequential(nn.Conv3d(inter, channels, 1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.W_z[1].weight)  # the block starts as the identity (+ LayerNorm)
        nn.init.zeros_(self.W_z[1].bias)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse the audio into a window of frames.

        Args:
            x: ``[B, C, T, H, W]`` visual maps of one window.
            audio: ``[B, T, audio_dim]`` audio embeddings.

        Returns:
            The updated maps ``[B, C, T, H, W]`` and the projected audio ``[B, T, C]`` (used by the AVM loss).
        """
        B, C, T, H, W = x.shape
        a = self.align_channel(audio)  # [B, T, C]
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, THW, C']
        g = self.g(x).flatten(2).transpose(1, 2)  # [B, THW, C']
        N = T * H * W
        if self.affinity == "dense":
            a_map = a.transpose(1, 2)[..., None, None].expand(B, C, T, H, W)  # audio broadcast over H x W
            phi = self.phi(a_map).flatten(2)  # [B, C', THW]
            y = torch.matmul(torch.matmul(theta, phi) / N, g)  # [B, THW, THW] @ [B, THW, C']
        else:
            # phi is constant over H x W, so theta^T phi g = theta (sum_t phi_t (sum_{hw in t} g)^T): rank T.
            phi_t = self.phi(a.transpose(1, 2)[..., None, None]).flatten(2)  # [B, C', T]
            g_t = g.view(B, T, H * W, -1).sum(2)  # [B, T, C']
            y = torch.matmul(theta, torch.matmul(phi_t, g_t)) / N  # [B, THW, C'] @ [B, C', C']
        y = y.transpose(1, 2).reshape(B, -1, T, H, W)
        z = self.W_z(y) + x
        z = self.norm(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # LayerNorm over channels
        return z, a


class ResidualConvUnit(nn.Module):
    """ReLU -> conv3x3 -> ReLU -> conv3x3, plus the ReLU'd input.

    The official unit (DPT's) computes ``out = relu(x)`` with ``nn.ReLU(inplace=True)``, which overwrites x, so its
    ``out + x`` adds relu(x).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[N, C, h, w]`` -> same shape."""
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """DPT fusion: ``x (+ RCU(skip))`` -> RCU -> x2 bilinear upsampling (align_corners=True)."""

    def __init__(self, channels: int, with_skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels) if with_skip else None
        self.out_unit = ResidualConvUnit(channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """x ``[N, C, h, w]``, skip ``[N, C, h, w]`` (the path's lateral map) -> ``[N, C, 2h, 2w]``."""
        if self.skip_unit is not None:
            if skip is None:
                raise ValueError("this FeatureFusionBlock fuses a skip connection; pass `skip`")
            x = x + self.skip_unit(skip)
        x = self.out_unit(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------------------------------------------
# Config and model


class TPAVIConfig(BaselineConfig):
    """TPAVI options; defaults are the official model (C = 256, TPAVI on all four stages)."""

    channels: int = Field(256, ge=1)
    dilations: tuple[int, ...] = (3, 6, 12, 18)
    tpavi_stages: tuple[int, ...] = (0, 1, 2, 3)
    inter_channels: int | None = Field(None, ge=1)  # None: channels // 2
    affinity: Literal["dense", "factorized"] = "dense"
    audio_proj_bias: bool = True  # official S4/MS3 align_channel; the AVSS code's has no bias
    window: Annotated[int, Field(ge=1)] | Literal["clip"] = 5  # frames per TPAVI window (official: 5), or "clip"
    head_chans: tuple[int, int] = (128, 32)

    @model_validator(mode="after")
    def _check(self) -> TPAVIConfig:
        bad = sorted(set(s for s in self.tpavi_stages if not 0 <= s <= 3))
        if bad or len(set(self.tpavi_stages)) != len(self.tpavi_stages):
            raise ValueError(f"tpavi_stages must be distinct stage indices in 0..3, got {list(self.tpavi_stages)}")
        if not self.dilations:
            raise ValueError("dilations must list at least one dilation of the neck convs")
        return self


class TPAVI(AVSBaseline):
    """The AVSBench TPAVI model; see the module docstring."""

    def __init__(self, config: TPAVIConfig) -> None:
        super().__init__(config)
        C = config.channels
        self.necks = nn.ModuleList(ASPPNeck(c, C, config.dilations) for c in self.feature_chans)
        self.tpavi = nn.ModuleDict(
            {
                str(s): TPAVIBlock(C, self.audio_dim, config.inter_channels, config.affinity, config.audio_proj_bias)
                for s in config.tpavi_stages
            }
        )
        # path[3] starts from the coarsest map (no skip), path[2..0] fuse the finer maps; each upsamples x2.
        self.paths = nn.ModuleList(FeatureFusionBlock(C, with_skip=i < 3) for i in range(4))
        self.head = SegmentationHead(C, config.num_classes, config.head_chans, scale_factor=2, classifier_bias=True)

    def _windows(self, T: int) -> list[tuple[int, int]]:
        size = T if self.config.window == "clip" else self.config.window
        return [(start, min(start + size, T)) for start in range(0, T, size)]

    def forward(self, frames: Tensor, audio: Tensor, frame_flags: Tensor | None = None) -> AVSOutput:
        """Segment the sounding objects of each frame.

        Args:
            frames: ``[B, T, 3, H, W]`` normalised RGB frames.
            audio: ``[B, T, 1, 96, 64]`` VGGish log-mel examples, one per frame.
            frame_flags: ``[B, T]`` bool, False for zero-padded frames (AVSS); None means every frame is real.

        Returns:
            ``AVSOutput(logits [B, T, K, H, W], extras={avm_audio{i}: [B, T, C], avm_visual{i}: [B, T, C, h, w]})``
            for each TPAVI stage i; padded frames are zero.
        """
        B, T, _, H, W = frames.shape
        feats, keep = self.prepare(frames, audio, frame_flags)
        emb = self.encode_audio(audio)  # [B, T, 128]
        if frame_flags is not None:
            emb = emb * frame_flags[..., None].to(emb.dtype)
        maps = [neck(f) for neck, f in zip(self.necks, feats, strict=True)]  # 4 x [B*T, C, h, w]
        if keep is not None:
            maps = [m * keep for m in maps]

        extras: dict[str, Tensor] = {}
        for key, block in self.tpavi.items():
            i = int(key)
            x = maps[i].view(B, T, *maps[i].shape[1:]).transpose(1, 2)  # [B, C, T, h, w]
            outs, auds = [], []
            for t0, t1 in self._windows(T):
                z, a = block(x[:, :, t0:t1], emb[:, t0:t1])
                outs.append(z)
                auds.append(a)
            fused = torch.cat(outs, dim=2).transpose(1, 2).flatten(0, 1)  # [B*T, C, h, w]
            maps[i] = fused * keep if keep is not None else fused
            extras[f"avm_audio{i}"] = torch.cat(auds, dim=1)  # [B, T, C]
            # The official AVM loss reads the map after the decoder's in-place ReLU (see ResidualConvUnit).
            extras[f"avm_visual{i}"] = F.relu(maps[i]).view(B, T, *maps[i].shape[1:])

        x = self.paths[3](maps[3])  # stride 16
        for i in (2, 1, 0):
            x = self.paths[i](x, maps[i])  # strides 8, 4, 2
        return self.finish(self.head(x), B, T, (H, W), keep, extras)


# ----------------------------------------------------------------------------------------------------------------
# Registration and size presets


@register_model("tpavi", config_cls=TPAVIConfig)
def tpavi(config: TPAVIConfig) -> TPAVI:
    """TPAVI (AVSBench baseline) with either backbone; the recipe is in ``baselines/tpavi.yaml``."""
    return TPAVI(config)


register_size_preset(
    "tpavi",
    "smoke",
    {
        "model": {
            "backbone": "pvt_v2_b0",
            "backbone_drop_path_rate": 0.0,  # the smoke recipe was measured without it
            "pretrained": "none",
            "audio_encoder": "logmel_cnn",
            "channels": 32,
            "head_chans": [16, 8],
        }
    },
)
register_size_preset(
    "tpavi",
    "paper",
    {
        "model": {
            "backbone": "pvt_v2_b5",
            "pretrained": "auto",
            "audio_encoder": "vggish",
            "channels": 256,
            "head_chans": [128, 32],
        }
    },
)
