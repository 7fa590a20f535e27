"""AVSegFormer (Gao et al., "AVSegFormer: Audio-Visual Segmentation with Transformer", AAAI 2024, arXiv 2307.01146).

Official code: vvvb-github/AVSegFormer@7083cb6:model/head/AVSegHead.py and
``model/utils/{transformer,query_generator,fusion_block}.py`` (HEAD), re-implemented here. Every frame is processed
independently with its own 1-s audio token. Pipeline (C = ``d_model``, 256)::

    frames -> backbone -> 4 maps -> 1x1 conv + GN(32) to C each (in_proj)
    audio -> VGGish (frozen) -> Linear 128 -> C: one audio token per frame
    strides 8/16/32 -> deformable-attention encoder (6 layers, 3 levels, 8 heads, 4 points, sine pos + level embed)
    query generator: Q learnable queries x 6 x [self-attn -> cross-attn to the audio token -> FFN], + Q embeddings
    decoder: 6 x [self-attn -> dense cross-attn over the encoder memory -> FFN] on the queries
    mask feature: lateral(stride-4 map) + upsampled stride-8 memory -> conv3x3 + GN + ReLU -> cross-modal mixer
        (the audio token attends over all pixels; sigmoid channel gate on the mask feature)
    head: query x mask-feature maps -> 1x1-conv MLP Q -> 2048 -> 2048 -> C, + mask feature -> conv head x4 -> K

The mix loss needs the channel mean of the gated mask feature: ``AVSOutput.extras["mix_map"]`` ``[B, T, 1, h, w]``.

As in the official code: the decoder's attentions (``nn.MultiheadAttention(dropout=0.1)`` there) drop attention
weights with ``attn_dropout``; the query generator's have no dropout. Their q/k/v projections are initialised as
``nn.MultiheadAttention``'s packed ``in_proj_weight`` [3C, C] under the head's Xavier pass (bound sqrt(6 / 4C), zero
biases), the mixer's k/v as its packed ``kv_proj`` [2C, C].

Choices: the multi-scale deformable attention is pure PyTorch (``deform_attn.py``) instead of the compiled CUDA op
(same maths); attention uses explicit matmuls so FLOP counters count it. AVSS padded frames get zero logits and a zero
mix map (the per-frame flags of the data loader; the model itself is frame-independent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from avs_mamba.config import register_size_preset
from avs_mamba.modules.output import AVSOutput
from avs_mamba.registry import register_model

from .common import (
    AVSBaseline,
    BaselineConfig,
    FeedForward,
    MultiHeadAttention,
    QueryMaskHead,
    TransformerLayer,
    sine_position_encoding,
    xavier_init_,
    xavier_packed_,
)
from .deform_attn import MSDeformAttn, encoder_reference_points

__all__ = [
    "AVSegFormer",
    "AVSegFormerConfig",
    "CrossModalMixer",
    "DeformableEncoderLayer",
    "QueryGenerator",
    "avsegformer",
]

GN_GROUPS = 32  # GroupNorm groups of the projections (official)
ENCODER_LEVELS = (1, 2, 3)  # backbone stages (strides 8, 16, 32) fed to the encoder ("valid_indices")


# ----------------------------------------------------------------------------------------------------------------
# Blocks


class DeformableEncoderLayer(nn.Module):
    """Deformable DETR encoder layer, post-LN: deformable self-attention -> FFN (GELU)."""

    def __init__(
        self, dim: int, num_levels: int, num_heads: int, num_points: int, ffn_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """src, pos ``[N, S, C]``, reference_points ``[1, S, L, 2]`` -> ``[N, S, C]``."""
        src = self.norm1(src + self.drop(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        return self.norm2(src + self.ffn(src))


class QueryGenerator(nn.Module):
    """AVSegFormer's ``AttentionGenerator``: learnable queries refined by attention to the audio token.

    Layers are [self-attn -> cross-attn to the audio -> FFN (GELU)], post-LN, bias-free attention, no dropout.
    """

    def __init__(self, dim: int, num_queries: int, num_layers: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.query = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(TransformerLayer(dim, num_heads, ffn_dim, bias=False) for _ in range(num_layers))

    def forward(self, audio: Tensor) -> Tensor:
        """audio ``[N, 1, C]`` -> queries ``[N, Q, C]``."""
        q = self.query.weight[None].expand(audio.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, audio)
        return q


class CrossModalMixer(nn.Module):
    """The audio token attends over every pixel of the mask feature; the sigmoid of the result gates the channels."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        # Official: bias-free q/kv projections, a biased output projection.
        self.attn = MultiHeadAttention(dim, num_heads, bias=False, out_bias=True)

    def forward(self, feature: Tensor, audio: Tensor) -> Tensor:
        """feature ``[N, C, h, w]``, audio ``[N, 1, C]`` -> gated feature ``[N, C, h, w]``."""
        tokens = feature.flatten(2).transpose(1, 2)  # [N, hw, C]
        gate = self.attn(audio, tokens, tokens).sigmoid()  # [N, 1, C]
        return feature * gate.transpose(1, 2)[..., None]


# ----------------------------------------------------------------------------------------------------------------
# Config and model


class AVSegFormerConfig(BaselineConfig):
    """AVSegFormer options; defaults are the official configs (C 256, 300 queries, 6/6/6 layers)."""

    d_model: int = Field(256, ge=1)
    num_queries: int = Field(300, ge=1)
    num_heads: int = Field(8, ge=1)
    num_encoder_layers: int = Field(6, ge=1)
    num_decoder_layers: int = Field(6, ge=1)
    num_generator_layers: int = Field(6, ge=1)
    num_points: int = Field(4, ge=1)
    ffn_dim: int = Field(2048, ge=1)  # encoder and decoder FFN
    generator_ffn_dim: int = Field(1024, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attn_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # on the decoder's attention weights (official MHA dropout)
    head_hidden: int = Field(2048, ge=1)  # 1x1-conv MLP of the query-mask head
    head_chans: tuple[int, int] = (128, 32)
    mixer: bool = True  # the cross-modal mixer (fusion block)

    @model_validator(mode="after")
    def _check(self) -> AVSegFormerConfig:
        if self.d_model % GN_GROUPS or self.d_model % (2 * self.num_heads):
            raise ValueError(
                f"d_model must be a multiple of {GN_GROUPS} (GroupNorm) and of 2 * num_heads, got d_model="
                f"{self.d_model}, num_heads={self.num_heads}"
            )
        return self


class AVSegFormer(AVSBaseline):
    """AVSegFormer; see the module docstring."""

    def __init__(self, config: AVSegFormerConfig) -> None:
        super().__init__(config)
        cfg = config
        C = cfg.d_model
        L = len(ENCODER_LEVELS)
        self.in_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, C, 1), nn.GroupNorm(GN_GROUPS, C)) for c in self.feature_chans
        )
        self.audio_proj = nn.Linear(self.audio_dim, C)
        self.level_embed = nn.Parameter(torch.empty(L, C))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(C, L, cfg.num_heads, cfg.num_points, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_encoder_layers)
        )
        self.query_generator = QueryGenerator(
            C, cfg.num_queries, cfg.num_generator_layers, cfg.num_heads, cfg.generator_ffn_dim
        )
        self.learnable_query = nn.Embedding(cfg.num_queries, C)
        self.decoder = nn.ModuleList(
            TransformerLayer(C, cfg.num_heads, cfg.ffn_dim, cfg.dropout, attn_drop=cfg.attn_dropout)
            for _ in range(cfg.num_decoder_layers)
        )
        self.lateral_conv = nn.Sequential(nn.Conv2d(C, C, 1), nn.GroupNorm(GN_GROUPS, C))
        self.out_conv = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.GroupNorm(GN_GROUPS, C), nn.ReLU(inplace=True))
        self.mixer = CrossModalMixer(C, cfg.num_heads) if cfg.mixer else None
        self.head = QueryMaskHead(
            C, cfg.num_queries, cfg.num_classes, cfg.head_hidden, cfg.head_chans, scale_factor=self.stem_stride
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Official AVSegHead: Xavier on every matrix of the head, then the deformable-attention init, N(0,1) levels.
        parts = (self.in_proj, self.encoder, self.decoder, self.learnable_query, self.lateral_conv, self.out_conv)
        for part in (*parts, self.mixer, self.head):
            if part is not None:
                xavier_init_(part)
        for module in self.encoder.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)
        xavier_init_(self.query_generator)
        # nn.MultiheadAttention's own init (packed in_proj, zero biases) survives the Xavier pass in shape.
        for layer in (*self.decoder, *self.query_generator.layers):
            for attn in (layer.self_attn, layer.cross_attn):
                attn.reset_parameters_packed()
        if self.mixer is not None:
            xavier_packed_([self.mixer.attn.k_proj.weight, self.mixer.attn.v_proj.weight])  # official kv_proj [2C, C]

    def encode(self, srcs: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Deformable encoder over the flattened levels: ``[N, C, h_l, w_l]`` maps -> memory ``[N, S, C]``."""
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        C = srcs[0].shape[1]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)  # [N, S, C]
        pos = torch.cat(
            [
                sine_position_encoding(h, w, C // 2, device=src.device).to(src.dtype).flatten(2).transpose(1, 2)
                + self.level_embed[lvl]
                for lvl, (h, w) in enumerate(shapes)
            ],
            dim=1,
        )  # [1, S, C]
        ref = encoder_reference_points(shapes, device=src.device).to(src.dtype)
        for layer in self.encoder:
            src = layer(src, pos, ref, shapes)
        return src, shapes

    def forward(self, frames: Tensor, audio: Tensor, frame_flags: Tensor | None = None) -> AVSOutput:
        """Segment the sounding objects of each frame.

        Args:
            frames: ``[B, T, 3, H, W]`` normalised RGB frames.
            audio: ``[B, T, 1, 96, 64]`` VGGish log-mel examples, one per frame.
            frame_flags: ``[B, T]`` bool, False for zero-padded frames (AVSS); None means every frame is real.

        Returns:
            ``AVSOutput(logits [B, T, K, H, W], extras={"mix_map": [B, T, 1, H/4, W/4]})``; padded frames are zero.
        """
        B, T, _, H, W = frames.shape
        feats, keep = self.prepare(frames, audio, frame_flags)
        maps = [proj(f) for proj, f in zip(self.in_proj, feats, strict=True)]  # 4 x [N, C, h, w], N = B*T
        a = self.audio_proj(self.encode_audio(audio)).flatten(0, 1)[:, None]  # [N, 1, C]

        memory, shapes = self.encode([maps[i] for i in ENCODER_LEVELS])
        queries = self.query_generator(a) + self.learnable_query.weight[None]  # [N, Q, C]
        for layer in self.decoder:
            queries = layer(queries, memory)

        h8, w8 = shapes[0]
        mem8 = memory[:, : h8 * w8].transpose(1, 2).reshape(-1, memory.shape[-1], h8, w8)  # stride-8 level
        lateral = self.lateral_conv(maps[0])
        mask_feature = self.out_conv(
            lateral + F.interpolate(mem8, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        )
        if self.mixer is not None:
            mask_feature = self.mixer(mask_feature, a)  # [N, C, H/4, W/4]

        mix_map = mask_feature.mean(1, keepdim=True)  # [N, 1, h, w]
        if keep is not None:
            mix_map = mix_map * keep
        extras = {"mix_map": mix_map.view(B, T, *mix_map.shape[1:])}
        return self.finish(self.head(mask_feature, queries), B, T, (H, W), keep, extras)


# ----------------------------------------------------------------------------------------------------------------
# Registration and size presets


@register_model("avsegformer", config_cls=AVSegFormerConfig)
def avsegformer(config: AVSegFormerConfig) -> AVSegFormer:
    """AVSegFormer with either backbone; the recipe is in ``baselines/avsegformer.yaml``."""
    return AVSegFormer(config)


register_size_preset(
    "avsegformer",
    "smoke",
    {
        "model": {
            "backbone": "pvt_v2_b0",
            "backbone_drop_path_rate": 0.0,  # the smoke recipe was measured without it
            "pretrained": "none",
            "audio_encoder": "logmel_cnn",
            "d_model": 32,
            "num_queries": 8,
            "num_heads": 4,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "num_generator_layers": 1,
            "num_points": 2,
            "ffn_dim": 64,
            "generator_ffn_dim": 64,
            "head_hidden": 32,
            "head_chans": [16, 8],
        }
    },
)
register_size_preset(
    "avsegformer",
    "paper",
    {
        "model": {
            "backbone": "pvt_v2_b5",
            "pretrained": "auto",
            "audio_encoder": "vggish",
            "d_model": 256,
            "num_queries": 300,
            "num_heads": 8,
            "num_encoder_layers": 6,
            "num_decoder_layers": 6,
            "num_generator_layers": 6,
            "num_points": 4,
            "ffn_dim": 2048,
            "generator_ffn_dim": 1024,
            "head_hidden": 2048,
            "head_chans": [128, 32],
        }
    },
)
