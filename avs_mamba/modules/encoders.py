"""The encoder options and model shell every segmentation model shares (AVS-Mamba, its variants, the baselines).

A model subclasses :class:`AVSModel` with a config that subclasses :class:`EncoderOptions`: the shell builds the
visual backbone and the audio encoder from those options and gives the engine its hooks (freeze/unfreeze the visual
backbone, keep VGGish frozen, count parameters per component), so every model is trained and profiled the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from avs_mamba.backbones import create_audio_encoder, create_backbone, default_drop_path_rate, list_backbones

__all__ = ["AVSModel", "EncoderOptions"]


class EncoderOptions(BaseModel):
    """Options of the encoders and the output; defaults are the paper setting (PVT-v2-B5, VGGish)."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(1, ge=1)  # 1: S4/MS3 (sigmoid), 71: AVSS (softmax)
    backbone: str = "pvt_v2_b5"  # any shared backbone: pvt_v2_b0..b5, resnet50, pvt_v2_tiny, resnet_tiny
    # Stochastic depth of the visual backbone (timm's `drop_path_rate`: the last block's rate, linear from 0 over
    # the blocks). None resolves to the backbone's official rate: 0.1 for PVT-v2 (its builders in whai362/PVT@5a6b890
    # and in the AVSBench, AVSegFormer and AVS-Mamba codes), 0 for ResNet-50, which has none.
    backbone_drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0)
    audio_encoder: Literal["vggish", "logmel_cnn"] = "vggish"
    pretrained: str = "none"  # visual backbone: "none", "auto" (pretrained_dir/<official file>) or a file path
    # VGGish weights: None follows `pretrained` ("auto" unless it is "none"); the log-mel CNN is always random-init.
    audio_pretrained: str | None = None
    pretrained_dir: str = "pretrained"

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in list_backbones():
            raise ValueError(f"unknown backbone {value!r}; expected one of {list_backbones()}")
        return value

    @model_validator(mode="after")
    def _resolve_backbone_drop_path(self) -> Self:
        default = default_drop_path_rate(self.backbone)
        if self.backbone_drop_path_rate is None:
            self.backbone_drop_path_rate = default or 0.0  # written into the resolved config, so runs record it
        elif self.backbone_drop_path_rate and default is None:
            raise ValueError(
                f"backbone_drop_path_rate={self.backbone_drop_path_rate}: backbone {self.backbone!r} has no stochastic "
                "depth; leave backbone_drop_path_rate unset (null) or 0"
            )
        return self

    @property
    def resolved_audio_pretrained(self) -> str:
        """The audio encoder's weights: the log-mel CNN has no checkpoint; VGGish follows ``pretrained`` if unset."""
        if self.audio_encoder == "logmel_cnn":
            return "none"
        if self.audio_pretrained is None:
            return "none" if self.pretrained == "none" else "auto"
        return self.audio_pretrained


class AVSModel(nn.Module):
    """Shell of every model: ``self.backbone`` (4 maps, strides 4..32), ``self.audio_encoder`` ([N,1,96,64] -> [N,D]),
    and the engine hooks. Subclasses build their own parts after ``super().__init__(config)``."""

    # Optional components an ablation can switch off (left None): they still get a row, with 0 parameters.
    COMPONENTS: tuple[str, ...] = ()

    def __init__(self, config: EncoderOptions) -> None:
        super().__init__()
        self.config = config
        has_drop_path = default_drop_path_rate(config.backbone) is not None
        self.backbone = create_backbone(
            config.backbone,
            pretrained=config.pretrained,
            pretrained_dir=config.pretrained_dir,
            drop_path_rate=config.backbone_drop_path_rate if has_drop_path else None,
        )
        self.feature_chans = [info["num_chs"] for info in self.backbone.feature_info]  # strides 4, 8, 16, 32
        self.stem_stride = self.backbone.feature_info[0]["reduction"]
        self.audio_encoder = create_audio_encoder(
            config.audio_encoder, pretrained=config.resolved_audio_pretrained, pretrained_dir=config.pretrained_dir
        )
        self.audio_dim = self.audio_encoder.out_dim

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the visual backbone (the engine freezes them for the recipe's first epochs)."""
        return self.backbone.parameters()

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Switch gradients of the visual backbone on or off (VGGish stays frozen either way)."""
        self.backbone.requires_grad_(trainable)

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if self.config.audio_encoder == "vggish":
            self.audio_encoder.eval()  # frozen feature extractor
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per top-level component (every child module; ``other`` for parameters held by the model
        itself, such as level embeddings). Components switched off by an ablation count 0."""
        counts = {name: sum(p.numel() for p in child.parameters()) for name, child in self.named_children()}
        counts.update({name: 0 for name in self.COMPONENTS if name not in counts})
        counts["other"] = sum(p.numel() for p in self.parameters(recurse=False))
        return counts
