"""Crash-safe files: atomic writes, training checkpoints and the RNG states that make a resumed run exact.

Every file a run produces is written to a temporary file in the same directory, flushed and fsynced, then moved
over the target with ``os.replace`` (atomic on POSIX), so a kill at any instant leaves either the old file or the
new one, never a torn one. Checkpoints hold only tensors and plain containers and load with
``torch.load(weights_only=True)``: the NumPy RNG key array is stored as a tensor for that reason.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avs_mamba.backbones.checkpoint import CheckpointMismatchError

__all__ = [
    "CheckpointMismatchError",
    "atomic_write_bytes",
    "ensure_writable_dir",
    "atomic_write_text",
    "atomic_write_json",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "rng_state",
    "set_rng_state",
]


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (``mkstemp`` alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    The file gets the umask's mode like any new file. An ``OSError`` (disk full, read-only or unwritable folder)
    names ``path`` itself, not the temporary file.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    # Persist the rename itself (the directory entry); not every filesystem allows opening a directory.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (with parents) and prove a file can be written in it, so a read-only or full destination
    fails before any work instead of at the first checkpoint. ``OSError`` names the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror or os.strerror(err.errno), str(err.filename or path)) from err
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline; NaN is written as ``NaN`` (Python's json convention)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` ``state`` atomically; the whole file is serialised in memory first."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointMismatchError: the file is not a readable run checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if path.name == "last.pt":
            hint = "delete it and rerun the same `avs-bench train` command: the run starts over from epoch 1"
        elif path.name == "best.pt" and path.parent.name == "checkpoints":
            hint = f"delete the run directory {path.parent.parent} and rerun its `avs-bench train` command"
        else:
            hint = "pass a checkpoint written by `avs-bench train`"
        raise CheckpointMismatchError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {first}); the file is damaged or not a "
            f"checkpoint of this suite: {hint}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointMismatchError(f"checkpoint {path} is not a run checkpoint (no 'model' entry)")
    return state


def load_model_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Strictly load ``state`` into ``model``; missing and unexpected keys are listed separately on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {source} does not match the model built from the run's config:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"  {title} keys: {shown}")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(state)


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, plus ``generator``'s, as checkpoint-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
