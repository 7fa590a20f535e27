"""What a user sees when the environment or the data is wrong: one ``avs-bench: error:`` line naming the thing, exit
code 2, nothing half-written (in-process through ``main``; the tiny model comes from tests/_engine_helpers.py).

Read-only folders and full disks are simulated by making the write itself fail: the tests may run as root, which
ignores file modes, and cannot count on mounting a small filesystem.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io.wavfile
import torch
from _engine_helpers import make_data, write_config
from PIL import Image

from avs_mamba import checkpointing
from avs_mamba.checkpointing import atomic_write_json
from avs_mamba.cli import main
from avs_mamba.config import load_config
from avs_mamba.data import DatasetError, build_dataset
from avs_mamba.data.audio import load_wav
from avs_mamba.evaluation import dataset_root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), counts=(2, 1, 2))


def train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--out", str(out), "--no-progress", "--cost", "none", *extra]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("avs-bench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cuda_without_a_gpu_is_one_line(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config(tmp_path / "tiny.yaml", data)
    assert main(train_args(config, tmp_path / "run", "--no-tracking", "--device", "cuda")) == 2
    line = error_line(capsys)
    assert "device 'cuda' requested but CUDA is not available" in line and "use --device cpu" in line


def test_read_only_out_fails_before_any_work(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ro" / "run"

    def read_only(*args: object, dir: str | os.PathLike[str] | None = None, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(checkpointing.tempfile, "mkstemp", read_only)
    config = write_config(tmp_path / "tiny.yaml", data)
    assert main(train_args(config, out, "--no-tracking")) == 2
    assert error_line(capsys) == f"avs-bench: error: {out}: Read-only file system (write elsewhere (--out))"
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()


def test_disk_full_names_the_file(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_mkstemp, real_fdopen = checkpointing.tempfile.mkstemp, checkpointing.os.fdopen
    names: dict[int, str] = {}

    class Full:
        """A file whose writes fail as on a full disk: ENOSPC, and no file name in the error."""

        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def fileno(self) -> int:
            return self.f.fileno()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = name
        return fd, name

    def fdopen(fd: int, *args: object, **kwargs: object) -> Any:
        f = real_fdopen(fd, *args, **kwargs)
        return Full(f) if Path(names.get(fd, "")).name.startswith(".best.pt.") else f

    monkeypatch.setattr(checkpointing.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(checkpointing.os, "fdopen", fdopen)
    out = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", data, train={"epochs": 1})
    assert main(train_args(config, out, "--no-tracking")) == 2
    best = out / "checkpoints" / "best.pt"
    assert error_line(capsys) == (
        f"avs-bench: error: {best}: No space left on device (free space, or write elsewhere (--out))"
    )
    assert list(best.parent.iterdir()) == []  # the temporary file is gone too


def test_failed_start_leaves_no_config_and_a_bad_uri_fails_at_once(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "tiny.yaml", data)
    out = tmp_path / "run"
    assert main(train_args(config, out, "--tracking-uri", "foo://x")) == 2
    assert "MLflow tracking URI 'foo://x': unsupported scheme 'foo'" in error_line(capsys)
    assert not (out / "config.yaml").exists()  # evaluate would take a stub config.yaml for a run
    (tmp_path / "afile").write_text("")
    uri = f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"
    assert main(train_args(config, out, "--tracking-uri", uri)) == 2
    assert f"{tmp_path / 'afile'} is a file, so the store's folder" in error_line(capsys)


def test_evaluate_refuses_an_unfinished_run(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", data, train={"epochs": 1}, eval={"num_overlays": 0})
    assert main(train_args(config, run, "--no-tracking")) == 0
    (run / "metrics.json").unlink()  # as if training had stopped after its checkpoint
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 2
    line = error_line(capsys)
    assert f"{run} has not finished training (no metrics.json" in line and "best.pt is from epoch 1" in line
    assert "--allow-unfinished" in line and not (run / "eval_test.json").exists()
    assert main(["evaluate", "--run", str(run), "--allow-unfinished"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert json.loads((run / "eval_test.json").read_text())["run_finished"] is False


def test_corrupt_checkpoint_says_how_to_recover(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"\x00" * 100)  # a torn or foreign file
    config = write_config(tmp_path / "tiny.yaml", data)
    assert main(train_args(config, out, "--no-tracking")) == 2
    line = error_line(capsys)
    assert f"checkpoint {out / 'checkpoints' / 'last.pt'} could not be read" in line
    assert "delete it and rerun the same `avs-bench train` command" in line


def test_bad_test_file_stops_the_run_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_data(tmp_path / "data", counts=(2, 1, 2))
    masks = sorted((data / "Single-source" / "s4_data" / "gt_masks" / "test").rglob("*_3.png"))
    masks[0].write_bytes(b"not a png")
    config = write_config(tmp_path / "tiny.yaml", data)
    out = tmp_path / "run"
    assert main(train_args(config, out, "--no-tracking")) == 2
    line = error_line(capsys)
    assert line.startswith(f"avs-bench: error: {masks[0]}: ground-truth mask is not a readable image")
    assert "1 problem(s) in the clips this run reads, found before training" in line
    assert "avs-bench data check" in line and not (out / "checkpoints").exists()
    # the same file is what `data check` reports, in the same words
    assert main(["data", "check", str(data / "Single-source"), "--task", "s4"]) == 1
    assert f"{masks[0]}: ground-truth mask is not a readable image" in capsys.readouterr().out


def test_split_typo_in_the_csv_is_an_error(tmp_path: Path) -> None:
    root = make_data(tmp_path / "data", counts=(2, 1, 1)) / "Single-source"
    csv = root / "s4_meta_data.csv"
    lines = csv.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if ",train" in line)
    lines[row] = lines[row].replace(",train", ",trian")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"1 row\(s\) have a split outside .* line {row + 1} with split 'trian'"):
        build_dataset("s4", root, "train")


@pytest.mark.parametrize(
    ("mode", "pixels", "message"),
    [
        ("L", [0, 128, 255], r"3 grey levels \(0, 128, 255\)"),
        ("L", [100, 255], r"2 grey levels \(100, 255\)"),
        ("RGB", [(0, 0, 0), (255, 0, 0)], r"colour \(RGB\) image"),
    ],
)
def test_grey_or_colour_masks_are_errors(tmp_path: Path, mode: str, pixels: list, message: str) -> None:
    root = make_data(tmp_path / "data", counts=(1, 1, 1)) / "Single-source"
    [mask] = sorted((root / "s4_data" / "gt_masks" / "train").rglob("*_1.png"))
    size = Image.open(mask).size
    image = Image.new(mode, size)
    image.putdata([pixels[i % len(pixels)] for i in range(size[0] * size[1])])
    image.save(mask)
    dataset = build_dataset("s4", root, "train", image_size=32)
    with pytest.raises(DatasetError, match=message) as err:
        dataset[0]
    assert err.value.path == mask and err.value.kind == "bad_mask"
    # 0/255 stored as grey RGB is the binary mask it looks like
    grey = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    grey[:4] = 255
    Image.fromarray(grey).save(mask)
    assert dataset[0]["masks"][0].sum().item() == 4 * size[0]


def test_unscaled_float_wav_is_an_error(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    path = tmp_path / "a.wav"
    scipy.io.wavfile.write(path, 16000, (np.sin(2 * np.pi * 440 * t) * 32767).astype(np.float32))
    with pytest.raises(ValueError, match=r"float WAV with samples up to 32767.*divide by 32768"):
        load_wav(path)
    scipy.io.wavfile.write(path, 16000, (np.sin(2 * np.pi * 440 * t) * 0.5).astype(np.float32))
    assert np.abs(load_wav(path)[0]).max() == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_missing_data_hint_does_not_nest_the_task_folder(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "tiny.yaml", tmp_path / "data" / "Single-source"))
    with pytest.raises(FileNotFoundError, match=rf"avs-bench synth --task s4 --out {tmp_path / 'data'}`"):
        dataset_root(config)
