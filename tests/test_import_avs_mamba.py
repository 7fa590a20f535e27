"""``avs-bench import --from avs_mamba_official``: the key table, the run directory it writes, and bad inputs.

The official-format state dicts here are written from a small project model by an inverse table spelled out in
this file from the official module names (SitongGong/AVS-Mamba@e0489c94:model/compformer_ablation.py and the
@91c4fc3a modules), independently of the importer's table, plus the official parameters the importer must drop.


Official fixtures (``tests/data/official_checkpoints/``), produced once from the official code outside this repository
(SitongGong/AVS-Mamba@e0489c94:model/compformer_ablation.py, modules @91c4fc3a, with mamba-ssm's and causal-conv1d's
reference maths and a parameter-free stand-in for VGGish, whose source is not published):

* ``avs_mamba_pvt_v2_b5_s4.txt``: keys and shapes of ``CompFormer(d_model=256, audio_dim=128, num_frame=5,
  num_classes=1, scale_factor=4, use_vision_backbone='PVTv2', scan_order=8)`` with every module switch on (as the
  official training commands set it); the VGGish keys are absent (stand-in).
* ``avs_mamba_small_pvt.pth.xz``: the same ``CompFormer`` at ``d_model=32`` with the file's hard-coded parts rebuilt
  from the same classes at small widths: the official ``PyramidVisionTransformerV2`` with this project's ``pvt_v2_tiny``
  settings, ``input_proj`` from its channels 16/32/64/128, ``d_state=4`` in every SSM block (a constructor argument of
  each), ``FFN(1, 16, 32, 3)`` and ``fc`` 32 -> 8 -> 4 -> 1. Random weights rounded to powers of two;
  ``avs_mamba_small_pvt_io.pt``: 1 clip x 5 frames of 48x48, the 5 audio embeddings, and the official model's two
  outputs (``logits`` from the last MAD layer's queries, ``aux_logits`` from the first), from a float64 run (the
  official ``.float()`` casts before each scan widened to float64), stored as float32.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_helpers import make_data
from _import_helpers import meta_state, read_key_list, run_small

from avs_mamba.cli import main
from avs_mamba.importers import get_format
from avs_mamba.registry import create_model

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(backbone="pvt_v2_tiny", d_model=32, d_state=4, dt_rank=2, head_hidden=16, head_chans=(8, 4))
SCAN = r"(x_proj_weight|dt_projs_weight|dt_projs_bias|A_logs|Ds)"


def _official_key(key: str) -> str:
    """Project key -> the official CompFormer key (the inverse of the importer's table, written separately)."""
    subs: list[tuple[str, object]] = [
        (r"backbone\.(.+)", r"vision_backbone.\1"),
        (r"audio_encoder\.(.+)", r"audio_backbone.\1"),
        (r"mte\.layers\.(\d+)\.vss\.norm\.(.+)", r"mamba_encoder.\1.ln_l.\2"),
        (r"mte\.layers\.(\d+)\.vss\.mixer\.conv\.(.+)", r"mamba_encoder.\1.mamba_block.conv2d.\2"),
        (r"mte\.layers\.(\d+)\.vss\.mixer\.scan\.(.+)", r"mamba_encoder.\1.mamba_block.\2"),
        (r"mte\.layers\.(\d+)\.vss\.mixer\.(.+)", r"mamba_encoder.\1.mamba_block.\2"),
        (r"mte\.layers\.(\d+)\.ffn\.norm\.(.+)", r"mamba_encoder.\1.norm2.\2"),
        (r"mte\.layers\.(\d+)\.ffn\.(.+)", r"mamba_encoder.\1.mixffn.\2"),
        (r"mte\.layers\.(\d+)\.tmb\.norm\.(.+)", r"mamba_encoder.\1.norm3.\2"),
        (r"mte\.layers\.(\d+)\.tmb\.mixer\.conv\.(.+)", r"mamba_encoder.\1.temporal_mamba.conv3d.\2"),
        (r"mte\.layers\.(\d+)\.tmb\.mixer\.scan\.(.+)", r"mamba_encoder.\1.temporal_mamba.\2"),
        (r"mte\.layers\.(\d+)\.tmb\.mixer\.(.+)", r"mamba_encoder.\1.temporal_mamba.\2"),
        (
            r"mad\.(frame|temporal)_v2a\.(\d+)\.(.+)",
            lambda m: "mamba_decoder.{}.{}.{}.{}".format(
                int(m[2]) // 3, int(m[2]) % 3, 0 if m[1] == "frame" else 1, _v2a_rest(m[3])
            ),
        ),
        (r"cip\.lateral_convs\.(\d)\.weight", lambda m: f"cmfpn.adapter_{int(m[1]) + 1}.weight"),
        (r"cip\.output_convs\.(\d)\.weight", lambda m: f"cmfpn.layer_{int(m[1]) + 1}.weight"),
        (r"cip\.mask_features\.(.+)", r"cmfpn.mask_features.\1"),
        (r"cip\.tmbs\.(\d)\.norm\.(.+)", lambda m: f"cmfpn.self_attns.{2 - int(m[1])}.ln_l.{m[2]}"),
        (
            r"cip\.tmbs\.(\d)\.mixer\.conv\.(.+)",
            lambda m: f"cmfpn.self_attns.{2 - int(m[1])}.mamba_block.conv3d.{m[2]}",
        ),
        (r"cip\.tmbs\.(\d)\.mixer\.scan\.(.+)", lambda m: f"cmfpn.self_attns.{2 - int(m[1])}.mamba_block.{m[2]}"),
        (r"cip\.tmbs\.(\d)\.mixer\.(.+)", lambda m: f"cmfpn.self_attns.{2 - int(m[1])}.mamba_block.{m[2]}"),
        (r"cip\.a2vs\.(\d)\.(norm_v|norm_a)\.(.+)", lambda m: f"cmfpn.cross_attns.{3 - int(m[1])}.{m[2]}.{m[3]}"),
        (r"cip\.a2vs\.(\d)\.(.+)", lambda m: f"cmfpn.cross_attns.{3 - int(m[1])}.audio_to_vision_layer.{_a2v(m[2])}"),
        (r"head\.ffn\.(\d)\.(.+)", lambda m: f"mlp.layers.{int(m[1]) // 2}.{m[2]}"),
        (r"head\.conv1\.(.+)", r"fc.0.\1"),
        (r"head\.conv2\.(.+)", r"fc.2.\1"),
        (r"head\.classifier\.(.+)", r"fc.4.\1"),
    ]
    for pattern, repl in subs:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)  # type: ignore[operator]
    return key  # audio_proj, input_proj: same names


def _v2a_rest(rest: str) -> str:
    if rest.startswith(("norm_v.", "norm_a.")):
        return rest
    rest = rest.replace("conv_vis.", "conv2d.").replace("conv_audio.", "conv1d.").replace("scan.", "")
    return "vision_to_audio_layer." + rest


def _a2v(rest: str) -> str:
    table = {"mixer.in_proj.": "in_proj_vis.", "mixer.conv.": "conv2d.", "mixer.scan.": "", "mixer.": ""}
    table |= {"conv_audio.": "conv1d.", "in_proj_audio.": "in_proj_audio."}
    for prefix, official in table.items():
        if rest.startswith(prefix):
            return official + rest[len(prefix) :]
    raise AssertionError(rest)


def official_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official-format state dict of ``model`` (official shapes), plus the official keys it carries that the
    importer must drop (dead parameters, aliases)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        name = _official_key(key)
        if name.endswith("conv3d.weight"):
            value = value.unsqueeze(2)  # Conv3d with a (1, k, k) kernel
        if name.endswith("conv1d.weight"):
            value = value.unsqueeze(1)  # Conv1d weight (d, 1, w)
        out[name] = value.clone()
    dead = {k.replace("self_attns.2.", "self_attns.3."): v.clone() for k, v in out.items() if "self_attns.2." in k}
    # CompFormer registers its last MAD layer twice, also as ``mamba_decoder_block``
    dead |= {
        "mamba_decoder_block." + k[len("mamba_decoder.1.") :]: v
        for k, v in out.items()
        if k.startswith("mamba_decoder.1.")
    }
    d = model.config.d_model
    for n in range(2):
        dead[f"mamba_encoder.{n}.mixffn.norm.weight"] = torch.ones(d)
        dead[f"mamba_encoder.{n}.mixffn.norm.bias"] = torch.zeros(d)
    out.update(dead)
    return out, sorted(dead)


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("avs_mamba", pretrained="none", audio_pretrained="none", **SMALL).eval()
    with torch.no_grad():  # non-default values everywhere, so a swapped key cannot go unnoticed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


class TestKeyTable:
    def test_every_official_key_maps_to_the_project_key_and_shape(self, small_model: torch.nn.Module) -> None:
        """The table renames the official state to exactly the model's state; the dead keys are dropped."""
        state, dead = official_state(small_model)
        mapped = get_format("avs_mamba_official").map_state(state)
        assert mapped.unknown == []
        assert sorted(mapped.dropped) == dead
        own = small_model.state_dict()
        assert sorted(mapped.state) == sorted(own)
        for key, value in own.items():
            assert torch.equal(mapped.state[key], value), key

    def test_architecture_read_from_the_keys(self, small_model: torch.nn.Module) -> None:
        state, _ = official_state(small_model)
        arch = get_format("avs_mamba_official").architecture(state, "s4")
        assert arch["backbone"] == "pvt_v2_tiny"
        assert (arch["d_model"], arch["d_state"], arch["dt_rank"], arch["expand"]) == (32, 4, 2, 2)
        assert (arch["num_classes"], arch["head_hidden"], arch["head_chans"]) == (1, 16, [8, 4])
        assert arch["cip"] == {"res2_shares_res3_tmb": True, "upsample": "nearest"}
        assert arch["mte"] == {"num_layers": 2, "ffn_ratio": 4, "tmb": True} and arch["mad"] == {"num_layers": 2}
        with pytest.raises(ValueError, match="71"):
            get_format("avs_mamba_official").architecture(state, "avss")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, small_model: torch.nn.Module) -> dict[str, Any]:
    """Data, an official checkpoint (DataParallel prefix, under 'model') and the run imported from it."""
    tmp = tmp_path_factory.mktemp("import")
    data = make_data(tmp / "data", "s4", (1, 1, 2)) / "Single-source"
    state, _ = official_state(small_model)
    ckpt = tmp / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, ckpt)
    run = tmp / "run"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = ["import", str(ckpt), "--from", "avs_mamba_official", "--task", "s4", "--config"]
    argv += [str(REPO / "ablations/full.yaml"), "--out", str(run), "--data-root", str(data), "--tracking-uri", uri]
    argv += ["--set", "data.image_size=32", "--set", "eval.num_overlays=1"]
    assert main(argv) == 0
    return {"tmp": tmp, "ckpt": ckpt, "run": run, "data": data, "uri": uri}


class TestImportedRun:
    def test_run_directory_like_a_trained_run(self, imported: dict[str, Any], small_model: torch.nn.Module) -> None:
        run = imported["run"]
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()
        record = json.loads((run / "metrics.json").read_text())
        assert record["status"] == "finished" and record["history"] == [] and record["best_epoch"] is None
        assert sorted(record["test"]) == sorted(record["eval"]["protocols"]) and record["test_clips"] == 2
        digest = hashlib.sha256(imported["ckpt"].read_bytes()).hexdigest()
        assert record["imported"]["provenance"] == f"imported from {imported['ckpt'].resolve()} (sha256 {digest})"
        assert len(record["imported"]["dropped"]) == len(official_state(small_model)[1])
        best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        for key, value in small_model.state_dict().items():
            assert torch.equal(best["model"][key], value), key

    def test_evaluate_reproduces_the_import_scores(self, imported: dict[str, Any]) -> None:
        run = imported["run"]
        assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
        evaluated = json.loads((run / "eval_test.json").read_text())["metrics"]
        recorded = json.loads((run / "metrics.json").read_text())["test"]
        for protocol, metrics in recorded.items():
            assert evaluated[protocol]["miou"] == pytest.approx(metrics["miou"], abs=1e-6)

    def test_profile_takes_its_config(self, imported: dict[str, Any]) -> None:
        run, out = imported["run"], imported["tmp"] / "profile.json"
        assert main(["profile", "--config", str(run / "config.yaml"), "--measure", "params", "--out", str(out)]) == 0
        recorded = json.loads((run / "metrics.json").read_text())["cost"]
        assert json.loads(out.read_text())["params_total"] == recorded["params_total"]

    def test_tables_and_mlflow_take_it(self, imported: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        from avs_mamba.report import load_runs

        frame = load_runs([imported["run"]])
        assert list(frame["model"]) == ["avs_mamba"]
        client = MlflowClient(imported["uri"])
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        tagged = [r for r in runs if r.data.tags.get("imported_from", "").startswith("imported from ")]
        assert len(tagged) == 1 and "test/official/miou" in tagged[0].data.metrics


class TestBadInputs:
    def _run(self, imported: dict[str, Any], ckpt: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        capsys.readouterr()
        argv = ["import", str(ckpt), "--from", "avs_mamba_official", "--task", "s4", "--no-tracking", "--config"]
        argv += [str(REPO / "ablations/full.yaml"), "--out", str(imported["tmp"] / "bad"), "--data-root"]
        code = main([*argv, str(imported["data"]), "--set", "data.image_size=32"])
        return code, capsys.readouterr().err

    def test_truncated_file(self, imported: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        bad = imported["tmp"] / "truncated.pth"
        bad.write_bytes(imported["ckpt"].read_bytes()[:4096])
        code, err = self._run(imported, bad, capsys)
        assert code == 2 and err.count("\n") == 1 and str(bad) in err and "SitongGong/AVS-Mamba" in err

    def test_checkpoint_of_another_model(self, imported: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        bad = imported["tmp"] / "other.pth"
        torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(2, 3, 3, 3)}}, bad)
        code, err = self._run(imported, bad, capsys)
        assert code == 2 and err.count("\n") == 1 and str(bad) in err and "not an official AVS-Mamba" in err

    def test_extra_head(self, imported: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        state = torch.load(imported["ckpt"], weights_only=True)["model"]
        state["module.aux_fc.weight"] = torch.zeros(1, 4, 1, 1)
        bad = imported["tmp"] / "extra.pth"
        torch.save(state, bad)
        code, err = self._run(imported, bad, capsys)
        assert code == 2 and err.count("\n") == 1 and str(bad) in err and "unknown keys (1): aux_fc.weight" in err


OFFICIAL_KEYS = "avs_mamba_pvt_v2_b5_s4"


def _dropped_by_the_official_model(key: str) -> bool:
    """Official keys without a project counterpart (worked out from the official files by hand): the aliases of the
    last MAD layer (``self.mamba_decoder_block``), res2's own CIP TMB (the forward runs res3's) and ``MixFFN.norm``."""
    return key.startswith(("mamba_decoder_block.", "cmfpn.self_attns.3.")) or bool(
        re.fullmatch(r"mamba_encoder\.\d\.mixffn\.norm\.(weight|bias)", key)
    )


class TestOfficialKeyList:
    """The official state dict at paper size maps key by key, shape by shape, onto the project model."""

    def test_every_key_mapped_or_dropped(self) -> None:
        fmt = get_format("avs_mamba_official")
        keys = read_key_list(OFFICIAL_KEYS)
        assert len(keys) == 1611
        state = meta_state(keys)
        arch = fmt.architecture(state, "s4")
        assert (arch["backbone"], arch["num_classes"], arch["d_model"], arch["d_state"]) == ("pvt_v2_b5", 1, 256, 16)
        assert (arch["dt_rank"], arch["expand"], arch["head_hidden"], arch["head_chans"]) == (16, 2, 2048, [128, 32])
        assert arch["mte"] == {"num_layers": 2, "ffn_ratio": 4, "tmb": True} and arch["mad"] == {"num_layers": 2}

        mapped = fmt.map_state(state)
        assert mapped.unknown == []
        assert sorted(mapped.dropped) == sorted(k for k in keys if _dropped_by_the_official_model(k))
        with torch.device("meta"):
            model = create_model(fmt.model, **{**arch, "audio_pretrained": "none"})
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        # the pinned list has no VGGish (a stand-in without parameters replaced it); all else must match
        audio = {k for k in expected if k.startswith("audio_encoder.")}
        assert sorted(mapped.state) == sorted(set(expected) - audio), "missing or unexpected project keys"
        assert [k for k, v in mapped.state.items() if list(v.shape) != expected[k]] == []
        assert len(mapped.state) + len(mapped.dropped) == len(keys)

    def test_dropped_counts(self) -> None:
        """3 levels x 2 V2A blocks x 18 tensors of aliases, one Mamba3D layer (13 tensors), 2 MixFFN norms (4)."""
        dropped = get_format("avs_mamba_official").map_state(meta_state(read_key_list(OFFICIAL_KEYS))).dropped
        assert sum(k.startswith("mamba_decoder_block.") for k in dropped) == 3 * 2 * 18
        assert sum(k.startswith("cmfpn.self_attns.3.") for k in dropped) == 13
        assert len(dropped) == 108 + 13 + 4

    def test_aliases_repeat_the_last_decoder_layer(self) -> None:
        keys = read_key_list(OFFICIAL_KEYS)
        aliases = [k for k in keys if k.startswith("mamba_decoder_block.")]
        assert aliases and all(keys["mamba_decoder.1." + k.split(".", 1)[1]] == keys[k] for k in aliases)


class TestOfficialOutput:
    """The small official checkpoint, read through the format, gives the official model's outputs."""

    def test_small_pvt_logits(self, tmp_path: Path) -> None:
        out, io = run_small(get_format("avs_mamba_official"), "avs_mamba_small_pvt", "s4", tmp_path)
        ref, aux = io["logits"].double(), io["aux_logits"].double()
        assert out.logits.shape == ref.shape == (1, 5, 1, 48, 48) and len(out.aux) == 1
        diff = (out.logits - ref).abs().max().item()
        assert diff < 1e-5, f"max abs difference {diff:.3g} to the official output"
        aux_diff = (out.aux[0] - aux).abs().max().item()
        assert aux_diff < 1e-5, f"max abs difference {aux_diff:.3g} to the official first-layer output"
        assert ref.std() > 0.5 and (ref - aux).abs().max() > 1  # non-degenerate, the two outputs differ

    def test_res2_own_tmb_is_dead(self, tmp_path: Path) -> None:
        """Changing ``cmfpn.self_attns.3`` (dropped) leaves the output as it is: the official forward never uses it."""

        def bump(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v + 0.5 if k.startswith("cmfpn.self_attns.3.") else v for k, v in state.items()}

        out, io = run_small(get_format("avs_mamba_official"), "avs_mamba_small_pvt", "s4", tmp_path, edit=bump)
        assert (out.logits - io["logits"].double()).abs().max() < 1e-5

    def test_swapped_cip_levels_change_the_output(self, tmp_path: Path) -> None:
        """Control: the fixture tells the CIP's A2V levels apart (a table reading them in the wrong order is caught)."""

        def swap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            other = {"cmfpn.cross_attns.0.": "cmfpn.cross_attns.1.", "cmfpn.cross_attns.1.": "cmfpn.cross_attns.0."}
            return {re.sub(r"^cmfpn\.cross_attns\.[01]\.", lambda m: other[m[0]], k): v for k, v in state.items()}

        out, io = run_small(get_format("avs_mamba_official"), "avs_mamba_small_pvt", "s4", tmp_path, edit=swap)
        assert (out.logits - io["logits"].double()).abs().max() > 1e-3
