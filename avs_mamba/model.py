"""AVS-Mamba: temporal and multi-modal Mamba for audio-visual segmentation.

Gong et al., "AVS-Mamba: Exploring Temporal and Multi-modal Mamba for Audio-Visual Segmentation", IEEE TMM 2025
(arXiv 2501.07810); official code SitongGong/AVS-Mamba@e0489c94:model/compformer_ablation.py (``CompFormer``) and
the modules it imports (@91c4fc3a:model/*.py), whose architecture this re-implements.

Pipeline (C = d_model)::

    frames [B,T,3,H,W] -> backbone (per frame) -> res2..res5 -> 1x1 conv + GN(32) -> C channels ("input_proj")
    audio [B,T,1,96,64] -> VGGish (frozen) or log-mel CNN -> [B,T,128] -> Linear -> A [B,T,C]
    res3..res5 -> MTE (2 x [cross-scale VSS -> MixFFN -> cross-scale TMB])
    MTE outputs + query A -> MAD (2 layers x 3 levels x [frame V2A, temporal V2A]) -> queries q1, q2
    res2 + MTE outputs + A -> CIP (FPN with lateral -> TMB -> A2V per level) -> mask features (stride 4)
    head(mask features, q_l) -> logits [B,T,K,H,W]; q2 gives the prediction, q1 the intermediate (aux) output

Every ablation switch of DESIGN §4 is a config field (``mte.tmb``, ``mad.frame_v2a``, ``cip.enabled``, ``scan.k``,
``audio.enabled``, ...); the model never branches on a variant's name.

Choices where the official code and the paper differ (each an option):

* ``cip.res2_shares_res3_tmb = True``: the res2 level runs with the res3 level's TMB, as the official code that
  produced the published numbers does (SitongGong/AVS-Mamba@91c4fc3a:model/mamba_cmfpn_.py, ``CrossModalFPN``: its
  res2 step reuses the loop's last ``self_attn``; the fourth TMB it builds is never called). Only three TMBs are
  built, so the model has 0.74 M parameters fewer than the official count (which includes the unused block) and
  every parameter gets a gradient. ``False`` is the untied form the four built TMBs suggest: every CIP level its own.
* ``cip.upsample = "nearest"``: the official code (which produced the published numbers); the paper's Fig. 5 says
  bilinear, available as ``"bilinear"``.
* ``tmb_kernel = (1, 3, 3)``: the official "3-D" depthwise conv does not mix frames; all temporal mixing is in the
  scan. A (3, 3, 3) kernel is a true 3-D conv.
* AVSS padded frames (``frame_flags`` False): their projected backbone features, their mask features and their
  output logits are set to zero (official @6042af6:model/compformer_semantic.py multiplies by
  ``vid_temporal_mask_flag``; we zero after the input projection so that no GroupNorm bias re-enters the clip's
  scans from a padded frame).
* The visual backbone is trainable after construction; the engine freezes it for the recipe's first epochs through
  ``set_backbone_trainable``. VGGish is always frozen (and kept in eval mode); the log-mel CNN trains.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from avs_mamba.config import register_size_preset
from avs_mamba.modules.cip import ContextIntegrationPyramid
from avs_mamba.modules.encoders import AVSModel, EncoderOptions
from avs_mamba.modules.fusion import AudioToVision, VisionToAudio
from avs_mamba.modules.head import MaskHead
from avs_mamba.modules.mad import ModalityAggregationDecoder
from avs_mamba.modules.mte import MultiScaleTemporalEncoder, TemporalMambaBlock
from avs_mamba.modules.output import AVSOutput
from avs_mamba.registry import register_model

__all__ = ["AVSMamba", "AVSMambaConfig", "AVSOutput", "avs_mamba"]

GN_GROUPS = 32  # GroupNorm groups of the input projections (official code)


# ----------------------------------------------------------------------------------------------------------------
# Config


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MTEOptions(_Options):
    """Multi-scale Temporal Encoder switches."""

    enabled: bool = True
    spatial: bool = True  # cross-scale VSS + MixFFN
    tmb: bool = True  # cross-scale Temporal Mamba Block
    num_layers: int = Field(2, ge=1)
    ffn_ratio: int = Field(4, ge=1)


class MADOptions(_Options):
    """Modality Aggregation Decoder switches; off, the decoder outputs repeat the audio query."""

    enabled: bool = True
    frame_v2a: bool = True
    temporal_v2a: bool = True
    num_layers: int = Field(2, ge=1)


class CIPOptions(_Options):
    """Contextual Integration Pyramid switches; off, a plain FPN on the same convs (tmb/a2v then unused)."""

    enabled: bool = True
    tmb: bool = True
    a2v: bool = True
    res2_shares_res3_tmb: bool = True  # official; False: res2 gets its own TMB (the untied form)
    upsample: Literal["nearest", "bilinear"] = "nearest"


class ScanOptions(_Options):
    """3-D scan directions of every TMB (MTE and CIP; V2A/A2V always use 4) and the selective-scan backend."""

    k: Literal[2, 4, 6, 8, 10, 12] = 8
    backend: Literal["auto", "mamba_ssm", "torch", "cpu", "reference"] = "auto"


class AudioOptions(_Options):
    """``enabled = False`` feeds zeros instead of the log-mel input: a control that removes the audio signal."""

    enabled: bool = True


class AVSMambaConfig(EncoderOptions):
    """AVS-Mamba options; defaults are the paper model's (PVT-v2-B5, VGGish, d_model 256)."""

    d_model: int = Field(256, ge=1)
    d_state: int = Field(16, ge=1)
    dt_rank: int | Literal["auto"] = 16  # "auto": ceil(d_model / 16)
    expand: int = Field(2, ge=1)
    d_conv: int = Field(3, ge=1)  # depthwise kernel of the VSS, V2A and A2V blocks
    tmb_kernel: tuple[int, int, int] = (1, 3, 3)
    conv1d_width: int = Field(4, ge=1)  # causal conv over the audio tokens
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0)  # the same rate on every residual branch, as the official code
    # Input projections' 1x1 convs: "torch" = nn.Conv2d's default init, as the official CompFormer (which re-inits
    # nothing); "xavier" = Xavier-uniform weight, zero bias (the Deformable-DETR / Mask2Former convention).
    input_proj_init: Literal["torch", "xavier"] = "torch"
    head_hidden: int = Field(2048, ge=1)  # width of the mask head's 1x1-conv FFN
    head_chans: tuple[int, int] = (128, 32)
    mte: MTEOptions = Field(default_factory=MTEOptions)
    mad: MADOptions = Field(default_factory=MADOptions)
    cip: CIPOptions = Field(default_factory=CIPOptions)
    scan: ScanOptions = Field(default_factory=ScanOptions)
    audio: AudioOptions = Field(default_factory=AudioOptions)

    @model_validator(mode="after")
    def _check(self) -> AVSMambaConfig:
        if self.d_model % GN_GROUPS:
            raise ValueError(f"d_model must be a multiple of {GN_GROUPS} (GroupNorm groups), got {self.d_model}")
        if self.cip.enabled and not (self.cip.tmb or self.cip.a2v):
            raise ValueError("cip.enabled needs cip.tmb or cip.a2v (or both); for a plain FPN set cip.enabled=false")
        if self.mad.enabled and not (self.mad.frame_v2a or self.mad.temporal_v2a):
            raise ValueError("mad.enabled needs mad.frame_v2a or mad.temporal_v2a; or set mad.enabled=false")
        if self.mte.enabled and not (self.mte.spatial or self.mte.tmb):
            raise ValueError("mte.enabled needs mte.spatial or mte.tmb; to drop the MTE set mte.enabled=false")
        if any(k < 1 or k % 2 == 0 for k in self.tmb_kernel):
            raise ValueError(f"tmb_kernel must be three odd positive sizes (kt, kh, kw), got {self.tmb_kernel}")
        return self

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank


# ----------------------------------------------------------------------------------------------------------------
# Model


class AVSMamba(AVSModel):
    """AVS-Mamba; see the module docstring for the pipeline and the documented choices."""

    COMPONENTS = ("mte", "mad", "cip")

    def __init__(self, config: AVSMambaConfig) -> None:
        super().__init__(config)  # visual backbone and audio encoder
        cfg = config
        C = cfg.d_model
        ssm = dict(d_state=cfg.d_state, dt_rank=cfg.resolved_dt_rank, expand=cfg.expand, backend=cfg.scan.backend)
        dp = cfg.drop_path_rate

        chans = self.feature_chans
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, C, 1), nn.GroupNorm(GN_GROUPS, C)) for c in chans)
        self.audio_proj = nn.Linear(self.audio_dim, C)

        tmb = partial(TemporalMambaBlock, C, k=cfg.scan.k, kernel=cfg.tmb_kernel, drop_path=dp, **ssm)
        fusion = dict(d_conv=cfg.d_conv, conv1d_width=cfg.conv1d_width, drop_path=dp, **ssm)
        self.mte = (
            MultiScaleTemporalEncoder(
                cfg.mte.num_layers,
                d_model=C,
                ffn_ratio=cfg.mte.ffn_ratio,
                k=cfg.scan.k,
                d_conv=cfg.d_conv,
                tmb_kernel=cfg.tmb_kernel,
                spatial=cfg.mte.spatial,
                tmb=cfg.mte.tmb,
                drop_path=dp,
                **ssm,
            )
            if cfg.mte.enabled
            else None
        )
        self.mad = (
            ModalityAggregationDecoder(
                cfg.mad.num_layers,
                num_levels=len(chans) - 1,
                frame_v2a=partial(VisionToAudio, C, "frame", **fusion) if cfg.mad.frame_v2a else None,
                temporal_v2a=partial(VisionToAudio, C, "temporal", **fusion) if cfg.mad.temporal_v2a else None,
            )
            if cfg.mad.enabled
            else None
        )
        cip_on = cfg.cip.enabled
        self.cip = ContextIntegrationPyramid(
            C,
            num_levels=len(chans),
            tmb=tmb if cip_on and cfg.cip.tmb else None,
            a2v=partial(AudioToVision, C, **fusion) if cip_on and cfg.cip.a2v else None,
            res2_shares_res3_tmb=cfg.cip.res2_shares_res3_tmb,
            upsample=cfg.cip.upsample,
        )
        # The head upsamples from the finest level's stride (4) back to the input resolution.
        self.head = MaskHead(C, cfg.num_classes, cfg.head_hidden, cfg.head_chans, scale_factor=self.stem_stride)
        if cfg.input_proj_init == "xavier":
            self._xavier_input_proj()

    def _xavier_input_proj(self) -> None:
        # Xavier-uniform 1x1 convs with zero bias: the Deformable-DETR/Mask2Former convention for input projections.
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

    # -- forward -----------------------------------------------------------------------------------------------

    def encode_audio(self, audio: Tensor) -> Tensor:
        """audio ``[B, T, 1, 96, 64]`` log-mel -> projected audio features ``[B, T, C]``."""
        B, T = audio.shape[:2]
        if not self.config.audio.enabled:
            audio = torch.zeros_like(audio)  # control: the model sees no audio signal
        emb = self.audio_encoder(audio.flatten(0, 1))  # [B*T, 128]
        return self.audio_proj(emb).view(B, T, -1)

    def forward(self, frames: Tensor, audio: Tensor, frame_flags: Tensor | None = None) -> AVSOutput:
        """Segment the sounding objects of each frame.

        Args:
            frames: ``[B, T, 3, H, W]`` normalised RGB frames.
            audio: ``[B, T, 1, 96, 64]`` VGGish log-mel examples, one per frame.
            frame_flags: ``[B, T]`` bool, False for zero-padded frames (AVSS); None means every frame is real.

        Returns:
            ``AVSOutput(logits [B, T, K, H, W], aux=[intermediate logits [B, T, K, H, W]])``; padded frames are 0.
        """
        if frames.dim() != 5 or audio.dim() != 5 or frames.shape[:2] != audio.shape[:2]:
            raise ValueError(
                f"expected frames [B, T, 3, H, W] and audio [B, T, 1, 96, 64] with the same B, T; got "
                f"{tuple(frames.shape)} and {tuple(audio.shape)}"
            )
        B, T, _, H, W = frames.shape
        keep = None
        if frame_flags is not None:
            if tuple(frame_flags.shape) != (B, T):
                raise ValueError(f"frame_flags must be [B={B}, T={T}], got {tuple(frame_flags.shape)}")
            keep = frame_flags.reshape(B * T, 1, 1, 1).to(frames.dtype)

        feats = self.backbone.forward_intermediates(frames.flatten(0, 1))  # 4 x [B*T, c_l, H/s, W/s]
        feats = [proj(f) for proj, f in zip(self.input_proj, feats, strict=True)]  # [B*T, C, h_l, w_l]
        if keep is not None:
            feats = [f * keep for f in feats]
        A = self.encode_audio(audio)  # [B, T, C]

        # MTE and MAD work channel-last per clip: (B, T, h, w, C).
        mem = [f.reshape(B, T, *f.shape[1:]).permute(0, 1, 3, 4, 2) for f in feats[1:]]
        if self.mte is not None:
            mem = self.mte(mem)
        queries = self.mad(mem, A) if self.mad is not None else [A] * self.config.mad.num_layers

        pyramid = [feats[0]] + [m.permute(0, 1, 4, 2, 3).flatten(0, 1) for m in mem]  # [B*T, C, h_l, w_l]
        mask_features = self.cip(pyramid, A, T)  # [B*T, C, H/4, W/4]
        if keep is not None:
            mask_features = mask_features * keep

        logits = []
        for q in queries:
            out = self.head(mask_features, q.reshape(B * T, 1, -1))  # [B*T, K, H', W']
            if out.shape[-2:] != (H, W):  # input sizes not divisible by the backbone's strides
                out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
            if keep is not None:
                out = out * keep
            logits.append(out.view(B, T, *out.shape[1:]))
        return AVSOutput(logits=logits[-1], aux=logits[:-1])


# ----------------------------------------------------------------------------------------------------------------
# Registration and size presets


@register_model("avs_mamba", config_cls=AVSMambaConfig)
def avs_mamba(config: AVSMambaConfig) -> AVSMamba:
    """AVS-Mamba with every ablation switch; the ``ablations/*.yaml`` files are deltas on it."""
    return AVSMamba(config)


register_size_preset(
    "avs_mamba",
    "smoke",
    {
        "model": {
            "d_model": 32,
            "d_state": 8,
            "dt_rank": 4,
            "backbone": "pvt_v2_b0",
            "backbone_drop_path_rate": 0.0,  # the smoke recipe was measured without it
            "pretrained": "none",
            "audio_encoder": "logmel_cnn",
            "head_hidden": 64,
            "head_chans": [16, 8],
            "mte": {"ffn_ratio": 2},
        }
    },
)
register_size_preset(
    "avs_mamba",
    "paper",
    {
        "model": {
            "d_model": 256,
            "d_state": 16,
            "dt_rank": 16,
            "backbone": "pvt_v2_b5",
            "pretrained": "auto",
            "audio_encoder": "vggish",
            "head_hidden": 2048,
            "head_chans": [128, 32],
            "mte": {"ffn_ratio": 4},
        }
    },
)
