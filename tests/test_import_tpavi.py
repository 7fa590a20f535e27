"""Official TPAVI checkpoints (OpenNLPLab/AVSBench@f7414af) read into the project's ``tpavi``.

Fixtures (``tests/data/official_checkpoints/``), produced once from the official code outside this repository:

* ``tpavi_{pvt_v2_b5,resnet50}_s4.txt``, ``tpavi_pvt_v2_b5_avss.txt``: keys and shapes of the official
  ``Pred_endecoder(channel=256, tpavi_stages=[0,1,2,3], tpavi_va_flag=True)`` of ``avs_scripts/avs_s4`` (MS3's file
  gives the same list) and ``avs_scripts/avss`` (71 classes, bias-free ``align_channel``).
* ``tpavi_small_pvt.pth.xz``: the S4 ``Pred_endecoder(channel=16, vis_dim=[16,32,64,128], tpavi_stages=[0,1,2,3])``
  with the file's hard-coded parts rebuilt from the same classes at small widths: ``encoder_backbone`` the official
  ``PyramidVisionTransformerV2`` with this project's ``pvt_v2_tiny`` settings (embed 16/32/64/128, heads 1/2/4/8,
  MLP ratios 8/8/4/4, depths 1/1/1/1, sr 8/4/2/1), ``output_conv`` 16 -> 16 -> 8 -> 1. Random weights (BatchNorm
  statistics included); ``tpavi_small_pvt_io.pt``: 1 clip x 5 frames of 64x64, the 5 audio embeddings, and the
  official model's logits (float64 run, stored as float32).
* ``tpavi_small_avss_pvt.pth.xz`` / ``_io.pt``: the same from ``avs_scripts/avss`` (bias-free ``align_channel``, frame
  flags) with 3 classes, 1 clip x 10 frames of 32x32 of which the last 3 are padding (zero frames, flags False), and
  the official logits of the model called as ``avs_scripts/avss/test.py`` calls it (embeddings times the flags).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from _engine_helpers import make_data
from _import_helpers import meta_state, read_key_list, run_small, unpack_checkpoint

from avs_mamba import registry
from avs_mamba.backbones import read_state_dict
from avs_mamba.cli import main
from avs_mamba.importers import get_format
from avs_mamba.importers.tpavi_official import FORMAT

KEY_LISTS = {
    # file: (task, backbone, classes, audio bias, number of keys)
    "tpavi_pvt_v2_b5_s4": ("s4", "pvt_v2_b5", 1, True, 1190),
    "tpavi_resnet50_s4": ("s4", "resnet50", 1, True, 630),
    "tpavi_pvt_v2_b5_avss": ("avss", "pvt_v2_b5", 71, False, 1186),
}


def _dead(key: str) -> bool:
    """Official parameters the official forward never uses (worked out from the model files by hand)."""
    return key.startswith(("resnet.layer3_2.", "resnet.layer4_2.", "path4.resConfUnit1."))


class TestKeyLists:
    """Every official key at paper size maps to a project key of the same shape, or is dead and dropped."""

    @pytest.mark.parametrize("name", sorted(KEY_LISTS))
    def test_every_key_mapped_or_dropped(self, name: str) -> None:
        task, backbone, classes, bias, n_keys = KEY_LISTS[name]
        keys = read_key_list(name)
        assert len(keys) == n_keys, f"{name}: the pinned list has {len(keys)} keys, its header says {n_keys}"
        state = meta_state(keys)
        arch = FORMAT.architecture(state, task)
        assert (arch["backbone"], arch["num_classes"], arch["audio_proj_bias"]) == (backbone, classes, bias)
        assert (arch["channels"], arch["tpavi_stages"], arch["head_chans"]) == (256, [0, 1, 2, 3], [128, 32])

        mapped = FORMAT.map_state(state)
        assert mapped.unknown == []
        assert sorted(mapped.dropped) == sorted(k for k in keys if _dead(k))
        # Paper size, random init, no files: VGGish (not in the official checkpoint) without its weights.
        with torch.device("meta"):
            model = registry.create_model(FORMAT.model, **{**arch, "audio_pretrained": "none"})
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        external = {k for k in expected if k.startswith(FORMAT.external_prefixes)}
        assert external and all(k.startswith("audio_encoder.") for k in external)
        assert sorted(mapped.state) == sorted(set(expected) - external), "missing or unexpected project keys"
        mismatched = [k for k, v in mapped.state.items() if list(v.shape) != expected[k]]
        assert mismatched == []
        assert len(mapped.state) + len(mapped.dropped) == n_keys  # one project key per live official key

    def test_resnet_branch_and_dead_unit_counts(self) -> None:
        """B2_ResNet's unused branch is layer3 (6 bottlenecks) + layer4 (3) of ResNet-50: 174 tensors with BN buffers,
        and path4.resConfUnit1 is two convs (4 tensors)."""
        mapped = FORMAT.map_state(meta_state(read_key_list("tpavi_resnet50_s4")))
        assert sum(k.startswith("resnet.layer3_2.") for k in mapped.dropped) == 6 * 3 * 6 + 6  # 3 conv+BN / block
        assert sum(k.startswith("resnet.layer4_2.") for k in mapped.dropped) == 3 * 3 * 6 + 6
        assert sum(k.startswith("path4.resConfUnit1.") for k in mapped.dropped) == 4


class TestOutputEquivalence:
    """The small official checkpoint, loaded through the format, reproduces the official model's output."""

    def test_small_pvt_logits(self, tmp_path) -> None:
        out, io = run_small(FORMAT, "tpavi_small_pvt", "s4", tmp_path)
        ref = io["logits"].double()
        assert out.logits.shape == ref.shape == (1, 5, 1, 64, 64)
        diff = (out.logits - ref).abs().max().item()
        assert diff < 1e-5, f"max abs difference {diff:.3g} to the official output"
        assert ref.std() > 0.1  # a non-degenerate output: the comparison can fail

    def test_small_avss_windows(self, tmp_path) -> None:
        """AVSS: 10 frames in two TPAVI windows of 5, frames 7-9 padded; bias-free audio projection, 3 classes. The
        all-real window and the padded frames match the official output."""
        out, io = run_small(FORMAT, "tpavi_small_avss_pvt", "avss", tmp_path)
        ref = io["logits"].double()
        assert out.logits.shape == ref.shape == (1, 10, 3, 32, 32)
        state, _ = read_state_dict(unpack_checkpoint("tpavi_small_avss_pvt", tmp_path))
        assert FORMAT.architecture(state, "avss")["audio_proj_bias"] is False
        diff = (out.logits - ref).abs().amax(dim=(0, 2, 3, 4))  # per frame
        assert diff[:5].max() < 1e-5 and diff[7:].max() == 0, f"max abs difference per frame {diff.tolist()}"

    def test_small_avss_window_with_padded_frames(self, tmp_path) -> None:
        """Real frames sharing a window with padded ones: the official AVSS scripts zero the padded frames' audio
        embeddings before the model (a model without that step differs there by about 1)."""
        out, io = run_small(FORMAT, "tpavi_small_avss_pvt", "avss", tmp_path)
        diff = (out.logits - io["logits"].double()).abs().amax(dim=(0, 2, 3, 4))
        assert diff.max() < 1e-5, f"max abs difference per frame {diff.tolist()}"

    def test_swapped_stages_change_the_output(self, tmp_path) -> None:
        """Control: the fixture tells TPAVI stages apart (a table sending tpavi_b2 to stage 2 would be caught)."""

        def swap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            other = {"tpavi_b2.": "tpavi_b3.", "tpavi_b3.": "tpavi_b2."}
            return {re.sub(r"^tpavi_b[23]\.", lambda m: other[m.group(0)], k): v for k, v in state.items()}

        out, io = run_small(FORMAT, "tpavi_small_pvt", "s4", tmp_path, edit=swap)
        assert (out.logits - io["logits"].double()).abs().max() > 1e-3


class TestBadInput:
    """Checkpoints that are not TPAVI's, or do not fit the task, give one clear ValueError."""

    def test_registered_under_its_name(self) -> None:
        assert get_format("tpavi_official") is FORMAT
        assert FORMAT.model == "tpavi" and FORMAT.source.startswith("OpenNLPLab/AVSBench@")

    def test_avsegformer_checkpoint(self) -> None:
        state = meta_state(read_key_list("avsegformer_pvt_v2_b5_s4"))
        with pytest.raises(ValueError, match=r"not an official TPAVI checkpoint.*avsegformer_official"):
            FORMAT.architecture(state, "s4")

    def test_avs_mamba_checkpoint(self) -> None:
        with torch.device("meta"):
            state = registry.create_model("avs_mamba").state_dict()
        with pytest.raises(ValueError, match=r"not an official TPAVI checkpoint.*expected keys"):
            FORMAT.architecture(state, "s4")

    @pytest.mark.parametrize("name, task", [("tpavi_pvt_v2_b5_s4", "avss"), ("tpavi_pvt_v2_b5_avss", "ms3")])
    def test_classes_do_not_fit_the_task(self, name: str, task: str) -> None:
        with pytest.raises(ValueError, match=r"this TPAVI checkpoint has \d+ output"):
            FORMAT.architecture(meta_state(read_key_list(name)), task)

    def test_unknown_backbone(self) -> None:
        keys = read_key_list("tpavi_pvt_v2_b5_s4")
        truncated = {k: v for k, v in keys.items() if not k.startswith("encoder_backbone.block3.39.")}  # 39 blocks
        with pytest.raises(ValueError, match=r"matches none of this project's backbones"):
            FORMAT.architecture(meta_state(truncated), "s4")

    def test_extra_head_is_unknown(self) -> None:
        keys = read_key_list("tpavi_pvt_v2_b5_s4")
        extra = {**keys, "output_conv2.weight": [1, 32, 1, 1], "tpavi_b1.W_f.0.weight": [1, 256, 1, 1]}
        mapped = FORMAT.map_state(meta_state(extra))
        assert mapped.unknown == ["output_conv2.weight", "tpavi_b1.W_f.0.weight"]


def test_import_command_writes_a_run_that_evaluate_scores_again(tmp_path: Path) -> None:
    """The small official checkpoint through ``avs-bench import`` (VGGish, which official TPAVI files lack, from the
    model's own weights) and ``avs-bench evaluate``: the run's recorded scores come back, the dead keys are listed."""
    ckpt = unpack_checkpoint("tpavi_small_pvt", tmp_path)
    data = make_data(tmp_path / "data", "s4", (1, 1, 2)) / "Single-source"
    run = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "baselines" / "tpavi.yaml"
    argv = ["import", str(ckpt), "--from", "tpavi_official", "--task", "s4", "--config", str(config)]
    argv += ["--out", str(run), "--data-root", str(data), "--no-tracking", "--set", "data.image_size=32"]
    assert main([*argv, "--set", "model.audio_pretrained=none", "--set", "eval.num_overlays=0"]) == 0
    record = json.loads((run / "metrics.json").read_text())
    assert record["imported"]["format"] == "tpavi_official" and record["test_clips"] == 2
    assert sorted(record["imported"]["dropped"]) == sorted(k for k in read_state_dict(ckpt)[0] if _dead(k))
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())["metrics"]
    for protocol, metrics in record["test"].items():
        assert evaluated[protocol]["fscore"] == pytest.approx(metrics["fscore"], abs=1e-6)
