"""VGGish log-mel front-end: 16 kHz mono WAV -> non-overlapping 0.96 s examples ``[N, 96, 64]``.

Numerically follows the VGGish input pipeline used by AVSBench (tensorflow/models ``research/audioset/vggish``
``mel_features.py`` / ``vggish_input.py`` and the torchvggish port that AVSBench vendors): int16 PCM scaled by
1/32768, channel mean, resampling to 16 kHz, 25 ms periodic-Hann frames every 10 ms (``int(round(...))`` sample
counts: 400 and 160), 512-point FFT magnitude, 64 HTK mel bands 125-7500 Hz with the DC bin zeroed,
``log(mel + 0.01)``, framed into 96-frame examples with hop 96 and no padding. One difference: resampling uses
``scipy.signal.resample_poly`` instead of ``resampy``; 16 kHz input (all AVSBench WAVs) is untouched.

The clip-level tensors the AVSBench loaders read are ``[T, 1, 96, 64]``: S4/MS3 preprocessing repeats the last
example up to 5, the AVSS path zero-pads to 10 (``fit_examples``). Cached ``.pkl`` files hold a pickled float32
torch tensor of that shape (``save_audio_pkl`` / ``read_audio_pkl``).
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import re
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io.wavfile
import torch

__all__ = [
    "SAMPLE_RATE",
    "NUM_MEL_BINS",
    "EXAMPLE_FRAMES",
    "LOG_OFFSET",
    "hertz_to_mel",
    "periodic_hann",
    "mel_matrix",
    "log_mel_spectrogram",
    "load_wav",
    "waveform_to_examples",
    "fit_examples",
    "read_audio_pkl",
    "load_audio_examples",
    "save_audio_pkl",
]

# VGGish parameters (vggish_params.py).
SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96
EXAMPLE_FRAMES = int(round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_SECONDS))  # 96

# HTK mel scale: mel = 1127 ln(1 + f / 700).
_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0

PadMode = Literal["repeat", "zero"]


def hertz_to_mel(frequencies_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel value of each frequency in Hz."""
    return _MEL_HIGH_Q * np.log(1.0 + np.asarray(frequencies_hz, dtype=np.float64) / _MEL_BREAK_HZ)


def periodic_hann(window_length: int) -> np.ndarray:
    """Periodic Hann window (one full period of length ``window_length``; ``np.hanning`` is the symmetric one)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / window_length * np.arange(window_length))


def _frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    """``[num_samples, ...]`` -> ``[num_frames, window_length, ...]`` of complete frames only (no padding)."""
    num_frames = 1 + (data.shape[0] - window_length) // hop_length
    if num_frames <= 0:
        return np.zeros((0, window_length, *data.shape[1:]), dtype=data.dtype)
    return np.lib.stride_tricks.sliding_window_view(data, window_length, axis=0)[::hop_length][:num_frames].swapaxes(
        1, -1
    )


@functools.lru_cache(maxsize=8)
def mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = 257,
    sample_rate: int = SAMPLE_RATE,
    lower_edge_hz: float = MEL_MIN_HZ,
    upper_edge_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """Triangular mel weights ``[num_spectrogram_bins, num_mel_bins]`` (post-multiply a magnitude spectrogram).

    Triangles are linear in mel between ``num_mel_bins + 2`` equally spaced mel edges; the DC bin gets weight 0
    as in HTK. Read-only (cached).
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_edge_hz < upper_edge_hz <= nyquist:
        raise ValueError(
            f"mel band edges must satisfy 0 <= lower ({lower_edge_hz}) < upper ({upper_edge_hz}) <= Nyquist ({nyquist})"
        )
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges_mel = np.linspace(hertz_to_mel(lower_edge_hz), hertz_to_mel(upper_edge_hz), num_mel_bins + 2)
    lower, center, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log mel spectrogram ``[num_frames, 64]`` of a mono waveform (float64), with VGGish's STFT settings."""
    window_length = int(round(sample_rate * STFT_WINDOW_SECONDS))
    hop_length = int(round(sample_rate * STFT_HOP_SECONDS))
    fft_length = 2 ** int(math.ceil(math.log2(window_length)))
    frames = _frame(np.asarray(waveform, dtype=np.float64), window_length, hop_length)
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann(window_length), fft_length))
    mel = magnitude @ mel_matrix(NUM_MEL_BINS, fft_length // 2 + 1, sample_rate, MEL_MIN_HZ, MEL_MAX_HZ)
    return np.log(mel + LOG_OFFSET)


# Float WAV samples beyond this are not clipping overshoot but unscaled integer PCM (int16 full scale is 32768).
_FLOAT_WAV_MAX = 2.0


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as a float32 mono waveform in [-1, 1] and its sample rate.

    Integer PCM is scaled by its full-scale value (int16: 1/32768, as VGGish does); float WAVs are kept, and
    refused when their samples exceed ±2 (unscaled PCM saved as float); channels are averaged.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable WAV (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found (expected a 16 kHz WAV)")
    try:
        sample_rate, data = scipy.io.wavfile.read(path)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"audio file {path} is not a readable WAV file: {err}") from err
    if data.dtype == np.uint8:  # 8-bit PCM is unsigned, centred at 128
        samples = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        samples = data.astype(np.float64) / float(-np.iinfo(data.dtype).min)
    elif np.issubdtype(data.dtype, np.floating):
        samples = data.astype(np.float64)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if not np.isfinite(peak) or peak > _FLOAT_WAV_MAX:
            raise ValueError(
                f"audio file {path} is a float WAV with samples up to {peak:g}; float samples must lie in [-1, 1] "
                "(this looks like integer PCM stored unscaled): divide by 32768, or save it as 16-bit PCM"
            )
    else:
        raise ValueError(f"audio file {path} has unsupported sample type {data.dtype}")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return samples.astype(np.float32), int(sample_rate)


def waveform_to_examples(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Waveform -> VGGish log-mel examples, float32 ``[N, 96, 64]``, N = number of complete 0.96 s examples.

    Args:
        waveform: ``[num_samples]`` mono or ``[num_samples, channels]`` (averaged), nominally in [-1, 1].
        sample_rate: its rate in Hz; other rates than 16 kHz are resampled with ``resample_poly``.
    """
    data = np.asarray(waveform, dtype=np.float64)
    if data.ndim == 2:
        if data.shape[1] > data.shape[0]:
            raise ValueError(f"waveform of shape {data.shape} looks channels-first; expected [num_samples, channels]")
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise ValueError(f"waveform must be [num_samples] or [num_samples, channels], got shape {data.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        import scipy.signal  # ~1 s to import; only non-16 kHz files need it

        data = scipy.signal.resample_poly(data, SAMPLE_RATE // g, int(sample_rate) // g)
    log_mel = log_mel_spectrogram(data, SAMPLE_RATE)
    hop = int(round(EXAMPLE_HOP_SECONDS / STFT_HOP_SECONDS))
    return _frame(log_mel, EXAMPLE_FRAMES, hop).astype(np.float32)


def fit_examples(examples: np.ndarray | torch.Tensor, num_frames: int, pad: PadMode) -> torch.Tensor:
    """Bring ``[N, 96, 64]`` or ``[N, 1, 96, 64]`` examples to exactly ``[num_frames, 1, 96, 64]`` float32.

    Shorter audio is padded the way the official pipelines do: ``"repeat"`` copies the last example (S4/MS3
    preprocessing, target 5), ``"zero"`` appends zero examples (AVSS VGGish ``_preprocess``, target 10).
    Longer audio keeps the first ``num_frames`` examples, so example t stays aligned with second t (the official
    scripts fail on such clips instead). No examples at all (audio under 0.975 s) is an error, never silence.
    """
    if pad not in ("repeat", "zero"):
        raise ValueError(f"pad must be 'repeat' or 'zero', got {pad!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    x = torch.as_tensor(examples).detach().to(torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_MEL_BINS):
        raise ValueError(f"expected log-mel examples [N, 96, 64] or [N, 1, 96, 64], got {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("no complete 0.96 s log-mel example (audio shorter than 0.975 s); cannot fill audio frames")
    if n >= num_frames:
        return x[:num_frames].contiguous()
    if pad == "repeat":
        filler = x[-1:].expand(num_frames - n, -1, -1, -1)
    else:
        filler = x.new_zeros((num_frames - n, *x.shape[1:]))
    return torch.cat([x, filler], dim=0).contiguous()


class _LogMelUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds tensors / arrays, so a cached log-mel file cannot run arbitrary code."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"),
        ("collections", "OrderedDict"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_weights_only
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a log-mel pickle")


def _load_storage_weights_only(data: bytes) -> object:
    return torch.load(io.BytesIO(data), weights_only=True)


def read_audio_pkl(path: str | Path) -> torch.Tensor:
    """Read an AVSBench log-mel ``.pkl`` (a pickled tensor, often with ``requires_grad``) as float32 ``[N,1,96,64]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable pickle, not a tensor/array, or wrong shape (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log-mel file {path} not found")
    try:
        with path.open("rb") as f:
            obj = _LogMelUnpickler(f).load()
    except Exception as err:  # pickle raises many types on corrupt input; all mean "unreadable"
        raise ValueError(f"log-mel file {path} is not a readable pickled tensor: {err}") from err
    if not isinstance(obj, torch.Tensor | np.ndarray):
        raise ValueError(f"log-mel file {path} holds a {type(obj).__name__}, expected a tensor [N, 1, 96, 64]")
    x = torch.as_tensor(obj).detach().to(torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_MEL_BINS):
        raise ValueError(f"log-mel file {path} has shape {tuple(obj.shape)}, expected [N, 1, 96, 64]")
    return x


def load_audio_examples(
    path: str | Path, num_frames: int, pad: PadMode, *, wav_path: str | Path | None = None
) -> torch.Tensor:
    """Clip audio as float32 ``[num_frames, 1, 96, 64]`` from a cached ``.pkl`` or a ``.wav``.

    A ``.pkl`` path that does not exist falls back to ``wav_path`` (or, if not given, the ``.wav`` beside it,
    as in the AVSS layout ``audio.pkl`` / ``audio.wav``); the WAV is then converted with
    ``waveform_to_examples``. The result is brought to ``num_frames`` with ``fit_examples(pad=pad)``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        if path.is_file():
            return fit_examples(read_audio_pkl(path), num_frames, pad)
        fallback = Path(wav_path) if wav_path is not None else path.with_suffix(".wav")
        if not fallback.is_file():
            raise FileNotFoundError(f"neither log-mel file {path} nor audio file {fallback} exists")
        path = fallback
    elif suffix != ".wav":
        raise ValueError(f"audio path {path} must end in .pkl (cached log-mel) or .wav")
    waveform, sample_rate = load_wav(path)
    examples = waveform_to_examples(waveform, sample_rate)
    try:
        return fit_examples(examples, num_frames, pad)
    except ValueError as err:
        raise ValueError(f"audio file {path}: {err}") from err


# A pickled CPU tensor embeds torch's legacy storage serialisation, whose storage key is the storage's memory
# address (``str(storage._cdata)``), so the same tensor pickles to different bytes in each process. The key only
# links the storage record to its data record; replacing it (both occurrences, same length) by zeros changes
# nothing that a loader sees and makes the file byte-stable.
_STORAGE_KEY = re.compile(rb"Storage\nq\x01X(.{4})(\d+)q\x02", re.DOTALL)


def _canonical_tensor_pickle(data: bytes, path: Path) -> bytes:
    """The pickled tensor ``data`` with its memory-address storage key rewritten as zeros."""
    match = _STORAGE_KEY.search(data)
    if match is None:
        raise RuntimeError(f"{path}: unexpected tensor pickle layout (no legacy storage key); cannot make it stable")
    key = b"X" + match.group(1) + match.group(2)
    if data.count(key) != 2:
        raise RuntimeError(f"{path}: storage key found {data.count(key)} times in the pickle, expected 2")
    return data.replace(key, b"X" + match.group(1) + b"0" * len(match.group(2)))


def save_audio_pkl(examples: np.ndarray | torch.Tensor, path: str | Path) -> None:
    """Write examples (``[N, 96, 64]`` or ``[N, 1, 96, 64]``) as the official loaders read them.

    The file is ``pickle.dump`` of a float32 CPU tensor ``[N, 1, 96, 64]`` (the official loaders ``pickle.load``
    it and call ``.detach()``). Parent folders are created; the same examples always give the same bytes.
    """
    x = torch.as_tensor(examples).detach().to(device="cpu", dtype=torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_MEL_BINS):
        raise ValueError(f"expected log-mel examples [N, 96, 64] or [N, 1, 96, 64], got {tuple(x.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_canonical_tensor_pickle(pickle.dumps(x.contiguous().clone()), path))
