"""Visual backbones (PVT-v2 b0-b5, ResNet-50) and audio encoders (VGGish, a small log-mel CNN).

:func:`create_backbone` and :func:`create_audio_encoder` are how the rest of the project builds them. Pretrained
weights come only from local files, checked key by key (``checkpoint.py``); random init is the explicit choice
``pretrained="none"``, never a fallback for a missing file.

Every visual backbone offers ``forward_intermediates(x) -> [res2, res3, res4, res5]`` (strides 4, 8, 16, 32),
``forward_features`` and ``feature_info`` (``num_chs``, ``reduction`` per stage), timm's backbone interface.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .audio_cnn import LogMelCNN
from .checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    PretrainedSpec,
    load_checkpoint,
    read_state_dict,
    resolve_pretrained,
)
from .pvt_v2 import (
    PVT_V2_DROP_PATH_RATE,
    PVT_V2_PRETRAINED,
    PyramidVisionTransformerV2,
    pvt_v2_b0,
    pvt_v2_b1,
    pvt_v2_b2,
    pvt_v2_b3,
    pvt_v2_b4,
    pvt_v2_b5,
    pvt_v2_tiny,
)
from .resnet import RESNET_PRETRAINED, ResNet, resnet50, resnet_tiny
from .vggish import VGGISH_PRETRAINED, VGGish

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "LogMelCNN",
    "PretrainedSpec",
    "PyramidVisionTransformerV2",
    "ResNet",
    "VGGish",
    "create_audio_encoder",
    "create_backbone",
    "default_drop_path_rate",
    "list_audio_encoders",
    "list_backbones",
    "load_checkpoint",
    "pretrained_spec",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "pvt_v2_b0": pvt_v2_b0,
    "pvt_v2_b1": pvt_v2_b1,
    "pvt_v2_b2": pvt_v2_b2,
    "pvt_v2_b3": pvt_v2_b3,
    "pvt_v2_b4": pvt_v2_b4,
    "pvt_v2_b5": pvt_v2_b5,
    "pvt_v2_tiny": pvt_v2_tiny,
    "resnet50": resnet50,
    "resnet_tiny": resnet_tiny,
}
_AUDIO_ENCODERS = ("vggish", "logmel_cnn")
_PRETRAINED: dict[str, PretrainedSpec] = {**PVT_V2_PRETRAINED, **RESNET_PRETRAINED, **VGGISH_PRETRAINED}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_BACKBONES)


def list_audio_encoders() -> list[str]:
    """Names accepted by :func:`create_audio_encoder`."""
    return list(_AUDIO_ENCODERS)


def default_drop_path_rate(name: str) -> float | None:
    """The stochastic-depth rate a backbone is built with by default (the official builders' value), or None for a
    backbone without stochastic depth (ResNet)."""
    if name not in _BACKBONES:
        raise ValueError(_unknown(name, list_backbones()))
    return PVT_V2_DROP_PATH_RATE if name.startswith("pvt_v2") else None


def pretrained_spec(name: str) -> PretrainedSpec | None:
    """The official checkpoint (file name, source) of a backbone or audio encoder, or None if it has none."""
    if name not in _BACKBONES and name not in _AUDIO_ENCODERS:
        raise ValueError(_unknown(name, list_backbones() + list_audio_encoders()))
    return _PRETRAINED.get(name)


def _unknown(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown model name '{name}'.{hint} Valid names: {', '.join(choices)}"


def _check_pretrained_arg(pretrained: Any) -> None:
    if not isinstance(pretrained, (str, Path)) or (isinstance(pretrained, str) and not pretrained):
        raise ValueError(f"pretrained must be 'none', 'auto' or a checkpoint path, got {pretrained!r}")


def _fill(model: nn.Module, name: str, path: Path | None, drop: tuple[str, ...]) -> nn.Module:
    """Load ``path`` into ``model`` (None: keep the random init) and attach the report as ``pretrained_report``."""
    report = None
    if path is not None:
        spec = _PRETRAINED.get(name)
        source = spec.describe() if spec is not None else f"a checkpoint of '{name}' saved from this project"
        report = load_checkpoint(model, path, source=source, ignore_keys=drop)
        logger.info(
            "%s: loaded %d tensors from %s; dropped by name: %s; kept from the model: %d",
            name,
            len(report.loaded),
            path,
            report.dropped or "none",
            len(report.kept_from_model),
        )
    model.pretrained_report = report
    return model


def create_backbone(
    name: str,
    pretrained: str | Path = "none",
    pretrained_dir: str | Path = "pretrained",
    num_classes: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """Build a visual backbone, optionally filled from a local checkpoint.

    Args:
        name: one of :func:`list_backbones` (``pvt_v2_b0`` ... ``pvt_v2_b5``, ``resnet50``, and the width-reduced
            ``pvt_v2_tiny``/``resnet_tiny`` for smoke runs, which have no official checkpoint).
        pretrained: ``"none"`` (random init), ``"auto"`` (``pretrained_dir/<official file name>``, e.g.
            ``pvt_v2_b5.pth``) or the path of a checkpoint file.
        pretrained_dir: directory searched by ``"auto"``.
        num_classes: classifier width. 0 (the default) builds the feature extractor without the ImageNet head and
            drops exactly the checkpoint's head keys (``head.*`` / ``fc.*``), listed in ``model.pretrained_report``;
            1000 keeps the head so every checkpoint key is loaded.
        **kwargs: constructor overrides (``drop_path_rate``, ``in_chans``, ...); None values mean "default".

    Returns:
        The backbone; ``model.pretrained_report`` is the :class:`LoadReport`, or None for random init.

    Raises:
        ValueError: unknown name (with close matches), bad ``pretrained`` value, or ``"auto"`` without an official
            checkpoint.
        FileNotFoundError: the checkpoint file is missing; the message names the path and where to get it.
        CheckpointMismatchError: the file's keys or shapes do not match (missing/unexpected listed separately).
    """
    if name not in _BACKBONES:
        raise ValueError(_unknown(name, list_backbones()))
    _check_pretrained_arg(pretrained)
    spec = _PRETRAINED.get(name)
    # Resolve the file before building, so a missing checkpoint fails fast (PVT-v2-b5 takes seconds to build).
    path = resolve_pretrained(name, pretrained, pretrained_dir, spec)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = _BACKBONES[name](num_classes=num_classes, **kwargs)
    drop = spec.keys_to_drop(num_classes) if spec is not None else ()
    return _fill(model, name, path, drop)


def create_audio_encoder(
    name: str,
    pretrained: str | Path = "none",
    pretrained_dir: str | Path = "pretrained",
    out_dim: int | None = None,
    freeze: bool | None = None,
) -> nn.Module:
    """Build an audio encoder mapping log-mel examples [N, 1, 96, 64] to embeddings [N, out_dim].

    Args:
        name: ``"vggish"`` (AudioSet VGGish, 128-d, raw embedding without PCA, frozen by default) or
            ``"logmel_cnn"`` (a small CNN trained with the model, for random-init runs).
        pretrained: ``"none"``, ``"auto"`` (``pretrained_dir/vggish-10086976.pth``) or a checkpoint path.
        pretrained_dir: directory searched by ``"auto"``.
        out_dim: embedding width; VGGish's is fixed at 128, ``logmel_cnn`` defaults to 128.
        freeze: disable gradients of every parameter; default True for VGGish, False for ``logmel_cnn``.

    Returns:
        The encoder, with ``out_dim`` and ``pretrained_report`` attributes.

    Raises:
        ValueError: unknown name, bad ``pretrained``, or an ``out_dim`` VGGish cannot produce.
        FileNotFoundError / CheckpointMismatchError: as for :func:`create_backbone`.
    """
    if name not in _AUDIO_ENCODERS:
        raise ValueError(_unknown(name, list_audio_encoders()))
    _check_pretrained_arg(pretrained)
    path = resolve_pretrained(name, pretrained, pretrained_dir, _PRETRAINED.get(name))
    if name == "vggish":
        if out_dim not in (None, VGGish.out_dim):
            raise ValueError(
                f"VGGish embeddings are {VGGish.out_dim}-d, got out_dim={out_dim}; "
                f"project them in the model (e.g. a Linear) or use 'logmel_cnn'"
            )
        model: nn.Module = VGGish(freeze=False)
        drop = VGGISH_PRETRAINED["vggish"].ignore_keys
        freeze = True if freeze is None else freeze
    else:
        model = LogMelCNN(out_dim=128 if out_dim is None else out_dim)
        drop = ()
        freeze = False if freeze is None else freeze
    _fill(model, name, path, drop)
    # Frozen after loading so the flag applies to the pretrained tensors.
    model.requires_grad_(not freeze)
    return model
