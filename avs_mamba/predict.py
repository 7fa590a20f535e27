"""``avs-bench predict``: segment the sounding objects of any video with a trained run.

The video is cut the way AVSBench cut its clips: one frame per second (:mod:`avs_mamba.data.video`, AVSBench's
sampling rule) and consecutive windows of T seconds, T = the run's ``data.num_frames`` (5 for S4/MS3, 10 for AVSS).
Each window's audio is its own T seconds of the 16 kHz waveform through the VGGish front-end, padded the task's way
(:func:`avs_mamba.data.audio.fit_examples`), exactly as a T-second AVSBench clip's WAV is read. Frames go through the
evaluation transforms (:func:`~avs_mamba.data.transforms.resize_geometry`, ``normalize_frames``). The last window, when
shorter, is padded with zero frames marked ``frame_flags = False`` (as AVSS pads its 5-s clips) and recorded as padded
in ``predict.json``; masks are written for real seconds only. The model, its checkpoint and its forward pass are the
evaluation's (:func:`avs_mamba.evaluation.load_run`, :func:`~avs_mamba.evaluation.forward_batch`), logits are resized
to the video's frame size and binarised by :func:`avs_mamba.masks.hard_masks`, so a clip gives the masks
``avs-bench evaluate --save-masks`` gives for it.

Outputs in ``OUT``: ``masks/{0001..}.png`` (one per second), ``overlay.mp4`` (the video with the masks blended in and
the audio track kept, as 16 kHz mono AAC), ``predict.json`` (run, checkpoint, sampling, windows).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from avs_mamba.checkpointing import atomic_write_json, load_model_state
from avs_mamba.data.audio import SAMPLE_RATE, fit_examples, load_wav, waveform_to_examples
from avs_mamba.data.avsbench import NUM_CLASSES, NUM_FRAMES, AVSSDataset, MS3Dataset, S4Dataset
from avs_mamba.data.transforms import apply_to_image, normalize_frames, resize_geometry
from avs_mamba.data.video import read_audio, read_video, write_overlay_video
from avs_mamba.evaluation import forward_batch, load_run, resize_logits
from avs_mamba.masks import hard_masks, mask_file_name, save_mask

__all__ = ["predict_video"]

_AUDIO_PAD = {"s4": S4Dataset.audio_pad, "ms3": MS3Dataset.audio_pad, "avss": AVSSDataset.audio_pad}


def _window_audio(
    waveform: np.ndarray, start: int, seconds: int, num_frames: int, pad: str, where: Path
) -> torch.Tensor:
    chunk = waveform[start * SAMPLE_RATE : (start + seconds) * SAMPLE_RATE]
    try:
        return fit_examples(waveform_to_examples(chunk, SAMPLE_RATE), num_frames, pad)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"{where}: audio of seconds {start}-{start + seconds}: {err}") from None


@torch.no_grad()
def predict_video(
    run_dir: str | Path,
    video: str | Path,
    out_dir: str | Path,
    *,
    audio: str | Path | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
) -> dict[str, Any]:
    """Masks for every whole second of ``video`` (module docstring); returns the ``predict.json`` record.

    Args:
        audio: a WAV file to use instead of the video's audio track (any rate; resampled to 16 kHz).

    Raises:
        FileNotFoundError: the run, checkpoint, video or WAV is missing.
        ValueError: unreadable container, no video stream, no audio stream without ``audio``, or a clip shorter than
            one window.
    """
    video, out = Path(video), Path(out_dir)
    config, ckpt_path, ckpt = load_run(run_dir, checkpoint)
    task = config.data.task
    T = int(config.data.num_frames or NUM_FRAMES[task])
    clip = read_video(video)
    if audio is not None:
        samples, rate = load_wav(audio)
        waveform = _to_16k(samples, rate)
        audio_source = str(audio)
    else:
        waveform, audio_source = read_audio(video), f"{video} (audio track)"
    if clip.seconds < T:
        raise ValueError(
            f"{video}: {clip.seconds} whole second(s) of video ({clip.num_decoded} frames at {clip.fps:g} fps), "
            f"shorter than one {T}-second window of the model"
        )
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = config.build_model().to(dev)
    load_model_state(model, ckpt["model"], ckpt_path)
    model.eval()

    geometry = resize_geometry(clip.width, clip.height, config.data.image_size)
    pad = _AUDIO_PAD[task]
    masks: list[np.ndarray] = []
    windows = []
    for w in range(math.ceil(clip.seconds / T)):
        start = w * T
        real = min(T, clip.seconds - start)
        images = [apply_to_image(Image.fromarray(f), geometry) for f in clip.frames[start : start + real]]
        frames = torch.zeros((T, 3, config.data.image_size, config.data.image_size))
        frames[:real] = normalize_frames(images)
        flags = torch.zeros(T, dtype=torch.bool)
        flags[:real] = True
        batch = {
            "frames": frames.unsqueeze(0).to(dev),
            "audio": _window_audio(waveform, start, real, T, pad, video).unsqueeze(0).to(dev),
            "frame_flags": flags.unsqueeze(0).to(dev),
        }
        logits = resize_logits(forward_batch(model, batch, dev, amp=False).logits, (clip.height, clip.width))
        hard = hard_masks(logits)[0].cpu()
        for t in range(real):
            save_mask(out / "masks" / mask_file_name(start + t), hard[t], NUM_CLASSES[task])
            masks.append(hard[t].numpy())
        windows.append({"start_second": start, "real_frames": real, "padded_frames": T - real})
    write_overlay_video(video, out / "overlay.mp4", masks, waveform)
    record = {
        "run": str(run_dir),
        "name": config.name,
        "task": task,
        "checkpoint": str(ckpt_path),
        "video": str(video),
        "audio": audio_source,
        "fps": clip.fps,
        "decoded_frames": clip.num_decoded,
        "seconds": clip.seconds,
        "window_frames": T,
        "sampling": "one frame per second: decoded frame int(l*F + 15F/16), F = round(fps) (AVSBench preprocessing)",
        "windows": windows,
        "masks": [f"masks/{mask_file_name(i)}" for i in range(len(masks))],
        "overlay": "overlay.mp4",
    }
    atomic_write_json(out / "predict.json", record)
    return record


def _to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """A WAV's samples as a 16 kHz mono waveform: untouched at 16 kHz (as the datasets read AVSBench WAVs), else
    resampled with the front-end's polyphase resampler."""
    if rate == SAMPLE_RATE:
        return samples
    import scipy.signal

    g = math.gcd(int(rate), SAMPLE_RATE)
    return scipy.signal.resample_poly(samples.astype(np.float64), SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
