"""Which data a result came from: the dataset's absolute root and a digest of what it holds.

The digest is SHA-256 over the sorted list of the root's files (relative path and size in bytes) and the full
content of its metadata files (``*.csv``, ``*.json``: the split lists, AVSS's ``label2idx.json``, the synthetic
generator's ``synth_config.json``). Media files are not read: real AVSBench is tens of GB, and another copy, another
synthetic size, class count or seed changes the listing or the metadata. Two roots with the same digest hold the same
clips in the same splits; training records it, and evaluation checks the data it scores against it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["METADATA_SUFFIXES", "data_digest", "data_provenance"]

METADATA_SUFFIXES = (".csv", ".json")


def data_digest(root: str | Path) -> tuple[str, int]:
    """``(sha256 hex digest, number of files)`` of the dataset under ``root`` (see the module docstring)."""
    root = Path(root)
    walk = os.walk(root)
    files = sorted(Path(folder, name).relative_to(root).as_posix() for folder, _, names in walk for name in names)
    sha = hashlib.sha256()
    for rel in files:
        path = root / rel
        sha.update(f"{rel}\0{path.stat().st_size}\n".encode())
        if path.suffix.lower() in METADATA_SUFFIXES:
            sha.update(path.read_bytes())
    return sha.hexdigest(), len(files)


def data_provenance(root: str | Path, task: str) -> dict[str, Any]:
    """The record results carry: ``root`` (absolute), ``task``, ``digest``, ``num_files`` and ``source``
    (``synthetic`` when the root holds the generator's ``synth_config.json``, else ``AVSBench``)."""
    root = Path(root).resolve()
    digest, count = data_digest(root)
    source = "synthetic" if (root / "synth_config.json").is_file() else "AVSBench"
    return {"root": str(root), "task": task, "digest": digest, "num_files": count, "source": source}
