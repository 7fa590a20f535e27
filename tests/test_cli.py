"""The ``avs-bench`` command line: help, argument errors, one-line library errors, synth + data check, train +
evaluate (in-process through ``main``; the tiny model comes from tests/_engine_helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _engine_helpers import make_data, write_config

from avs_mamba.cli import COST_MEASURES, MEASUREMENTS, main

SUBCOMMANDS = [["synth"], ["data"], ["data", "check"], ["train"], ["evaluate"], ["profile"], ["ui"], ["init-store"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_help_of_every_subcommand(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: avs-bench {' '.join(words)}")


def test_choice_lists_match_the_library() -> None:
    from avs_mamba.engine import COST_MEASURES as ENGINE_COST
    from avs_mamba.profiling import MEASUREMENTS as PROFILE_MEASUREMENTS

    assert MEASUREMENTS == PROFILE_MEASUREMENTS and COST_MEASURES == ENGINE_COST


def test_bad_choice_names_argument_and_allowed_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "x.yaml", "--out", "o", "--size", "huge"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --size: invalid choice: 'huge'" in err and "smoke" in err and "paper" in err
    with pytest.raises(SystemExit):
        main(["synth", "--task", "s5", "--out", "o"])
    assert "argument --task: invalid choice: 's5'" in capsys.readouterr().err


def test_bad_config_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "tiny.yaml", tmp_path)
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "o"), "--set", "train.lrr=0.1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("avs-bench: error: ")
    assert "train.lrr: unknown key; did you mean 'lr'?" in err


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope/config.yaml not found" in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", "--run", str(tmp_path / "nope")])  # --debug: the real exception


def test_synth_then_data_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    args = ["synth", "--task", "ms3", "--out", str(out), "--image-size", "32", "--seed", "4", "--clips", "ms3=2,1,1"]
    assert main(args) == 0
    root = out / "Multi-sources"
    assert capsys.readouterr().out.strip() == f"ms3: {root}"
    assert json.loads((root / "synth_config.json").read_text())["ms3"] == {"train": 2, "val": 1, "test": 1}

    assert main(["data", "check", str(root), "--task", "ms3"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out

    frame = next((root / "ms3_data" / "visual_frames").rglob("*.png"))
    frame.unlink()
    assert main(["data", "check", str(root), "--task", "ms3", "--examples", "1"]) == 1
    report = capsys.readouterr().out
    assert "problem(s)" in report and frame.parent.name in report

    assert main(args) == 2  # exists already, and no --overwrite
    assert "already exists" in capsys.readouterr().err


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", counts=(2, 1, 2))
    config = write_config(tmp_path / "tiny.yaml", tmp_path / "elsewhere", train={"epochs": 1})
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(run), "--no-tracking", "--no-progress"]
    # --data-root and --seed are sugar for --set and win over the file
    assert main([*args, "--data-root", str(data), "--seed", "3", "--set", "eval.num_overlays=0"]) == 0
    record = json.loads((run / "metrics.json").read_text())
    assert record["config"]["data"]["root"] == str(data) and record["run"]["seed"] == 3
    assert record["config"]["eval"]["num_overlays"] == 0 and not (run / "overlays").exists()
    assert "test official: M_J" in capsys.readouterr().out

    assert main(["evaluate", "--run", str(run), "--split", "val", "--protocol", "clean", "--eval-batch-size", "1"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert list(result["metrics"]) == ["clean"] and result["eval"]["batch_size"] == 1
    assert result["split"] == "val" and result["checkpoint_epoch"] == 1  # 1-based, like best_epoch
    assert result["metrics"]["clean"]["miou"] == pytest.approx(record["best_val"]["clean"]["miou"], abs=1e-12)
