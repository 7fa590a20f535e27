"""Checkpoints of the official TPAVI (OpenNLPLab/AVSBench), as its ``train.py`` saves them, read into ``tpavi``.

The official model is ``Pred_endecoder`` of OpenNLPLab/AVSBench@f7414af:avs_scripts/{avs_s4,avs_ms3,avss}/model/
{PVT,ResNet}_AVSModel.py with ``TPAVIModule`` of ``.../model/TPAVI.py``; ``train.py`` saves
``model.module.state_dict()`` (a plain state dict; a ``module.`` prefix, when present, is stripped before this
table). The project's model (``baselines/tpavi.py``) computes what it computes, so the mapping is a rename:

* ``encoder_backbone.*`` (PVT-v2-B5, ``model/pvt.py``, whai362/PVT's names) -> ``backbone.*``;
  ``resnet.*`` (``B2_ResNet`` of ``model/resnet.py``) -> ``backbone.*`` with ``layer3_1``/``layer4_1`` as
  ``layer3``/``layer4``. Its second branch ``layer3_2``/``layer4_2`` is built but never called by the model's forward
  and is dropped by name.
* ``conv{1..4}.conv2d_list.{j}`` (the ASPP-like ``Classifier_Module`` necks) -> ``necks.{0..3}.convs.{j}``.
* ``tpavi_b{1..4}.*`` -> ``tpavi.{0..3}.*`` (``norm_layer`` -> ``norm``).
* ``path{1..4}.resConfUnit1/2`` -> ``paths.{0..3}.skip_unit/out_unit``; ``path4.resConfUnit1`` is built but never
  called (``path4`` gets one input) and is dropped by name.
* ``output_conv.{0,2,4}`` -> ``head.conv1/conv2/classifier``.

VGGish is not part of the official model: ``train.py`` builds it apart (``audio_extractor``) from
``vggish-10086976.pth``, so the checkpoint holds no audio-encoder keys; :data:`EXTERNAL_PREFIXES` names the project
keys it leaves to that file.

The rename rules and backbone checks are :mod:`avs_mamba.importers.rules`, shared with the AVSegFormer format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from avs_mamba.importers.base import MappedState
from avs_mamba.importers.rules import (
    Rule,
    apply_rules,
    b2_resnet_drop,
    b2_resnet_rules,
    backbone_architecture,
    check_signature,
    check_task_classes,
)

__all__ = ["EXTERNAL_PREFIXES", "FORMAT", "TPAVIOfficial"]

SOURCE = "OpenNLPLab/AVSBench@f7414af"


# --------------------------------------------------------------------------------------------------------------
# The TPAVI table


RULES: tuple[Rule, ...] = (
    Rule(r"encoder_backbone\.(.+)", r"backbone.\1"),
    *b2_resnet_rules("resnet", "backbone"),
    *(Rule(rf"conv{i + 1}\.conv2d_list\.(\d+)\.(weight|bias)", rf"necks.{i}.convs.\1.\2") for i in range(4)),
    *(Rule(rf"tpavi_b{i + 1}\.norm_layer\.(weight|bias)", rf"tpavi.{i}.norm.\1") for i in range(4)),
    *(Rule(rf"tpavi_b{i + 1}\.(align_channel|theta|phi|g|W_z\.[01])\.(.+)", rf"tpavi.{i}.\1.\2") for i in range(4)),
    *(Rule(rf"path{i + 1}\.resConfUnit1\.(conv[12]\.(?:weight|bias))", rf"paths.{i}.skip_unit.\1") for i in range(3)),
    *(Rule(rf"path{i + 1}\.resConfUnit2\.(conv[12]\.(?:weight|bias))", rf"paths.{i}.out_unit.\1") for i in range(4)),
    Rule(r"output_conv\.0\.(weight|bias)", r"head.conv1.\1"),
    Rule(r"output_conv\.2\.(weight|bias)", r"head.conv2.\1"),
    Rule(r"output_conv\.4\.(weight|bias)", r"head.classifier.\1"),
)
DROP: tuple[str, ...] = (*b2_resnet_drop("resnet"), r"path4\.resConfUnit1\..+")
# Project keys an official TPAVI checkpoint never holds: VGGish, loaded by the official train.py from its own file.
EXTERNAL_PREFIXES: tuple[str, ...] = ("audio_encoder.",)
# Keys every official TPAVI checkpoint has, whatever the backbone and task.
SIGNATURE = ("conv1.conv2d_list.0.weight", "path1.resConfUnit2.conv1.weight", "output_conv.4.weight")
OFFICIAL_DILATIONS = (3, 6, 12, 18)  # Classifier_Module([3, 6, 12, 18], ...) in every official model file


class TPAVIOfficial:
    """The official TPAVI checkpoint format (see the module docstring)."""

    name = "tpavi_official"
    model = "tpavi"
    source = SOURCE
    external_prefixes = EXTERNAL_PREFIXES

    def _check(self, state: Mapping[str, torch.Tensor]) -> None:
        check_signature(
            state, SIGNATURE, "TPAVI", f"{SOURCE}, Pred_endecoder", {"head.transformer.": "avsegformer_official"}
        )

    def architecture(self, state: Mapping[str, torch.Tensor], task: str) -> dict[str, Any]:
        """Backbone (from the backbone's keys and shapes), widths, TPAVI stages, audio bias, classes.

        Raises:
            ValueError: the keys are not an official TPAVI checkpoint's, or its classes do not fit ``task``.
        """
        self._check(state)
        what = "this TPAVI checkpoint"
        mapped = self.map_state(state).state
        backbone = backbone_architecture(mapped, "backbone.", what)
        n_dil = sum(1 for k in state if re.fullmatch(r"conv1\.conv2d_list\.\d+\.weight", k))
        if n_dil != len(OFFICIAL_DILATIONS):
            raise ValueError(f"{what} has {n_dil} neck convs per stage; the official model has 4 (dilations 3/6/12/18)")
        stages = sorted(int(m.group(1)) - 1 for k in state if (m := re.fullmatch(r"tpavi_b(\d)\.theta\.weight", k)))
        channels = state["conv1.conv2d_list.0.weight"].shape[0]
        num_classes = state["output_conv.4.weight"].shape[0]
        check_task_classes(num_classes, task, what)
        arch: dict[str, Any] = {
            "backbone": backbone,
            "pretrained": "none",  # the backbone's weights are in the checkpoint
            "audio_encoder": "vggish",
            "audio_pretrained": "auto",  # VGGish is not in the checkpoint: its own file, as the official train.py
            "num_classes": num_classes,
            "channels": channels,
            "dilations": list(OFFICIAL_DILATIONS),
            "tpavi_stages": stages,
            "window": 5,  # every official model groups frames by 5 (pre_reshape_for_tpavi)
            "head_chans": [state["output_conv.0.weight"].shape[0], state["output_conv.2.weight"].shape[0]],
        }
        if stages:
            s = stages[0] + 1
            inter = state[f"tpavi_b{s}.theta.weight"].shape[0]
            arch["inter_channels"] = None if inter == max(channels // 2, 1) else inter
            # S4/MS3 TPAVI.py: Linear(128, C); AVSS TPAVI.py: Linear(128, C, bias=False).
            arch["audio_proj_bias"] = f"tpavi_b{s}.align_channel.bias" in state
        return arch

    def map_state(self, state: Mapping[str, torch.Tensor]) -> MappedState:
        """Rename by :data:`RULES`; drop :data:`DROP` by name; anything else is ``unknown``."""
        return apply_rules(state, RULES, DROP)


FORMAT = TPAVIOfficial()
