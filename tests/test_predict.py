"""``avs-bench predict`` on video files built with PyAV from the synthetic data.

Exactness: the test videos are encoded losslessly (``libx264rgb``, RGB, qp 0), so every decoded frame equals its PNG
byte for byte, and the exactness test gives the clip's own WAV with ``--audio``; evaluation runs with one clip per
batch, as predict does. Predict's masks must then be exactly evaluate's (``--save-masks``). Frames that AVSBench's
sampling rule must skip are decoys (inverted images), so a wrong pick changes the input.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import scipy.io.wavfile
from _engine_helpers import make_data, write_config
from PIL import Image

from avs_mamba.cli import main
from avs_mamba.config import load_config
from avs_mamba.data.video import sample_index
from avs_mamba.engine import train
from avs_mamba.evaluation import clip_folder_name, evaluate_run
from avs_mamba.predict import predict_video

FPS = 25


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained run (3 epochs of 4 steps: masks that are neither empty nor full) and its data root."""
    root = tmp_path_factory.mktemp("predict")
    data = make_data(root / "data", "s4", counts=(8, 2, 2))
    train_section = {"epochs": 3, "batch_size": 2, "lr": 0.02}
    config = load_config(write_config(root / "tiny.yaml", data, train=train_section, eval={"batch_size": 1}))
    train(config, root / "run", tracking=False, progress=False, cost=())
    return root / "run", data


def _test_clips(data: Path) -> list[tuple[str, list[np.ndarray], Path]]:
    """(clip id, its 5 RGB frames, its WAV) for every synthetic S4 test clip, in split order."""
    base = data / "Single-source" / "s4_data"
    rows = [line.split(",") for line in (data / "Single-source" / "s4_meta_data.csv").read_text().splitlines()[1:]]
    clips = []
    for name, _, category, split in rows:
        if split != "test":
            continue
        folder = base / "visual_frames" / "test" / category / name
        frames = [np.asarray(Image.open(folder / f"{name}_{k}.png").convert("RGB")) for k in range(1, 6)]
        clips.append((name, frames, base / "audio_wav" / "test" / category / f"{name}.wav"))
    return clips


def _write_video(
    path: Path, seconds: list[np.ndarray], audio: np.ndarray | None = None, fps: int = FPS, invert: bool = False
) -> None:
    """``seconds[l]`` at AVSBench's sampled frame of second l and its inverse everywhere else (``invert``: the other
    way round); optional AAC audio."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264rgb", rate=fps)
        video.width, video.height = seconds[0].shape[1], seconds[0].shape[0]
        video.pix_fmt, video.options = "rgb24", {"qp": "0"}
        track = out.add_stream("aac", rate=16000, layout="mono") if audio is not None else None
        for i in range(len(seconds) * fps):
            second = i // fps
            image = seconds[second] if (i == sample_index(second, fps)) != invert else 255 - seconds[second]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if track is not None:
            frame = av.AudioFrame.from_ndarray(audio.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            for packet in [*track.encode(frame), *track.encode()]:
                out.mux(packet)


def _read_wav(path: Path) -> np.ndarray:
    return scipy.io.wavfile.read(path)[1].astype(np.float32) / 32768.0


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_predict_equals_evaluate_on_the_same_clip(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    clips = _test_clips(data)
    evaluate_run(run, device="cpu", mask_dir=tmp_path / "eval_masks", out_file=tmp_path / "eval.json")
    foreground, differs = [], []
    for name, frames, wav in clips:
        _write_video(tmp_path / f"{name}.mp4", frames)
        record = predict_video(run, tmp_path / f"{name}.mp4", tmp_path / name, audio=wav)
        assert record["seconds"] == 5 and record["windows"] == [
            {"start_second": 0, "real_frames": 5, "padded_frames": 0}
        ]
        predicted, evaluated = _pngs(tmp_path / name / "masks"), _pngs(tmp_path / "eval_masks" / clip_folder_name(name))
        assert len(predicted) == len(evaluated) == 5
        assert all(np.array_equal(p, e) for p, e in zip(predicted, evaluated, strict=True))
        foreground += [int((m > 0).sum()) for m in predicted]
        # the decoys at the sampled positions instead: other inputs, other masks (the sampling rule matters)
        _write_video(tmp_path / f"{name}_wrong.mp4", frames, invert=True)
        predict_video(run, tmp_path / f"{name}_wrong.mp4", tmp_path / f"{name}_wrong", audio=wav)
        wrong = _pngs(tmp_path / f"{name}_wrong" / "masks")
        differs += [not np.array_equal(w, e) for w, e in zip(wrong, evaluated, strict=True)]
    assert 0 < sum(foreground) < len(foreground) * 32 * 32  # masks neither all empty nor all full
    assert any(differs)


def test_a_twelve_second_video_gives_twelve_masks_and_an_overlay_with_audio(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = trained
    clips = _test_clips(data)
    seconds = [*clips[0][1], *clips[1][1], *clips[0][1][:2]]
    audio = np.concatenate([_read_wav(clips[0][2]), _read_wav(clips[1][2]), _read_wav(clips[0][2])[: 2 * 16000]])
    _write_video(tmp_path / "long.mp4", seconds, audio)
    assert (
        main(["predict", "--run", str(run), "--video", str(tmp_path / "long.mp4"), "--out", str(tmp_path / "o")]) == 0
    )
    record = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert record["seconds"] == 12 and len(_pngs(tmp_path / "o" / "masks")) == 12
    assert [w["padded_frames"] for w in record["windows"]] == [0, 0, 3]
    with av.open(str(tmp_path / "o" / "overlay.mp4")) as back:
        video, sound = back.streams.video[0], back.streams.audio[0]
        frames = sum(1 for _ in back.decode(video))
        assert frames == 12 * FPS and float(video.duration * video.time_base) == pytest.approx(12.0, abs=0.05)
        assert float(sound.duration * sound.time_base) == pytest.approx(12.0, abs=0.1)
        back.seek(0)
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in back.decode(audio=0)])
    assert samples.size == pytest.approx(12 * 16000, abs=2048) and np.abs(samples).max() > 0.01


def test_predict_errors_are_one_line(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, data = trained
    name, frames, wav = _test_clips(data)[0]
    _write_video(tmp_path / "silent.mp4", frames)
    _write_video(tmp_path / "short.mp4", frames[:3], _read_wav(wav)[: 3 * 16000])
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    cases = {
        "silent.mp4": "no audio stream; give the audio as a WAV file with --audio",
        str(wav): "no video stream",
        "junk.mp4": "not a readable media container",
        "short.mp4": "3 whole second(s) of video",
        "missing.mp4": "not found",
    }
    for video, expected in cases.items():
        argv = ["predict", "--run", str(run), "--video", str(tmp_path / video), "--out", str(tmp_path / "x")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("avs-bench: error: ") and expected in err and "\n" not in err
