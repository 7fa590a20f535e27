"""Pieces the official-format tables share: whole-key rename rules, backbone and class checks.

The official TPAVI (OpenNLPLab/AVSBench@f7414af) and AVSegFormer (vvvb-github/AVSegFormer@7083cb6) codes use the same
two visual backbones (whai362/PVT's PVT-v2 and ``B2_ResNet``), so their tables share the backbone rules here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from avs_mamba.backbones import create_backbone, list_backbones
from avs_mamba.importers.base import MappedState

__all__ = [
    "Rule",
    "apply_rules",
    "b2_resnet_drop",
    "b2_resnet_rules",
    "backbone_architecture",
    "check_signature",
    "check_task_classes",
]


@dataclass(frozen=True)
class Rule:
    """One rename: an official key matching ``pattern`` (whole key) becomes ``target`` (``re`` replacement syntax).

    ``target`` as a tuple splits the tensor along dim 0 into that many equal parts, one per name (a packed
    projection such as ``nn.MultiheadAttention``'s ``in_proj_weight`` [3C, C] -> q, k, v [C, C]).
    """

    pattern: str
    target: str | tuple[str, ...]

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


def apply_rules(state: Mapping[str, torch.Tensor], rules: Sequence[Rule], drop: Sequence[str]) -> MappedState:
    """Rename ``state`` by the first rule whose pattern matches each whole key; keys matching a ``drop`` pattern are
    dropped (listed), keys no rule matches are ``unknown``. A split whose tensor does not divide evenly is
    ``unknown`` too."""
    drop_res = [re.compile(p) for p in drop]
    out = MappedState()
    for key, value in state.items():
        if any(d.fullmatch(key) for d in drop_res):
            out.dropped.append(key)
            continue
        rule = next((r for r in rules if r.regex.fullmatch(key)), None)
        if rule is None:
            out.unknown.append(key)
        elif isinstance(rule.target, str):
            out.state[rule.regex.sub(rule.target, key)] = value
        elif value.dim() == 0 or value.shape[0] % len(rule.target):
            out.unknown.append(key)
        else:
            for name, part in zip(rule.target, value.chunk(len(rule.target)), strict=True):
                out.state[rule.regex.sub(name, key)] = part.clone()
    return out


# --------------------------------------------------------------------------------------------------------------
# Backbones shared by the official AVSBench and AVSegFormer codes


# B2_ResNet (OpenNLPLab/AVSBench@f7414af:avs_scripts/avs_s4/model/resnet.py, copied as vvvb-github/AVSegFormer@7083cb6:
# model/backbone/resnet.py): torchvision's ResNet-50 names, with the used branch's stages 3-4 named layer3_1/layer4_1.
def b2_resnet_rules(official: str, project: str) -> tuple[Rule, ...]:
    """Rules renaming a ``B2_ResNet`` under ``official`` to the project's ResNet under ``project``."""
    o, p = re.escape(official), project
    return (
        Rule(rf"{o}\.((?:conv1|bn1|layer1|layer2)\..+)", rf"{p}.\1"),
        Rule(rf"{o}\.layer3_1\.(.+)", rf"{p}.layer3.\1"),
        Rule(rf"{o}\.layer4_1\.(.+)", rf"{p}.layer4.\1"),
    )


def b2_resnet_drop(official: str) -> tuple[str, ...]:
    """The second ``B2_ResNet`` branch (``layer3_2``/``layer4_2``): built, never used by either model's forward."""
    return (rf"{re.escape(official)}\.layer[34]_2\..+",)


@functools.cache
def _backbone_signature(name: str) -> frozenset[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_backbone(name)
    return frozenset((k, tuple(v.shape)) for k, v in model.state_dict().items())


def backbone_architecture(state: Mapping[str, torch.Tensor], prefix: str, what: str) -> str:
    """The project backbone whose keys and shapes are exactly the mapped ``prefix*`` keys of ``state``.

    Raises:
        ValueError: no project backbone matches (the message lists the ones tried).
    """
    found = frozenset((k[len(prefix) :], tuple(v.shape)) for k, v in state.items() if k.startswith(prefix))
    for name in list_backbones():
        if _backbone_signature(name) == found:
            return name
    raise ValueError(
        f"{what}: its visual backbone ({len(found)} tensors) matches none of this project's backbones "
        f"{list_backbones()} key for key and shape; the official codes use PVT-v2-B5 or ResNet-50"
    )


def check_signature(
    state: Mapping[str, torch.Tensor],
    signature: Sequence[str],
    name: str,
    source: str,
    others: Mapping[str, str] = {},
) -> None:
    """Stop unless ``state`` has every key of ``signature``: keys every checkpoint of ``name`` (by ``source``) has.

    ``others`` maps a key prefix typical of another official format to its ``--from`` name, named as a hint.

    Raises:
        ValueError: a signature key is missing; the message names them, the file's first keys and the hint.
    """
    missing = [k for k in signature if k not in state]
    if not missing:
        return
    hint = next(
        (f" It looks like a {fmt} checkpoint: use --from {fmt}." for prefix, fmt in others.items()
         if any(k.startswith(prefix) for k in state)),
        "",
    )  # fmt: skip
    raise ValueError(
        f"not an official {name} checkpoint ({source}): expected keys {list(signature)}, missing {missing}; "
        f"its first keys are {list(state)[:4]}.{hint}"
    )


def check_task_classes(num_classes: int, task: str, what: str) -> None:
    """S4/MS3 checkpoints have one output channel (sigmoid), AVSS ones a class per channel (71 on AVSBench)."""
    if task in ("s4", "ms3") and num_classes != 1:
        raise ValueError(f"{what} has {num_classes} output classes; a {task} checkpoint has 1 (use --task avss)")
    if task == "avss" and num_classes < 2:
        raise ValueError(f"{what} has 1 output channel, a binary s4/ms3 model; an avss checkpoint has 71 classes")
    if task not in ("s4", "ms3", "avss"):
        raise ValueError(f"unknown task {task!r}; expected one of s4, ms3, avss")
