"""Checkpoints of the official AVSegFormer (vvvb-github/AVSegFormer), as its ``train.py`` saves them, read into
``avsegformer``.

The official model is ``AVSegFormer`` of vvvb-github/AVSegFormer@7083cb6:model/AVSegFormer.py with ``AVSegHead``
(``model/head/AVSegHead.py``), ``AVSTransformer`` (``model/utils/transformer.py``), ``AttentionGenerator``
(``model/utils/query_generator.py``) and ``CrossModalMixer`` (``model/utils/fusion_block.py``);
``scripts/{s4,ms3,avss}/train.py`` save ``model.module.state_dict()`` (a plain state dict). The released checkpoints
are of this model. The project's model (``baselines/avsegformer.py``) computes what it computes, so the mapping is a
rename, plus splits where the official layout packs several projections into one matrix:

* ``backbone.*`` (PVT-v2-B5, whai362/PVT's names; or ``B2_ResNet`` with ``layer3_1``/``layer4_1`` as
  ``layer3``/``layer4``, its unused second branch ``layer3_2``/``layer4_2`` dropped by name) -> ``backbone.*``;
  ``vggish.*`` (torchvggish names) -> ``audio_encoder.*``; ``audio_proj`` -> ``audio_proj``.
* ``head.in_proj``, ``head.level_embed``, ``head.learnable_query``, ``head.lateral_conv``, ``head.out_conv`` keep
  their names without ``head.``.
* ``head.transformer.encoder.layers.{i}``: ``self_attn`` (MSDeformAttn, same names), ``norm1/2``, ``linear1/2`` ->
  ``encoder.{i}.ffn.fc1/fc2``.
* ``head.transformer.decoder.layers.{i}`` and ``head.query_generator.layers.{i}``: ``nn.MultiheadAttention``'s packed
  ``in_proj_weight`` [3C, C] (and ``in_proj_bias`` [3C]) split into ``q_proj``/``k_proj``/``v_proj`` (PyTorch packs
  them in that order); ``linear1/2`` or ``ffn.0/2`` -> ``ffn.fc1/fc2``.
* ``head.fusion_block``: ``q_proj``, ``kv_proj`` [2C, C] split into k and v (the official ``reshape(B, N, 2, heads,
  d)`` takes k from the first C rows), ``proj`` -> ``mixer.attn.q_proj/k_proj/v_proj/out_proj``.
* ``head.mlp.layers.{0,1,2}`` -> ``head.mlp.{0,2,4}``; ``head.fc.{0,2,4}`` -> ``head.head.conv1/conv2/classifier``.
* ``head.fpn.*`` (``SimpleFPN``) and ``head.attn_fc.*`` are built but never called by ``AVSegHead.forward`` (their only
  caller, ``forward_prediction_head``, is commented out); dropped by name.
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

__all__ = ["AVSegFormerOfficial", "DROP", "FORMAT", "RULES"]

SOURCE = "vvvb-github/AVSegFormer@7083cb6"
_ATTN = r"(self_attn|cross_attn)"


def _qkv(prefix: str) -> tuple[str, str, str]:
    """Targets of a packed ``in_proj_{weight,bias}`` matched as (layer, attention, weight|bias)."""
    return tuple(rf"{prefix}.\1.\2.{p}_proj.\3" for p in "qkv")  # type: ignore[return-value]


RULES: tuple[Rule, ...] = (
    Rule(r"backbone\.((?:patch_embed|block|norm)\d.+)", r"backbone.\1"),  # PVT-v2
    *b2_resnet_rules("backbone", "backbone"),
    Rule(r"vggish\.((?:features|embeddings)\..+)", r"audio_encoder.\1"),
    Rule(r"audio_proj\.(weight|bias)", r"audio_proj.\1"),
    Rule(r"head\.((?:in_proj|lateral_conv|out_conv)\..+)", r"\1"),
    Rule(r"head\.level_embed", r"level_embed"),
    Rule(r"head\.learnable_query\.weight", r"learnable_query.weight"),
    Rule(r"head\.query_generator\.query\.weight", r"query_generator.query.weight"),
    # deformable encoder
    Rule(r"head\.transformer\.encoder\.layers\.(\d+)\.(self_attn\.\w+|norm[12])\.(weight|bias)", r"encoder.\1.\2.\3"),
    Rule(r"head\.transformer\.encoder\.layers\.(\d+)\.linear([12])\.(weight|bias)", r"encoder.\1.ffn.fc\2.\3"),
    # decoder (nn.MultiheadAttention with biases)
    Rule(rf"head\.transformer\.decoder\.layers\.(\d+)\.{_ATTN}\.in_proj_(weight|bias)", _qkv("decoder")),
    Rule(
        rf"head\.transformer\.decoder\.layers\.(\d+)\.({_ATTN}\.out_proj|norm[123])\.(weight|bias)", r"decoder.\1.\2.\4"
    ),
    Rule(r"head\.transformer\.decoder\.layers\.(\d+)\.linear([12])\.(weight|bias)", r"decoder.\1.ffn.fc\2.\3"),
    # query generator (bias-free nn.MultiheadAttention)
    Rule(rf"head\.query_generator\.layers\.(\d+)\.{_ATTN}\.in_proj_(weight)", _qkv("query_generator.layers")),
    Rule(
        rf"head\.query_generator\.layers\.(\d+)\.({_ATTN}\.out_proj|norm[123])\.weight",
        r"query_generator.layers.\1.\2.weight",
    ),
    Rule(r"head\.query_generator\.layers\.(\d+)\.norm([123])\.bias", r"query_generator.layers.\1.norm\2.bias"),
    Rule(r"head\.query_generator\.layers\.(\d+)\.ffn\.0\.(weight|bias)", r"query_generator.layers.\1.ffn.fc1.\2"),
    Rule(r"head\.query_generator\.layers\.(\d+)\.ffn\.2\.(weight|bias)", r"query_generator.layers.\1.ffn.fc2.\2"),
    # cross-modal mixer
    Rule(r"head\.fusion_block\.q_proj\.weight", r"mixer.attn.q_proj.weight"),
    Rule(r"head\.fusion_block\.kv_proj\.weight", (r"mixer.attn.k_proj.weight", r"mixer.attn.v_proj.weight")),
    Rule(r"head\.fusion_block\.proj\.(weight|bias)", r"mixer.attn.out_proj.\1"),
    # query-mask head
    Rule(r"head\.mlp\.layers\.0\.(weight|bias)", r"head.mlp.0.\1"),
    Rule(r"head\.mlp\.layers\.1\.(weight|bias)", r"head.mlp.2.\1"),
    Rule(r"head\.mlp\.layers\.2\.(weight|bias)", r"head.mlp.4.\1"),
    Rule(r"head\.fc\.0\.(weight|bias)", r"head.head.conv1.\1"),
    Rule(r"head\.fc\.2\.(weight|bias)", r"head.head.conv2.\1"),
    Rule(r"head\.fc\.4\.weight", r"head.head.classifier.weight"),
)
DROP: tuple[str, ...] = (r"head\.fpn\..+", r"head\.attn_fc\..+", *b2_resnet_drop("backbone"))
# Keys every official AVSegFormer checkpoint has, whatever the backbone and task.
SIGNATURE = ("head.level_embed", "head.learnable_query.weight", "head.fc.4.weight", "audio_proj.weight")
OFFICIAL_NUM_HEADS = 8  # every attention of the official model: its constructors' default, never set by a config
ENCODER_LEVELS = 3  # AVSegHead(valid_indices=[1, 2, 3])


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


class AVSegFormerOfficial:
    """The official AVSegFormer checkpoint format (see the module docstring)."""

    name = "avsegformer_official"
    model = "avsegformer"
    source = SOURCE
    external_prefixes: tuple[str, ...] = ()  # the official model holds its VGGish (``vggish.*``)

    def _check(self, state: Mapping[str, torch.Tensor]) -> None:
        source = f"{SOURCE}, AVSegFormer with AVSegHead"
        check_signature(state, SIGNATURE, "AVSegFormer", source, {"tpavi_b": "tpavi_official"})

    def architecture(self, state: Mapping[str, torch.Tensor], task: str) -> dict[str, Any]:
        """Backbone (from its keys and shapes), widths, layer counts, queries, classes.

        Raises:
            ValueError: the keys are not an official AVSegFormer checkpoint's, or its classes do not fit ``task``.
        """
        self._check(state)
        what = "this AVSegFormer checkpoint"
        backbone = backbone_architecture(self.map_state(state).state, "backbone.", what)
        levels, d_model = state["head.level_embed"].shape
        if levels != ENCODER_LEVELS:
            raise ValueError(f"{what} has {levels} encoder levels; the official model has {ENCODER_LEVELS}")
        enc = r"head\.transformer\.encoder\.layers\.(\d+)\..+"
        dec = r"head\.transformer\.decoder\.layers\.(\d+)\..+"
        gen = r"head\.query_generator\.layers\.(\d+)\..+"
        n_enc, n_dec, n_gen = _count(state, enc), _count(state, dec), _count(state, gen)
        if not (n_enc and n_dec and n_gen):
            raise ValueError(f"{what} lacks encoder, decoder or query-generator layers ({n_enc}, {n_dec}, {n_gen})")
        ffn = state["head.transformer.encoder.layers.0.linear1.weight"].shape[0]
        dec_ffn = state["head.transformer.decoder.layers.0.linear1.weight"].shape[0]
        if dec_ffn != ffn:
            raise ValueError(
                f"{what} has encoder FFN width {ffn} and decoder FFN width {dec_ffn}; the official "
                "configs give both the same ffn_dim, as this project's model does"
            )
        heads_points = state["head.transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0]
        num_points, rest = divmod(heads_points, OFFICIAL_NUM_HEADS * levels)
        if rest or not num_points:
            raise ValueError(
                f"{what}: deformable attention weights of {heads_points} rows are not "
                f"{OFFICIAL_NUM_HEADS} heads x {levels} levels x points"
            )
        num_classes = state["head.fc.4.weight"].shape[0]
        check_task_classes(num_classes, task, what)
        return {
            "backbone": backbone,
            "pretrained": "none",  # the backbone's weights are in the checkpoint
            "audio_encoder": "vggish",
            "num_classes": num_classes,
            "d_model": d_model,
            "num_queries": state["head.learnable_query.weight"].shape[0],
            "num_heads": OFFICIAL_NUM_HEADS,
            "num_encoder_layers": n_enc,
            "num_decoder_layers": n_dec,
            "num_generator_layers": n_gen,
            "num_points": num_points,
            "ffn_dim": ffn,
            "generator_ffn_dim": state["head.query_generator.layers.0.ffn.0.weight"].shape[0],
            "head_hidden": state["head.mlp.layers.0.weight"].shape[0],
            "head_chans": [state["head.fc.0.weight"].shape[0], state["head.fc.2.weight"].shape[0]],
            "mixer": "head.fusion_block.q_proj.weight" in state,
        }

    def map_state(self, state: Mapping[str, torch.Tensor]) -> MappedState:
        """Rename (and split) by :data:`RULES`; drop :data:`DROP` by name; anything else is ``unknown``."""
        return apply_rules(state, RULES, DROP)


FORMAT = AVSegFormerOfficial()
