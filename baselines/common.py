"""Pieces shared by the transformer baselines (TPAVI, AVSegFormer, AVESFormer).

* :class:`BaselineConfig` — the options every baseline has (the shared :class:`EncoderOptions`).
* :class:`AVSBaseline` — the baselines' model shell on the shared :class:`AVSModel` (encoders and engine hooks):
  input and per-frame flag checks and padded-frame masking of the outputs. A baseline implements ``forward`` with
  these helpers.
* Attention with explicit matmuls (:class:`MultiHeadAttention`) so that both fvcore and torch's FlopCounterMode count
  it (torch 2.13 counts 0 FLOPs for ``scaled_dot_product_attention`` on CPU), post-LN transformer layers, the FFN, the
  2-D sine positional encoding (DETR, unnormalised), the conv output head and the query-mask head of AVSegFormer
  (also the head of AVESFormer, which builds on AVSegFormer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avs_mamba.modules.encoders import AVSModel, EncoderOptions
from avs_mamba.modules.output import AVSOutput

__all__ = [
    "AVSBaseline",
    "BaselineConfig",
    "FeedForward",
    "MultiHeadAttention",
    "QueryMaskHead",
    "SegmentationHead",
    "TransformerLayer",
    "check_divisible",
    "sine_position_encoding",
    "xavier_init_",
    "xavier_packed_",
]


# ----------------------------------------------------------------------------------------------------------------
# Layers


class MultiHeadAttention(nn.Module):
    """Multi-head attention written with explicit matmuls (nn.MultiheadAttention's maths, batch-first).

    Args:
        dim: model width C (query, key and value all have C channels).
        num_heads: heads; ``dim`` must be divisible by it.
        bias: bias of the q/k/v and output projections (nn.MultiheadAttention's ``bias``; AVSegFormer's query
            generator uses none).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        out_bias: bias of the output projection alone; None follows ``bias``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        out_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias if out_bias is None else out_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def reset_parameters_packed(self) -> None:
        """Initialise as ``nn.MultiheadAttention`` followed by a Xavier pass over every matrix (AVSegFormer's decoder
        and query generator): q/k/v Xavier-uniform as ONE packed ``in_proj_weight`` [3C, C], out_proj Xavier, every
        projection bias zero."""
        xavier_packed_([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        nn.init.xavier_uniform_(self.out_proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """query ``[N, Lq, C]``, key/value ``[N, Lk, C]`` -> ``[N, Lq, C]``."""
        N, Lq, C = query.shape
        Lk = key.shape[1]
        h = self.num_heads
        q = self.q_proj(query).view(N, Lq, h, C // h).transpose(1, 2)  # [N, h, Lq, d]
        k = self.k_proj(key).view(N, Lk, h, C // h).transpose(1, 2)  # [N, h, Lk, d]
        v = self.v_proj(value).view(N, Lk, h, C // h).transpose(1, 2)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)  # [N, h, Lq, Lk]
        out = torch.matmul(self.attn_drop(attn), v)  # [N, h, Lq, d]
        return self.proj_drop(self.out_proj(out.transpose(1, 2).reshape(N, Lq, C)))


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout (the transformer FFN)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[..., C]`` -> ``[..., C]``."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """Post-LN layer: [self-attention] -> [cross-attention] -> FFN, each ``x = norm(x + drop(sublayer))``.

    AVSegFormer's decoder and query generator layers (DETR style), and AVESFormer's fusion blocks. Positional
    encodings, when given, are added to the queries/keys of the attentions, never to the values.

    Args:
        dim: width C.
        num_heads: attention heads.
        ffn_dim: FFN hidden width.
        dropout: dropout on each residual branch and inside the FFN.
        self_attn: include the self-attention sub-layer.
        cross_attn: include the cross-attention sub-layer.
        bias: bias of the attention projections.
        attn_drop: dropout on the attention weights (``nn.MultiheadAttention``'s ``dropout``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        self_attn: bool = True,
        cross_attn: bool = True,
        bias: bool = True,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, bias, attn_drop) if self_attn else None
        self.norm1 = nn.LayerNorm(dim) if self_attn else None
        self.cross_attn = MultiHeadAttention(dim, num_heads, bias, attn_drop) if cross_attn else None
        self.norm2 = nn.LayerNorm(dim) if cross_attn else None
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, memory: Tensor | None = None, pos: Tensor | None = None, memory_pos: Tensor | None = None
    ) -> Tensor:
        """x ``[N, L, C]`` (pos: same shape or None), memory ``[N, S, C]`` for the cross-attention -> ``[N, L, C]``."""
        if self.self_attn is not None:
            q = x if pos is None else x + pos
            x = self.norm1(x + self.drop(self.self_attn(q, q, x)))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("this TransformerLayer has a cross-attention and needs `memory` [N, S, C]")
            q = x if pos is None else x + pos
            k = memory if memory_pos is None else memory + memory_pos
            x = self.norm2(x + self.drop(self.cross_attn(q, k, memory)))
        return self.norm3(x + self.ffn(x))


def sine_position_encoding(
    h: int, w: int, num_feats: int = 128, temperature: float = 10000.0, device: torch.device | None = None
) -> Tensor:
    """Unnormalised 2-D sine positional encoding (DETR / mmdet ``SinePositionalEncoding``, normalize=False).

    Returns:
        ``[1, 2 * num_feats, h, w]``: the y-encoding channels first, then x, sin/cos interleaved.
    """
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)  # 1-based cumulative index
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x[..., None] / dim_t  # [h, w, F]
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).unsqueeze(0)


class SegmentationHead(nn.Module):
    """conv3x3 -> bilinear x``scale_factor`` -> conv3x3 -> ReLU -> conv1x1 to K classes (AVSBench output conv).

    Args:
        in_chans: input channels.
        num_classes: K.
        head_chans: widths of the two 3x3 convs (128, 32 in TPAVI and AVSegFormer).
        scale_factor: upsampling factor (TPAVI 2 from stride 2, AVSegFormer 4 from stride 4).
        classifier_bias: bias of the final 1x1 conv (TPAVI yes, AVSegFormer no).
        align_corners: of the upsampling (False in both official heads).
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        head_chans: Sequence[int] = (128, 32),
        scale_factor: int = 4,
        classifier_bias: bool = True,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        mid, low = head_chans
        self.scale_factor = scale_factor
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(in_chans, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, low, 3, padding=1)
        self.classifier = nn.Conv2d(low, num_classes, 1, bias=classifier_bias)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[N, C, h, w]`` -> logits ``[N, K, h*s, w*s]``."""
        x = self.conv1(x)
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=self.align_corners)
        return self.classifier(F.relu(self.conv2(x)))


class QueryMaskHead(nn.Module):
    """AVSegFormer's prediction head: query x mask-feature dot products, lifted back and added to the features.

    ``sim = einsum(queries, mask_feature)`` gives one map per query, a 3-layer 1x1-conv MLP (Q -> hidden -> hidden ->
    C, ReLU between) maps the Q maps back to C channels, the result is added to the mask feature and a
    :class:`SegmentationHead` upsamples x``scale_factor`` to class logits.
    """

    def __init__(
        self,
        dim: int,
        num_queries: int,
        num_classes: int,
        hidden_dim: int = 2048,
        head_chans: Sequence[int] = (128, 32),
        scale_factor: int = 4,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(num_queries, hidden_dim, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, dim, 1),
        )
        self.head = SegmentationHead(dim, num_classes, head_chans, scale_factor, classifier_bias=False)

    def forward(self, mask_feature: Tensor, queries: Tensor) -> Tensor:
        """mask_feature ``[N, C, h, w]``, queries ``[N, Q, C]`` -> logits ``[N, K, h*s, w*s]``."""
        sim = torch.einsum("nqc,nchw->nqhw", queries, mask_feature)  # [N, Q, h, w]
        return self.head(mask_feature + self.mlp(sim))


# ----------------------------------------------------------------------------------------------------------------
# Config and model shell


class BaselineConfig(EncoderOptions):
    """Options every baseline has (the shared encoder options); defaults are the paper setting (PVT-v2-B5, VGGish)."""


class AVSBaseline(AVSModel):
    """Model shell of the baselines: the shared encoders and engine hooks, plus input checks and flattening.

    Subclasses build their necks/decoders in ``__init__`` after calling this one, and implement ``forward(frames,
    audio, frame_flags) -> AVSOutput`` with :meth:`prepare`, :meth:`encode_audio` and :meth:`finish`.
    """

    # Set True on a model re-implemented from its paper's text because no code was released (a table footnote).
    REIMPLEMENTED_FROM_PAPER = False
    NOTES = ""

    # -- forward helpers ---------------------------------------------------------------------------------------

    def prepare(self, frames: Tensor, audio: Tensor, frame_flags: Tensor | None) -> tuple[list[Tensor], Tensor | None]:
        """Check the inputs and run the backbone.

        Args:
            frames: ``[B, T, 3, H, W]``.
            audio: ``[B, T, 1, 96, 64]``.
            frame_flags: ``[B, T]`` bool (False: zero-padded frame) or None.

        Returns:
            The 4 backbone maps ``[B*T, c_l, H/s_l, W/s_l]`` (strides 4..32) and ``keep`` ``[B*T, 1, 1, 1]`` (1 for
            real frames, 0 for padded ones) or None when every frame is real.
        """
        if frames.dim() != 5 or audio.dim() != 5 or frames.shape[:2] != audio.shape[:2]:
            raise ValueError(
                f"expected frames [B, T, 3, H, W] and audio [B, T, 1, 96, 64] with the same B, T; got "
                f"{tuple(frames.shape)} and {tuple(audio.shape)}"
            )
        B, T = frames.shape[:2]
        keep = None
        if frame_flags is not None:
            if tuple(frame_flags.shape) != (B, T):
                raise ValueError(f"frame_flags must be [B={B}, T={T}], got {tuple(frame_flags.shape)}")
            keep = frame_flags.reshape(B * T, 1, 1, 1).to(frames.dtype)
        return self.backbone.forward_intermediates(frames.flatten(0, 1)), keep

    def encode_audio(self, audio: Tensor) -> Tensor:
        """audio ``[B, T, 1, 96, 64]`` log-mel -> embeddings ``[B, T, audio_dim]`` (128)."""
        B, T = audio.shape[:2]
        return self.audio_encoder(audio.flatten(0, 1)).view(B, T, -1)

    @staticmethod
    def finish(
        logits: Tensor, B: int, T: int, size: tuple[int, int], keep: Tensor | None, extras: dict[str, Tensor]
    ) -> AVSOutput:
        """``[B*T, K, h, w]`` logits -> ``AVSOutput`` with ``[B, T, K, H, W]`` logits, zero on padded frames."""
        if logits.shape[-2:] != size:  # input sizes not divisible by the backbone strides
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if keep is not None:
            logits = logits * keep
        return AVSOutput(logits=logits.view(B, T, *logits.shape[1:]), extras=extras)


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform init of every weight with more than one dimension (DETR/AVSegFormer ``_reset_parameters``)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def xavier_packed_(weights: Sequence[Tensor]) -> None:
    """Xavier-uniform init of matrices the official module stores as ONE matrix, rows stacked (nn.MultiheadAttention's
    ``in_proj_weight`` [3C, C], AVSegFormer's ``kv_proj`` [2C, C]): the bound sqrt(6 / (fan_in + fan_out)) uses the
    stacked row count as fan_out, so each part is drawn as it would be inside the packed matrix."""
    fan_in, fan_out = weights[0].shape[1], sum(w.shape[0] for w in weights)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        for w in weights:
            w.uniform_(-bound, bound)


def check_divisible(name: str, value: int, divisor: int, what: str) -> None:
    """Raise ValueError unless ``value`` is a multiple of ``divisor``."""
    if value % divisor:
        raise ValueError(f"{name} must be a multiple of {divisor} ({what}), got {value}")
