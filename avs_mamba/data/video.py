"""Video files in and out with PyAV (``av``: FFmpeg inside the wheel, no system FFmpeg): frames sampled as AVSBench
samples them, the audio track as a 16 kHz mono waveform, and an overlay video with the audio kept.

Frame sampling follows AVSBench's preprocessing (OpenNLPLab/AVSBench@f7414af:preprocess_scripts/preprocess_s4.py,
``video_frame_sample`` and ``extract_frame_for_each_video``; MS3 identical): with ``F = round(fps)`` every second
``l`` is sampled at 16 positions ``int(l·F + (i/16)·F)`` and the 16th (i = 15) is kept, i.e. decoded frame
``int(l·F + 15F/16)``, an index past the last frame taking the last frame. A clip has ``N // F`` whole seconds for N
decoded frames (a trailing partial second has no sample). Frames are decoded in presentation order and counted, so
a container's frame count or a variable frame rate do not matter beyond the rounded ``F``.

Errors name the file and what was expected: a missing file, a container FFmpeg cannot read, no video stream, no
audio stream (where audio is needed).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np

from avs_mamba.data.audio import SAMPLE_RATE

__all__ = [
    "SAMPLES_PER_SECOND",
    "KEPT_SAMPLE",
    "VideoClip",
    "sample_index",
    "read_video",
    "read_audio",
    "write_overlay_video",
]

SAMPLES_PER_SECOND = 16  # AVSBench: sample_num
KEPT_SAMPLE = 15  # ... and the sample of each second it saves (k % sample_num == 15)


@dataclasses.dataclass
class VideoClip:
    """One frame per whole second (RGB uint8 ``[H, W, 3]``), the stream's rate and size, and the decoded count."""

    frames: list[np.ndarray]
    fps: float
    frame_rate: Fraction
    num_decoded: int
    width: int
    height: int

    @property
    def seconds(self) -> int:
        return len(self.frames)


def sample_index(second: int, frame_interval: int) -> int:
    """AVSBench's frame of ``second`` for ``frame_interval = round(fps)`` (before clamping to the last frame)."""
    return int(second * frame_interval + (KEPT_SAMPLE * 1.0 / SAMPLES_PER_SECOND) * frame_interval)


def _open(path: Path):  # noqa: ANN202  (av.container.InputContainer; av is imported lazily)
    import av

    if not path.is_file():
        raise FileNotFoundError(f"video file {path} not found")
    try:
        return av.open(str(path))
    except av.FFmpegError as err:
        raise ValueError(f"{path}: not a readable media container ({err})") from None


def read_video(path: str | Path) -> VideoClip:
    """Decode the first video stream of ``path`` and keep AVSBench's frame of every whole second (module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable container, no video stream, or a stream that decodes to no frame.
    """
    import av

    path = Path(path)
    container = _open(path)
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream (expected a video file such as an .mp4)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise ValueError(f"{path}: the video stream has no frame rate")
        interval = max(1, int(round(float(rate))))
        kept: dict[int, np.ndarray] = {}
        last: np.ndarray | None = None
        count = 0
        try:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="rgb24")
                second = count // interval
                if sample_index(second, interval) == count:
                    kept[second] = image
                last, count = image, count + 1
        except av.FFmpegError as err:
            raise ValueError(f"{path}: the video stream cannot be decoded ({err})") from None
    if last is None:
        raise ValueError(f"{path}: the video stream holds no decodable frame")
    seconds = count // interval
    frames = [kept.get(s, last) for s in range(seconds)]
    return VideoClip(frames, float(rate), Fraction(rate), count, int(last.shape[1]), int(last.shape[0]))


def read_audio(path: str | Path) -> np.ndarray:
    """The first audio stream of ``path`` as a float32 mono waveform at 16 kHz (FFmpeg's resampler, channels mixed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable container, or no audio stream.
    """
    import av

    path = Path(path)
    container = _open(path)
    with container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream; give the audio as a WAV file with --audio")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        except av.FFmpegError as err:
            raise ValueError(f"{path}: the audio stream cannot be decoded ({err})") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


def write_overlay_video(
    source: str | Path,
    out: str | Path,
    masks: list[np.ndarray],
    waveform: np.ndarray,
    *,
    colour: tuple[int, int, int] = (255, 0, 0),
    alpha: float = 0.5,
) -> None:
    """Re-decode ``source`` and write it to ``out`` (H.264, the source's frame rate) with ``masks[s]`` (``[H, W]``,
    non-zero = foreground) blended over every frame of second ``s``, and ``waveform`` (16 kHz mono) as an AAC track.

    Frames after the last masked second are written unblended, so the output lasts as long as the source.
    """
    import av

    source, out = Path(source), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tint = np.asarray(colour, dtype=np.float32)
    with _open(source) as container, av.open(str(out), mode="w") as output:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate)
        interval = max(1, int(round(float(rate))))
        video = output.add_stream("libx264", rate=rate)
        video.pix_fmt = "yuv420p"
        audio = output.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if waveform.size else None
        for index, frame in enumerate(container.decode(stream)):
            image = frame.to_ndarray(format="rgb24")
            height, width = image.shape[:2]
            if index == 0:
                video.width, video.height = width + width % 2, height + height % 2  # yuv420p needs even sides
            second = index // interval
            if second < len(masks):
                on = masks[second].astype(bool)[..., None]
                image = np.where(on, (1 - alpha) * image + alpha * tint, image).round().astype(np.uint8)
            padded = np.zeros((video.height, video.width, 3), dtype=np.uint8)
            padded[:height, :width] = image
            out_frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
            out_frame.pts, out_frame.time_base = index, 1 / rate
            for packet in video.encode(out_frame):
                output.mux(packet)
        for packet in video.encode():
            output.mux(packet)
        if audio is not None:
            samples = np.clip(waveform, -1.0, 1.0).astype(np.float32)
            step = 1024 * 16
            for start in range(0, len(samples), step):
                chunk = samples[start : start + step]
                audio_frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
                audio_frame.sample_rate = SAMPLE_RATE
                audio_frame.pts = start
                audio_frame.time_base = Fraction(1, SAMPLE_RATE)
                for packet in audio.encode(audio_frame):
                    output.mux(packet)
            for packet in audio.encode():
                output.mux(packet)
