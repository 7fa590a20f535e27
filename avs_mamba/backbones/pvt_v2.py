"""PVT-v2 backbone (b0-b5) with the official checkpoints' module and parameter names.

Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", Computational Visual Media 2022
(arXiv 2106.13797). Names and shapes follow the official classification code,
whai362/PVT@5a6b890:classification/pvt_v2.py (``patch_embed{i}``, ``block{i}.{j}.attn.{q,kv,proj,sr,norm}``,
``mlp.dwconv.dwconv``, ``norm{i}``, ``head``), so ``pvt_v2_b*.pth`` from the PVT-v2 release loads with strict key
checks. The only checkpoint keys beyond the feature extractor are the ImageNet classifier
``head.weight``/``head.bias``: a model built with ``num_classes=1000`` keeps the head and loads every key; with any
other width (0 = no head, the segmentation use) exactly those two keys are dropped by name and reported.

The segmentation codes use the same file: OpenNLPLab/AVSBench@f7414af:avs_scripts/avs_ms3/model/pvt.py (TPAVI),
vvvb-github/AVSegFormer@7083cb6:model/backbone/pvt.py and SitongGong/AVS-Mamba@17ec483:model/backbone/pvt.py. All
build ``pvt_v2_b5`` with stochastic depth 0.1 (linear over the 52 blocks) and LayerNorm eps 1e-6 in the blocks and
stage norms, while the patch-embedding and attention-reduction LayerNorms are plain ``nn.LayerNorm`` (eps 1e-5).

Attention is written with explicit matmuls rather than ``scaled_dot_product_attention`` so operator-level FLOP
counters (fvcore, torch.utils.flop_counter on CPU) see it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from ..modules.layers import DropPath
from ._layers import drop_path_rates, stage_indices
from .checkpoint import PretrainedSpec

__all__ = [
    "PVT_V2_DROP_PATH_RATE",
    "PVT_V2_PRETRAINED",
    "PyramidVisionTransformerV2",
    "pvt_v2_b0",
    "pvt_v2_b1",
    "pvt_v2_b2",
    "pvt_v2_b3",
    "pvt_v2_b4",
    "pvt_v2_b5",
    "pvt_v2_tiny",
]


class DWConv(nn.Module):
    """Depth-wise 3x3 conv applied to a token sequence laid out as an H x W grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """x: [B, H*W, C] -> [B, H*W, C]."""
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Feed-forward with a depth-wise conv between the two linears (PVT-v2's convolutional FFN)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """x: [B, H*W, C] -> [B, H*W, C]."""
        x = self.drop(self.act(self.dwconv(self.fc1(x), H, W)))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Multi-head attention whose keys/values come from a map reduced ``sr_ratio`` times by a strided conv."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        reduction_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"PVT-v2 attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        # Registration order matches the official module, so state_dict() lists keys in the checkpoint's order.
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=reduction_norm_eps)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """x: [B, H*W, C] -> [B, H*W, C]."""
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).transpose(1, 2)  # (B, h, N, d)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)  # (B, N', C)
            x = self.norm(x)
        kv = self.kv(x).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)  # (2, B, h, N', d)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, N')
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        sr_ratio: int,
        norm_layer: Callable[[int], nn.Module],
        reduction_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio, reduction_norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """x: [B, H*W, C] -> [B, H*W, C]."""
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided conv (kernel > stride, zero padding) then LayerNorm."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """x: [B, C_in, H_in, W_in] -> tokens [B, H*W, C] and the grid size H, W."""
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class PyramidVisionTransformerV2(nn.Module):
    """Four-stage PVT-v2 with the timm backbone interface (``forward_intermediates``, ``feature_info``).

    ``norm_eps`` is the eps of the blocks' and stages' LayerNorms (the builders' ``norm_layer``), ``reduction_norm_eps``
    that of the patch-embedding and attention-reduction LayerNorms, which the official code builds as a plain
    ``nn.LayerNorm`` (eps 1e-5). ``drop_path_rate`` is the stochastic depth of the last block, rising linearly from
    0 over all blocks; the class default is 0 and the ``pvt_v2_*`` builders use the official 0.1.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        reduction_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        per_stage = dict(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths)
        for key, value in dict(per_stage, sr_ratios=sr_ratios).items():
            if len(value) != 4:
                raise ValueError(f"PVT-v2 {key} needs 4 entries (one per stage), got {list(value)}")
        if num_classes < 0:
            raise ValueError(f"PVT-v2 num_classes must be >= 0 (0 = no classifier head), got {num_classes}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_stages = 4
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        dpr = drop_path_rates(drop_path_rate, depths)
        for i in range(self.num_stages):
            patch_embed = OverlapPatchEmbed(
                patch_size=7 if i == 0 else 3,
                stride=4 if i == 0 else 2,
                in_chans=in_chans if i == 0 else embed_dims[i - 1],
                embed_dim=embed_dims[i],
                norm_eps=reduction_norm_eps,
            )
            block = nn.ModuleList(
                Block(
                    dim=embed_dims[i],
                    num_heads=num_heads[i],
                    mlp_ratio=mlp_ratios[i],
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i][j],
                    sr_ratio=sr_ratios[i],
                    norm_layer=norm_layer,
                    reduction_norm_eps=reduction_norm_eps,
                )
                for j in range(depths[i])
            )
            # Attribute names patch_embed{i}/block{i}/norm{i} are the official checkpoint's key prefixes.
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", block)
            setattr(self, f"norm{i + 1}", norm_layer(embed_dims[i]))
        self.head = nn.Linear(embed_dims[3], num_classes) if num_classes > 0 else nn.Identity()
        self.num_features = embed_dims[3]
        self.feature_info = [
            dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"block{i + 1}") for i in range(self.num_stages)
        ]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official init: truncated normal linears, He-normal convs (fan-out per group).
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stage(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i`` (0-based): [B, C_in, H_in, W_in] -> [B, C_i, H_in / s, W_in / s] (s = 4 for i = 0, else 2)."""
        x, H, W = getattr(self, f"patch_embed{i + 1}")(x)
        for blk in getattr(self, f"block{i + 1}"):
            x = blk(x, H, W)
        x = getattr(self, f"norm{i + 1}")(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, H, W)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"PVT-v2 expects images [N, {self.in_chans}, H, W], got shape {list(x.shape)}")

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Feature maps of the selected stages.

        Args:
            x: images [N, in_chans, H, W].
            indices: None for all four stages, an int n for the last n, or a list of 0-based stage indices.

        Returns:
            One map per selected stage, ``[N, feature_info[i]["num_chs"], H / 2**(i+2), W / 2**(i+2)]``
            (strides 4, 8, 16, 32; sizes round up for inputs not divisible by the stride).
        """
        self._check_input(x)
        take = stage_indices(indices, self.num_stages)
        out = []
        for i in range(max(take) + 1):
            x = self._stage(i, x)
            if i in take:
                out.append(x)
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """x: [N, in_chans, H, W] -> last stage map [N, num_features, H/32, W/32]."""
        return self.forward_intermediates(x, indices=[self.num_stages - 1])[0]

    def forward_head(self, x: Tensor) -> Tensor:
        """Last stage map [N, C, h, w] -> logits [N, num_classes] (pooled features [N, C] when num_classes = 0)."""
        return self.head(x.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, in_chans, H, W] -> logits [N, num_classes] (ImageNet classification, as the official model)."""
        return self.forward_head(self.forward_features(x))


def _release(name: str) -> PretrainedSpec:
    return PretrainedSpec(
        filename=f"{name}.pth",
        source=f"the PVT-v2 release (https://github.com/whai362/PVT/releases/download/v2/{name}.pth)",
        num_classes=1000,
        classifier_keys=("head.weight", "head.bias"),
    )


PVT_V2_PRETRAINED = {f"pvt_v2_b{i}": _release(f"pvt_v2_b{i}") for i in range(6)}


# Stochastic depth of every official pvt_v2_b* builder (whai362/PVT, and the copies in AVSBench, AVSegFormer and
# AVS-Mamba); overridden by create_backbone(..., drop_path_rate=...).
PVT_V2_DROP_PATH_RATE = 0.1


def _create(defaults: dict[str, Any], overrides: dict[str, Any]) -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(**dict(dict(defaults, drop_path_rate=PVT_V2_DROP_PATH_RATE), **overrides))


# Variants from the official file; b1-b5 share widths/heads and differ in depth (and b5 in MLP ratio).
def pvt_v2_b0(**kwargs: Any) -> PyramidVisionTransformerV2:
    return _create(dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)), kwargs)


def pvt_v2_b1(**kwargs: Any) -> PyramidVisionTransformerV2:
    return _create(dict(depths=(2, 2, 2, 2)), kwargs)


def pvt_v2_b2(**kwargs: Any) -> PyramidVisionTransformerV2:
    return _create(dict(depths=(3, 4, 6, 3)), kwargs)


def pvt_v2_b3(**kwargs: Any) -> PyramidVisionTransformerV2:
    return _create(dict(depths=(3, 4, 18, 3)), kwargs)


def pvt_v2_b4(**kwargs: Any) -> PyramidVisionTransformerV2:
    return _create(dict(depths=(3, 8, 27, 3)), kwargs)


def pvt_v2_b5(**kwargs: Any) -> PyramidVisionTransformerV2:
    return _create(dict(depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)), kwargs)


def pvt_v2_tiny(**kwargs: Any) -> PyramidVisionTransformerV2:
    """A width- and depth-reduced PVT-v2 for CPU smoke runs (no official checkpoint)."""
    return _create(dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(1, 1, 1, 1)), kwargs)
