"""Checkpoints of the official AVS-Mamba code (``CompFormer``) as this project's ``avs_mamba`` model.

Gong et al., "AVS-Mamba: Exploring Temporal and Multi-modal Mamba for Audio-Visual Segmentation", IEEE TMM 2025.
The official model is ``CompFormer`` (SitongGong/AVS-Mamba@e0489c94:model/compformer_ablation.py) with the modules
it imports (@91c4fc3a:model/cross_scale_temporal_v2.py ``Layer`` (MTE), model/cross_modal_mamba.py
``AudioVisionFusion`` (V2A / A2V), model/mamba_cmfpn_.py ``CrossModalFPN`` (CIP), model/mamba_3d_.py ``Layer``
(the CIP's TMB), @17ec4838:model/backbone/pvt.py (PVT-v2, whai362 names)); its training scripts save
``model.state_dict()``, possibly under DataParallel's ``module.`` prefix.

The key table below is the whole mapping: a rename, plus two reshapes (the official 3-D depthwise convs with a
``(1, k, k)`` kernel become the project's 2-D ones, the causal conv1d weights ``(d, 1, w)`` become ``(d, w)``).
Index arithmetic follows the official module order:

* MAD: ``mamba_decoder.{layer}.{level}.{0: intra-frame, 1: inter-frame}`` -> ``mad.{frame,temporal}_v2a.{layer *
  levels + level}``.
* CIP: ``CrossModalFPN`` registers its convs as ``adapter_{s}`` / ``layer_{s}`` (s = 1..4 for res2..res5) and
  reverses its TMB and A2V lists after building them, so ``self_attns.0`` / ``cross_attns.0`` are res5's. Its forward
  runs res2 with the res3 TMB (``self_attns.2``), so ``self_attns.3`` (res2's own TMB) is dead; the model is built
  with ``cip.res2_shares_res3_tmb = True`` and those keys are dropped by name.

``CompFormer.__init__`` builds each MAD layer's list as the attribute ``self.mamba_decoder_block`` before appending it
to ``mamba_decoder``, so the last layer's modules are registered twice and the state dict repeats
``mamba_decoder.{last}.*`` as ``mamba_decoder_block.*`` (the same tensors); those aliases are dropped by name.

Also dead in the official model, and dropped by name: each MTE layer's ``mixffn.norm`` (a LayerNorm that
``MixFFN.forward`` never calls; ``norm2`` is the one used) and torchvggish's PCA post-processor ``pproc``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from avs_mamba.importers.base import MappedState
from avs_mamba.importers.rules import backbone_architecture, check_signature, check_task_classes

__all__ = ["FORMAT", "AVSMambaOfficial"]

# Keys only an official CompFormer state dict has (checked before anything else is read).
SIGNATURE = ("audio_proj.weight", "cmfpn.mask_features.weight", "fc.4.weight", "mlp.layers.0.weight")
NUM_LEVELS = 3  # MAD levels: res3, res4, res5
SCAN = r"(x_proj_weight|dt_projs_weight|dt_projs_bias|A_logs|Ds)"

Reshape = Callable[[torch.Tensor], torch.Tensor] | None


def _conv3d_to_2d(w: torch.Tensor) -> torch.Tensor:
    """``(d, 1, 1, k, k)`` depthwise Conv3d with a 1-frame kernel -> ``(d, 1, k, k)``."""
    return w.squeeze(2) if w.dim() == 5 else w


def _conv1d_to_2d(w: torch.Tensor) -> torch.Tensor:
    """``(d, 1, w)`` depthwise Conv1d weight -> ``(d, w)`` (the causal-conv1d layout)."""
    return w.squeeze(1) if w.dim() == 3 else w


def _indices(groups: Mapping[str, str | None]) -> dict[str, Any]:
    """The project indices derived from the official ones a rule captured (see the module docstring)."""
    g = dict(groups)
    if g.get("layer") is not None and g.get("level") is not None:
        g["i"] = int(g["layer"]) * NUM_LEVELS + int(g["level"])  # MAD block index
        g["branch"] = "frame_v2a" if g["kind"] == "0" else "temporal_v2a"
    if g.get("fpn_tmb") is not None:
        g["tmb"] = 2 - int(g["fpn_tmb"])  # official 0..2 = res5..res3; project 0..2 = res3..res5
    if g.get("fpn_a2v") is not None:
        g["a2v"] = 3 - int(g["fpn_a2v"])  # official 0..3 = res5..res2; project 0..3 = res2..res5
    if g.get("stage") is not None:
        g["level"] = int(g["stage"]) - 1  # adapter_{s}/layer_{s}, s = 1..4 for res2..res5
    if g.get("ffn") is not None:
        g["seq"] = 2 * int(g["ffn"])  # nn.Sequential(conv, ReLU, conv, ReLU, conv)
    return g


V2A = r"mamba_decoder\.(?P<layer>\d+)\.(?P<level>\d+)\.(?P<kind>[01])\."
MTE = r"mamba_encoder\.(?P<n>\d+)\."
TMB = r"cmfpn\.self_attns\.(?P<fpn_tmb>[0-2])\."
A2V = r"cmfpn\.cross_attns\.(?P<fpn_a2v>[0-3])\."
REST = r"(?P<rest>.+)"
# (official key pattern, project key as a format string of the captured groups and _indices, reshape);
# the first pattern that matches the whole key wins.
RULES: tuple[tuple[str, str, Reshape], ...] = (
    (r"vision_backbone\." + REST, "backbone.{rest}", None),
    (r"audio_backbone\.(?P<rest>(?:features|embeddings)\..+)", "audio_encoder.{rest}", None),
    (r"audio_proj\." + REST, "audio_proj.{rest}", None),
    (r"input_proj\." + REST, "input_proj.{rest}", None),
    # MTE (cross_scale_temporal_v2.Layer): ln_l + VMamba_Block = VSS; norm2 + MixFFN; norm3 + TemporalMambaBlock
    (MTE + r"ln_l\." + REST, "mte.layers.{n}.vss.norm.{rest}", None),
    (MTE + r"mamba_block\.conv2d\." + REST, "mte.layers.{n}.vss.mixer.conv.{rest}", None),
    (MTE + r"mamba_block\.(?P<rest>" + SCAN + ")", "mte.layers.{n}.vss.mixer.scan.{rest}", None),
    (MTE + r"mamba_block\." + REST, "mte.layers.{n}.vss.mixer.{rest}", None),  # in_proj, out_norm, out_proj
    (MTE + r"norm2\." + REST, "mte.layers.{n}.ffn.norm.{rest}", None),
    (MTE + r"mixffn\.(?P<rest>(?:fc1|dwconv|fc2)\..+)", "mte.layers.{n}.ffn.{rest}", None),
    (MTE + r"norm3\." + REST, "mte.layers.{n}.tmb.norm.{rest}", None),
    (MTE + r"temporal_mamba\.conv3d\." + REST, "mte.layers.{n}.tmb.mixer.conv.{rest}", _conv3d_to_2d),
    (MTE + r"temporal_mamba\.(?P<rest>" + SCAN + ")", "mte.layers.{n}.tmb.mixer.scan.{rest}", None),
    (MTE + r"temporal_mamba\." + REST, "mte.layers.{n}.tmb.mixer.{rest}", None),
    # MAD (cross_modal_mamba.AudioVisionFusion over Vision_to_Audio_Fusion): [intra-frame, inter-frame] per level
    (V2A + r"(?P<rest>(?:norm_v|norm_a)\..+)", "mad.{branch}.{i}.{rest}", None),
    (V2A + r"vision_to_audio_layer\.conv2d\." + REST, "mad.{branch}.{i}.conv_vis.{rest}", None),
    (V2A + r"vision_to_audio_layer\.conv1d\." + REST, "mad.{branch}.{i}.conv_audio.{rest}", _conv1d_to_2d),
    (V2A + r"vision_to_audio_layer\.(?P<rest>" + SCAN + ")", "mad.{branch}.{i}.scan.{rest}", None),
    (V2A + r"vision_to_audio_layer\." + REST, "mad.{branch}.{i}.{rest}", None),  # in_proj_*, out_norm, out_proj
    # CIP (mamba_cmfpn_.CrossModalFPN); its TMB is mamba_3d_.Layer (ln_l + Mamba3D)
    (r"cmfpn\.adapter_(?P<stage>[1-4])\.weight", "cip.lateral_convs.{level}.weight", None),
    (r"cmfpn\.layer_(?P<stage>[1-4])\.weight", "cip.output_convs.{level}.weight", None),
    (r"cmfpn\.mask_features\." + REST, "cip.mask_features.{rest}", None),
    (TMB + r"ln_l\." + REST, "cip.tmbs.{tmb}.norm.{rest}", None),
    (TMB + r"mamba_block\.conv3d\." + REST, "cip.tmbs.{tmb}.mixer.conv.{rest}", _conv3d_to_2d),
    (TMB + r"mamba_block\.(?P<rest>" + SCAN + ")", "cip.tmbs.{tmb}.mixer.scan.{rest}", None),
    (TMB + r"mamba_block\." + REST, "cip.tmbs.{tmb}.mixer.{rest}", None),  # in_proj, out_norm, out_proj
    (A2V + r"(?P<rest>(?:norm_v|norm_a)\..+)", "cip.a2vs.{a2v}.{rest}", None),
    (A2V + r"audio_to_vision_layer\.in_proj_vis\." + REST, "cip.a2vs.{a2v}.mixer.in_proj.{rest}", None),
    (A2V + r"audio_to_vision_layer\.conv2d\." + REST, "cip.a2vs.{a2v}.mixer.conv.{rest}", None),
    (A2V + r"audio_to_vision_layer\.(?P<rest>" + SCAN + ")", "cip.a2vs.{a2v}.mixer.scan.{rest}", None),
    (A2V + r"audio_to_vision_layer\.(?P<rest>(?:out_norm|out_proj)\..+)", "cip.a2vs.{a2v}.mixer.{rest}", None),
    (A2V + r"audio_to_vision_layer\.in_proj_audio\." + REST, "cip.a2vs.{a2v}.in_proj_audio.{rest}", None),
    (A2V + r"audio_to_vision_layer\.conv1d\." + REST, "cip.a2vs.{a2v}.conv_audio.{rest}", _conv1d_to_2d),
    # Mask head: FFN(1, 2048, d_model, 3) of 1x1 convs; fc = conv 3x3, Interpolate, conv 3x3, ReLU, conv 1x1
    (r"mlp\.layers\.(?P<ffn>[0-2])\." + REST, "head.ffn.{seq}.{rest}", None),
    (r"fc\.0\." + REST, "head.conv1.{rest}", None),
    (r"fc\.2\." + REST, "head.conv2.{rest}", None),
    (r"fc\.4\.weight", "head.classifier.weight", None),
)
# Official keys without a project counterpart: aliases and parameters the official forward never uses (see the
# module docstring).
DEAD = (
    r"mamba_decoder_block\.[0-9]+\.[01]\..+",
    r"cmfpn\.self_attns\.3\..+",
    r"mamba_encoder\.\d+\.mixffn\.norm\.(weight|bias)",
    r"audio_backbone\.pproc\..+",
)
_RULES = tuple((re.compile(p), fmt, reshape) for p, fmt, reshape in RULES)
_DEAD = tuple(re.compile(p) for p in DEAD)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in state if (m := rx.fullmatch(k))})


class AVSMambaOfficial:
    """The ``avs_mamba_official`` format (see the module docstring)."""

    name = "avs_mamba_official"
    model = "avs_mamba"
    source = "SitongGong/AVS-Mamba@e0489c94"
    external_prefixes: tuple[str, ...] = ()  # the official model holds its VGGish

    def architecture(self, state: Mapping[str, torch.Tensor], task: str) -> dict[str, Any]:
        check_signature(
            state, SIGNATURE, "AVS-Mamba", f"{self.source}, CompFormer",
            {"tpavi_b": "tpavi_official", "head.transformer.": "avsegformer_official"},
        )  # fmt: skip
        if "vision_backbone.conv1.weight" in state:
            raise ValueError("official AVS-Mamba checkpoints with the ResNet-50 backbone are not supported yet")
        backbone = backbone_architecture(self.map_state(state).state, "backbone.", "this AVS-Mamba checkpoint")
        num_classes = int(state["fc.4.weight"].shape[0])
        check_task_classes(num_classes, task, "this AVS-Mamba checkpoint")
        x_proj = state["mamba_encoder.0.mamba_block.x_proj_weight"]  # (K, dt_rank + 2 d_state, d_inner)
        dt_rank = int(state["mamba_encoder.0.mamba_block.dt_projs_weight"].shape[2])
        d_model = int(state["audio_proj.weight"].shape[0])
        return {
            "backbone": backbone,
            "num_classes": num_classes,
            "audio_encoder": "vggish",
            "pretrained": "none",  # every weight comes from the checkpoint
            "audio_pretrained": "none",
            "d_model": d_model,
            "d_state": (int(x_proj.shape[1]) - dt_rank) // 2,
            "dt_rank": dt_rank,
            "expand": int(x_proj.shape[2]) // d_model,
            "head_hidden": int(state["mlp.layers.0.weight"].shape[0]),
            "head_chans": [int(state["fc.0.weight"].shape[0]), int(state["fc.2.weight"].shape[0])],
            "d_conv": int(state["mamba_encoder.0.mamba_block.conv2d.weight"].shape[-1]),
            "conv1d_width": int(state["mamba_decoder.0.0.0.vision_to_audio_layer.conv1d.weight"].shape[-1]),
            "backbone_drop_path_rate": 0.1,  # the official pvt_v2_b5 builder's rate (training only)
            "drop_path_rate": 0.1,  # every official block's rate (training only)
            "mte": {
                "num_layers": _count(state, r"mamba_encoder\.(\d+)\..+"),
                "ffn_ratio": int(state["mamba_encoder.0.mixffn.fc1.weight"].shape[0]) // d_model,
                "tmb": "mamba_encoder.0.temporal_mamba.in_proj.weight" in state,
            },
            "mad": {"num_layers": _count(state, r"mamba_decoder\.(\d+)\..+")},
            # what the official CrossModalFPN runs (see the module docstring)
            "cip": {"res2_shares_res3_tmb": True, "upsample": "nearest"},
            "tmb_kernel": [1, 3, 3],
        }

    def map_state(self, state: Mapping[str, torch.Tensor]) -> MappedState:
        out = MappedState()
        for key, value in state.items():
            if any(rx.fullmatch(key) for rx in _DEAD):
                out.dropped.append(key)
                continue
            for rx, fmt, reshape in _RULES:
                m = rx.fullmatch(key)
                if m is None:
                    continue
                new = fmt.format(**_indices(m.groupdict()))
                out.state[new] = reshape(value) if reshape is not None else value
                break
            else:
                out.unknown.append(key)
        return out


FORMAT = AVSMambaOfficial()
