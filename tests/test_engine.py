"""Training engine: outputs, best-on-val selection, logits resizing, freezing, max_steps, NaN stop, MLflow records.

Most runs use the tiny registered ``tiny_seg`` model (tests/_engine_helpers.py) on 32 px synthetic S4, so each
training takes a few seconds; one run goes through the real AVS-Mamba at its smallest size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _engine_helpers import make_data, write_config

from avs_mamba import engine
from avs_mamba.checkpointing import (
    CheckpointMismatchError,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from avs_mamba.config import ExperimentConfig, load_config
from avs_mamba.data import build_dataset
from avs_mamba.engine import TrainingDivergedError, train
from avs_mamba.evaluation import dataset_root, seed_everything


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


def _config(tmp_path: Path, data_root: Path, overrides: tuple[str, ...] = (), **sections: dict) -> ExperimentConfig:
    path = write_config(tmp_path / "tiny.yaml", data_root, **sections)
    return load_config(path, overrides)


def test_train_outputs_selection_and_mlflow(tmp_path: Path, data_root: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(tmp_path, data_root, train={"epochs": 3})
    out = tmp_path / "run"
    record = train(config, out, tracking=True, tracking_uri=uri, progress=False)

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["run"] == {
        "name": "tiny",
        "variant": "tiny",
        "model": "tiny_seg",
        "task": "s4",
        "profile": "smoke",
        "seed": 0,
        "config_hash": config.config_hash(),
    }
    for key in ("test", "best_val", "best_epoch", "history", "cost", "wall_time_s", "device", "scan_backend"):
        assert key in on_disk
    assert on_disk["git_commit"] and on_disk["torch_version"] == torch.__version__
    assert on_disk["scan_backend"] == "none" and on_disk["device"] == "cpu"
    assert set(on_disk["test"]) == {"official", "clean"}
    assert on_disk["test"]["official"]["eval_batch_size"] == 2
    assert on_disk["test"]["official"]["num_videos"] == 3  # the whole test split
    # probe subsets of the synthetic split: every clip has a silent distractor, so that subset is the whole split
    assert on_disk["test_clips"] == 3 and on_disk["subset_clips"]["distractor"] == 3
    assert on_disk["test_subsets"]["distractor"]["official"]["miou"] == pytest.approx(
        on_disk["test"]["official"]["miou"]
    )
    assert on_disk["cost"]["params_total"] == sum(p.numel() for p in config.build_model().parameters())
    assert ExperimentConfig.from_yaml(out / "config.yaml") == config

    # best epoch (1-based) = first maximum of val official M_J over the history; best.pt holds that epoch (its
    # loop index is 0-based)
    val = [h["val"]["official"]["miou"] for h in on_disk["history"]]
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2, 3]
    assert len(val) == 3 and on_disk["best_epoch"] == int(np.argmax(val)) + 1
    assert on_disk["best_val"]["official"]["miou"] == max(val)
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] + 1 == on_disk["best_epoch"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2

    png = sorted((out / "overlays").glob("*.png"))
    assert len(png) == 1
    from PIL import Image

    assert Image.open(png[0]).size == (5 * 32, 3 * 32)  # T columns, rows frame | GT | prediction

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("avs-bench-smoke")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "s4/tiny/seed0" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01"
    assert run.data.tags["model"] == "tiny_seg" and run.data.tags["dataset"] == "s4" and run.data.tags["seed"] == "0"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses == pytest.approx([h["train_loss"] for h in on_disk["history"]])
    assert run.data.metrics["test/official/miou"] == pytest.approx(on_disk["test"]["official"]["miou"])
    for subset, by_protocol in on_disk["test_subsets"].items():
        logged = run.data.metrics[f"test_subset/{subset}/clean/fscore"]
        assert logged == pytest.approx(by_protocol["clean"]["fscore"])
    assert len(client.get_metric_history(run.info.run_id, "val/official/miou")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "overlays"} <= artifacts

    # a finished run re-invoked only reports
    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert train(config, out, tracking=True, tracking_uri=uri, progress=False) == on_disk == record
    assert (out / "metrics.json").stat().st_mtime_ns == mtime
    assert len(client.search_runs([exp.experiment_id])) == 1

    # the same job (dataset/name/seed) run again elsewhere: same numbers, and its MLflow run replaces the old one
    again = train(config, tmp_path / "again", tracking=True, tracking_uri=uri, progress=False, cost=())
    assert again["test"] == record["test"] and again["history"][0]["train_loss"] == record["history"][0]["train_loss"]
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] != [run.info.run_id] and len(runs) == 1
    assert again["cost"] is None


def test_rerun_repairs_mlflow_from_a_finished_run_directory(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Final logging fails after metrics.json is written: the rerun logs the directory's record as a FINISHED run."""
    from mlflow import MlflowClient

    from avs_mamba.tracking import RunLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config, out = _config(tmp_path, data_root, train={"epochs": 2}), tmp_path / "run"

    def disk_full(self: RunLogger, paths: object, artifact_path: object = None) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(RunLogger, "log_artifacts", disk_full)
        with pytest.raises(OSError, match="No space left"):
            train(config, out, tracking=True, tracking_uri=uri, progress=False, cost=())
    record = json.loads((out / "metrics.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("avs-bench-smoke")
    [failed] = client.search_runs([exp.experiment_id])
    assert failed.info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(failed.info.run_id)] == ["config.yaml"]

    assert train(config, out, tracking=True, tracking_uri=uri, progress=False, cost=()) == record
    [repaired] = client.search_runs([exp.experiment_id])  # the FAILED run is replaced
    assert repaired.info.status == "FINISHED" and repaired.info.run_name == "s4/tiny/seed0"
    assert {"config.yaml", "metrics.json", "overlays"} <= {a.path for a in client.list_artifacts(repaired.info.run_id)}
    assert repaired.data.metrics["test/official/miou"] == pytest.approx(record["test"]["official"]["miou"])
    losses = sorted(client.get_metric_history(repaired.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.value for m in losses] == pytest.approx([h["train_loss"] for h in record["history"]])
    assert repaired.data.tags["git_commit"] == record["git_commit"]
    train(config, out, tracking=True, tracking_uri=uri, progress=False, cost=())  # complete now: nothing re-logged
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [repaired.info.run_id]


def test_seed_changes_the_run(tmp_path: Path, data_root: Path) -> None:
    config = _config(tmp_path, data_root, train={"epochs": 1})
    first = train(config, tmp_path / "a", tracking=False, progress=False, cost=())
    other = train(
        _config(tmp_path, data_root, train={"epochs": 1, "seed": 1}),
        tmp_path / "b",
        tracking=False,
        progress=False,
        cost=(),
    )
    assert other["history"][0]["train_loss"] != first["history"][0]["train_loss"]


def test_logits_resized_to_masks_and_best_checkpoint_tested(tmp_path: Path, data_root: Path) -> None:
    """Model at 24 px, masks at 32 px: the recorded clean test M_J equals an independent computation."""
    config = _config(tmp_path, data_root, data={"image_size": 24}, train={"epochs": 2})
    record = train(config, tmp_path / "run", tracking=False, progress=False, cost=())

    model = config.build_model()
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"])
    model.eval()
    dataset = build_dataset("s4", dataset_root(config), "test", image_size=24)
    ious = []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            logits = model(item["frames"][None], item["audio"][None]).logits[0, :, 0]  # [T, 24, 24]
            assert item["masks"].shape[-1] == 32
            up = F.interpolate(logits[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
            for pred, gt in zip(up > 0, item["masks"].bool(), strict=True):
                union = (pred | gt).sum().item()
                ious.append(1.0 if union == 0 else (pred & gt).sum().item() / union)
    assert record["test"]["clean"]["miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-12)


def test_backbone_freeze_and_max_steps(tmp_path: Path, data_root: Path) -> None:
    config = _config(tmp_path, data_root, train={"epochs": None, "max_steps": 3, "backbone_freeze_epochs": 1})
    record = train(config, tmp_path / "run", tracking=False, progress=False, cost=())
    assert [h["train_steps"] for h in record["history"]] == [2, 1]  # 2 clips / batch 1; stops at step 3
    assert [h["backbone_trainable"] for h in record["history"]] == [False, True]

    frozen = _config(tmp_path, data_root, train={"epochs": 1, "backbone_freeze_epochs": 1})
    train(frozen, tmp_path / "frozen", tracking=False, progress=False)
    seed_everything(0)
    initial = frozen.build_model().state_dict()
    trained = load_checkpoint(tmp_path / "frozen" / "checkpoints" / "last.pt")["model"]
    assert torch.equal(trained["backbone.weight"], initial["backbone.weight"])  # frozen: untouched by AdamW
    assert not torch.equal(trained["head.weight"], initial["head.weight"])


def test_lr_schedule_is_followed_step_by_step(tmp_path: Path, data_root: Path) -> None:
    """Cosine with one warm-up step over 3 steps at lr 0.1: steps run at 0.1 (warm-up), 0.1 (p = 0), 0.05 (p = 1/2);
    the history records the rate of each epoch's last step."""
    config = _config(
        tmp_path,
        data_root,
        train={"epochs": None, "max_steps": 3, "lr": 0.1, "lr_schedule": "cosine", "warmup_steps": 1},
    )
    record = train(config, tmp_path / "run", tracking=False, progress=False, cost=())
    assert [h["train_steps"] for h in record["history"]] == [2, 1]
    assert [h["lr"] for h in record["history"]] == pytest.approx([0.1, 0.05])


def test_nan_loss_stops_and_keeps_last_checkpoint(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = engine.compute_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == 4:  # epoch 2, step 4 (2 steps per epoch)
            out.total = out.total * math.nan
        return out

    monkeypatch.setattr(engine, "compute_loss", flaky)
    config = _config(tmp_path, data_root, train={"epochs": 3})
    with pytest.raises(TrainingDivergedError, match=r"not finite \(nan\) at epoch 2, step 4.*last good checkpoint"):
        train(config, tmp_path / "run", tracking=False, progress=False, cost=())
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 0
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_changed_config_in_same_directory_is_refused(tmp_path: Path, data_root: Path) -> None:
    train(_config(tmp_path, data_root, train={"epochs": 1}), tmp_path / "run", tracking=False, progress=False)
    (tmp_path / "run" / "metrics.json").unlink()  # pretend it was interrupted after its checkpoint
    changed = _config(tmp_path, data_root, train={"epochs": 1, "lr": 0.02})
    with pytest.raises(CheckpointMismatchError, match=r"train\.lr: 0\.01 -> 0\.02"):
        train(changed, tmp_path / "run", tracking=False, progress=False)


def test_missing_dataset_names_path_and_fix(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere/Single-source/s4_meta_data\.csv.*avs-bench synth --task s4"):
        dataset_root(config)


def test_checkpoint_helpers(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left

    gen = torch.Generator().manual_seed(5)
    seed_everything(11)
    state = rng_state(gen)
    expected = (torch.rand(3), np.random.rand(), __import__("random").random(), torch.rand(2, generator=gen))
    set_rng_state(state, gen)
    again = (torch.rand(3), np.random.rand(), __import__("random").random(), torch.rand(2, generator=gen))
    assert torch.equal(expected[0], again[0]) and expected[1:3] == again[1:3] and torch.equal(expected[3], again[3])


@pytest.mark.slow
def test_avs_mamba_trains_through_the_engine(tmp_path: Path, data_root: Path) -> None:
    """The real model at its smallest: freezing hook, aux loss, scan backend and cost all go through."""
    overrides = (
        f"data.root={data_root}",
        "data.image_size=32",
        "data.max_clips=1",
        "train.epochs=1",
        "train.backbone_freeze_epochs=1",
        "eval.num_overlays=1",
        "model.backbone=pvt_v2_tiny",
        "model.mte.num_layers=1",
        "model.mad.num_layers=1",
        "model.scan.k=2",
    )
    config = load_config(Path(__file__).parents[1] / "ablations" / "full.yaml", overrides, "smoke")
    record = train(config, tmp_path / "run", tracking=False, progress=False, cost=("params", "flops"))
    assert record["scan_backend"] == "cpu"
    assert record["history"][0]["backbone_trainable"] is False
    assert math.isfinite(record["history"][0]["train_loss"])
    assert record["cost"]["error"] is None and record["cost"]["gflops_fvcore"] > 0
    assert 0.0 <= record["test"]["official"]["miou"] <= 1.0


def test_forward_batch_keeps_model_extras_for_the_loss() -> None:
    """Model-specific loss terms (TPAVI's AVM, AVSegFormer's mix loss) read ``AVSOutput.extras``: the engine's
    forward must hand them on, in float32 like the logits."""
    from avs_mamba.evaluation import forward_batch
    from avs_mamba.modules.output import AVSOutput

    class WithExtras(torch.nn.Module):
        def forward(self, frames, audio, frame_flags=None):  # noqa: ANN001, ANN201
            logits = frames.mean(2, keepdim=True).to(torch.float64)
            return AVSOutput(logits=logits, aux=[logits * 2], extras={"mix_map": logits[:, :, :, :2, :2] + 1})

    batch = {"frames": torch.ones(1, 2, 3, 4, 4), "audio": torch.zeros(1, 2, 1, 96, 64), "frame_flags": None}
    out = forward_batch(WithExtras(), batch, torch.device("cpu"), amp=False)
    assert set(out.extras) == {"mix_map"}
    assert out.extras["mix_map"].dtype == torch.float32
    assert torch.equal(out.extras["mix_map"], torch.full((1, 2, 1, 2, 2), 2.0))
    assert torch.equal(out.aux[0], torch.full((1, 2, 1, 4, 4), 2.0))


def test_selection_on_test_and_official_evaluation_epochs(tmp_path: Path, data_root: Path) -> None:
    """eval.selection=test evaluates the test split at the selection epochs (the official AVS-Mamba protocol); the
    epochs are eval_from_epoch + k * eval_every (0-based), plus the last."""
    config = _config(
        tmp_path, data_root, train={"epochs": 4, "eval_every": 2, "eval_from_epoch": 0}, eval={"selection": "test"}
    )
    record = train(config, tmp_path / "run", tracking=False, progress=False, cost=())
    # 0-based epochs 0, 2 and the last (3): the history counts from 1
    assert [p["epoch"] for p in record["history"] if p["val"] is not None] == [1, 3, 4]
    assert {p["val_split"] for p in record["history"]} == {"test"}
    assert record["selection"]["split"] == "test"
    best = record["history"][record["best_epoch"] - 1]["val"]["official"]["miou"]
    assert record["test"]["official"]["miou"] == pytest.approx(best), "the kept checkpoint is the best test epoch"
    card = json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe"]
    assert card["eval.selection"]["value"] == "test"
    assert card["train.lr"]["deviation"].startswith("no recipe card entry"), "tiny_seg has no card entries"
