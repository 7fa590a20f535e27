"""Data provenance: the digest of a dataset, training records it, and `avs-bench evaluate` scores the run's own data
wherever it is started from (or stops with one clear error)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _engine_helpers import make_data, write_config

from avs_mamba.checkpointing import load_checkpoint, save_checkpoint
from avs_mamba.cli import main
from avs_mamba.data.provenance import data_digest, data_provenance


def test_digest_is_listing_and_metadata(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"12345")
    (tmp_path / "meta.csv").write_text("name,split\nv,train\n")
    expected = hashlib.sha256(b"a/x.png\x005\n" + b"meta.csv\x0019\n" + b"name,split\nv,train\n").hexdigest()
    assert data_digest(tmp_path) == (expected, 2)
    (tmp_path / "a" / "x.png").write_bytes(b"12346")  # same size: media content is not read
    assert data_digest(tmp_path)[0] == expected
    (tmp_path / "meta.csv").write_text("name,split\nv,test\n")  # metadata content is
    assert data_digest(tmp_path)[0] != expected


def test_synthetic_data_of_another_config_has_another_digest(tmp_path: Path) -> None:
    one = data_provenance(make_data(tmp_path / "one") / "Single-source", "s4")
    same = data_provenance(make_data(tmp_path / "same") / "Single-source", "s4")
    other = data_provenance(make_data(tmp_path / "other", counts=(2, 2, 2)) / "Single-source", "s4")
    assert one["source"] == "synthetic" and one["root"] == str((tmp_path / "one" / "Single-source").resolve())
    assert one["digest"] == same["digest"] and one["digest"] != other["digest"]


@pytest.fixture()
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A run trained in ``tmp_path/a`` on the relative data root ``data``; then the working directory is
    ``tmp_path/b``, whose ``data`` holds other synthetic data."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_data(a / "data", counts=(2, 1, 3))
    make_data(b / "data", counts=(2, 1, 2))
    monkeypatch.chdir(a)
    config = write_config(a / "tiny.yaml", Path("data"), train={"epochs": 1}, eval={"num_overlays": 0})
    assert main(["train", "--config", str(config), "--out", str(a / "run"), "--no-tracking", "--no-progress"]) == 0
    monkeypatch.chdir(b)
    return a / "run", json.loads((a / "run" / "metrics.json").read_text())


def test_evaluate_from_another_directory_scores_the_runs_own_data(
    trained: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    run, record = trained
    own = (run.parent / "data" / "Single-source").resolve()
    assert record["config"]["data"]["root"] == "data" and record["data"]["root"] == str(own)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
    assert f"data: {own} (synthetic" in capsys.readouterr().out
    result = json.loads((run / "eval_test.json").read_text())
    assert result["data"]["root"] == str(own) and result["data"]["digest"] == record["data"]["digest"]
    assert result["data"]["matches_training"] is True
    assert result["metrics"]["official"]["num_videos"] == 3  # a's test split; b's has 2
    assert result["metrics"]["official"]["miou"] == pytest.approx(record["test"]["official"]["miou"], abs=1e-12)

    # told to score b's data: it does, and says that it is not the training data
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--data-root", "data"]) == 0
    assert "not the data the run was trained on" in capsys.readouterr().out
    result = json.loads((run / "eval_test.json").read_text())
    assert result["data"]["matches_training"] is False and result["metrics"]["official"]["num_videos"] == 2


def test_evaluate_stops_on_changed_or_ambiguous_data(
    trained: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = trained
    make_data(run.parent / "data2", counts=(1, 1, 1))
    own = run.parent / "data" / "Single-source"
    for name in ("s4_meta_data.csv",):
        (own / name).write_text((run.parent / "data2" / "Single-source" / name).read_text())  # changed in place
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avs-bench: error: the data under") and "changed since" in err and "--data-root" in err

    # a run whose checkpoint records no data (written before provenance was recorded) with a relative root
    best = run / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    del ckpt["data"]
    save_checkpoint(best, ckpt)
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "names its data by the relative path 'data'" in err and "ambiguous; pass --data-root" in err
