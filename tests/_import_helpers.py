"""Helpers of the official-checkpoint import tests: pinned key lists, small official checkpoints, loading.

``tests/data/official_checkpoints/`` holds, per official model:

* ``<model>_<backbone>_<task>.txt``: the official model's state-dict keys and shapes at paper size (random init of
  the official code; the header names the file and settings), one ``key [d0,d1,...]`` per line.
* ``<model>_small_pvt.pth.xz``: an xz-compressed, official-format state dict of the official model shrunk by its own
  constructor arguments (widths, layer counts; the header of each test module lists them), with random weights
  rounded to multiples of a power of two so that the file compresses; ``<model>_small_pvt_io.pt``: a fixed input
  (frames, the 128-d audio embeddings the official model's VGGish would give) and the official model's outputs.
"""

from __future__ import annotations

import io
import lzma
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avs_mamba import registry
from avs_mamba.backbones import read_state_dict
from avs_mamba.importers.base import OfficialFormat, strip_prefix

DATA = Path(__file__).parent / "data" / "official_checkpoints"


def read_key_list(name: str) -> dict[str, list[int]]:
    """``key -> shape`` of ``DATA/<name>.txt`` (``#`` lines are comments)."""
    entries: dict[str, list[int]] = {}
    for line in (DATA / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split()
        dims = shape.strip("[]")
        entries[key] = [int(d) for d in dims.split(",")] if dims else []
    return entries


def meta_state(keys: dict[str, list[int]]) -> dict[str, Tensor]:
    """A state dict with the given keys and shapes on the meta device (shapes only)."""
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def unpack_checkpoint(
    name: str, tmp_path: Path, edit: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
) -> Path:
    """Decompress ``DATA/<name>.pth.xz`` to a checkpoint file under ``tmp_path`` (what a user would hold); ``edit``
    changes the official state dict first (control tests)."""
    path = tmp_path / f"{name}.pth"
    raw = lzma.decompress((DATA / f"{name}.pth.xz").read_bytes())
    if edit is None:
        path.write_bytes(raw)
    else:
        torch.save(edit(torch.load(io.BytesIO(raw), weights_only=True)), path)
    return path


class EmbeddingStandIn(nn.Module):
    """Stand-in for the audio encoder: returns the given embeddings ``[B, T, D]`` as ``[B*T, D]``.

    The official models take VGGish embeddings; the small fixtures give them directly, so the comparison covers
    everything the checkpoint holds (VGGish itself is pinned by the backbone key-list tests)."""

    def __init__(self, embeddings: Tensor) -> None:
        super().__init__()
        self.out_dim = embeddings.shape[-1]
        self.embeddings = embeddings

    def forward(self, x: Tensor) -> Tensor:
        return self.embeddings.flatten(0, 1).to(x.dtype)


def load_official(
    fmt: OfficialFormat, path: Path, task: str, audio_stand_in: nn.Module | None = None, **overrides: Any
) -> nn.Module:
    """Read an official checkpoint through ``fmt`` into the project model: read and unwrap, strip ``module.``,
    architecture (+ ``overrides``), build, map, and load with strict key checks; fails on unknown keys.

    ``audio_stand_in``, when given, replaces the model's before loading (a stand-in without keys)."""
    state, _ = read_state_dict(path)
    state = strip_prefix(state)
    model = registry.create_model(fmt.model, **{**fmt.architecture(state, task), **overrides})
    if audio_stand_in is not None:
        model.audio_encoder = audio_stand_in
    mapped = fmt.map_state(state)
    if mapped.unknown:
        raise AssertionError(f"{path}: keys no rule maps: {mapped.unknown}")
    model.load_state_dict(mapped.state, strict=True)
    return model


def run_small(
    fmt: OfficialFormat,
    name: str,
    task: str,
    tmp_path: Path,
    edit: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """Load the small fixture ``name`` (``edit``ed, if given) into the project model (float64, eval) and run it on
    the fixed input; returns the output and the fixture's tensors.

    The model is built with the log-mel CNN (no VGGish file needed) and its audio encoder replaced by
    :class:`EmbeddingStandIn` with the fixture's embeddings, which the official model was given."""
    tensors = torch.load(DATA / f"{name}_io.pt", weights_only=True)
    stand_in = EmbeddingStandIn(tensors["audio_embedding"].double())
    path = unpack_checkpoint(name, tmp_path, edit)
    model = load_official(fmt, path, task, stand_in, audio_encoder="logmel_cnn")
    model.double().eval()
    frames = tensors["frames"].double()
    with torch.no_grad():
        out = model(frames, torch.zeros(*frames.shape[:2], 1, 96, 64, dtype=torch.float64), tensors.get("frame_flags"))
    return out, tensors
