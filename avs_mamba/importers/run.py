"""``avs-bench import``: a checkpoint trained with an official code becomes a run directory of this suite.

The file is read (plain state dict, or one under ``model`` / ``state_dict``), DataParallel's ``module.`` prefix is
stripped, the official format (:mod:`avs_mamba.importers`) says which architecture the keys imply and renames them,
and the renamed state must fit the project model built from the experiment config plus those settings key for key
and shape for shape. Then :func:`avs_mamba.engine.record_run` writes the run directory a trained run has
(``config.yaml``, ``checkpoints/best.pt``, the test evaluation in ``metrics.json``, overlays, cost, MLflow), so
``evaluate``, ``profile``, ``tables`` and MLflow take it like any other. Its record's ``imported`` block and the
MLflow tag ``imported_from`` say where the weights came from: ``imported from FILE (sha256 ...)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from avs_mamba.backbones.checkpoint import CheckpointMismatchError, read_state_dict
from avs_mamba.importers import get_format, list_formats
from avs_mamba.importers.base import OfficialFormat, strip_prefix

__all__ = ["IMPORT_COST", "flatten_overrides", "import_checkpoint", "load_official", "sha256_of"]

# Cost measured for an imported run: memory has no training phases to measure here (`avs-bench profile` does).
IMPORT_COST = ("params", "flops", "latency")
MAX_LISTED = 8


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def flatten_overrides(options: Mapping[str, Any], prefix: str = "model") -> list[str]:
    """``{"cip": {"upsample": "nearest"}}`` -> ``["model.cip.upsample=\"nearest\""]`` (JSON values are YAML)."""
    out: list[str] = []
    for key, value in options.items():
        if isinstance(value, Mapping):
            out += flatten_overrides(value, f"{prefix}.{key}")
        else:
            out.append(f"{prefix}.{key}={json.dumps(value)}")
    return out


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED]) + (f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else "")
    return f"  {title} ({len(items)}): {shown}"


def load_official(
    fmt: OfficialFormat, path: Path, task: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """Read ``path`` as ``fmt``: ``(state renamed to the project's keys, model overrides, dropped keys)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the file is unreadable, not a state dict, not ``fmt``'s, or has keys the table does
            not know; the message names the file and what was expected.
    """
    expected = f"expected a checkpoint saved by {fmt.source} (--from {fmt.name})"
    try:
        state, _ = read_state_dict(path)
    except RuntimeError as err:
        raise CheckpointMismatchError(f"{err}; {expected}") from None
    state = strip_prefix(state, "module.")
    try:
        overrides = fmt.architecture(state, task)
    except ValueError as err:
        raise CheckpointMismatchError(f"checkpoint {path} is {err}; {expected}") from None
    mapped = fmt.map_state(state)
    if mapped.unknown:
        raise CheckpointMismatchError(
            f"checkpoint {path} has keys that {fmt.source} does not define ({expected}):\n"
            + _listing("unknown keys", mapped.unknown)
        )
    return mapped.state, overrides, mapped.dropped


def external_prefixes(fmt: OfficialFormat) -> tuple[str, ...]:
    """Project key prefixes of parts that ``fmt``'s files never hold (loaded from their own pretrained files)."""
    return tuple(fmt.external_prefixes)


def check_fit(path: Path, fmt: OfficialFormat, state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every model key in ``state`` with its shape, and nothing else; else one error listing each kind apart."""
    own = model.state_dict()
    external = external_prefixes(fmt)
    missing = [k for k in own if k not in state and not k.startswith(external)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (file {list(v.shape)}, model {list(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {path} does not fit the {fmt.model} model it implies (--from {fmt.name}):"]
        for title, keys in (
            ("missing keys (in the model, not in the file)", missing),
            ("unexpected keys (in the file, not in the model)", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                lines.append(_listing(title, keys))
        raise CheckpointMismatchError("\n".join(lines))


def import_checkpoint(
    source_format: str,
    checkpoint: str | Path,
    *,
    config: str | Path,
    task: str,
    out_dir: str | Path,
    size: str | None = None,
    overrides: Sequence[str] = (),
    data_root: str | None = None,
    device: str | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    cost: Sequence[str] = IMPORT_COST,
) -> dict[str, Any]:
    """Import an official checkpoint into the run directory ``out_dir``; returns its ``metrics.json`` record.

    Args:
        source_format: an ``--from`` name (:func:`avs_mamba.importers.list_formats`).
        checkpoint: the official file.
        config: the experiment YAML of the project model (e.g. ``ablations/full.yaml``); its model name must be the
            format's. The checkpoint's architecture settings override its model section.
        task / size / overrides / data_root / device: as for ``avs-bench train`` (``data.task``, the size profile,
            ``key=value`` strings, ``data.root``, ``train.device``).

    Raises:
        KeyError: unknown ``source_format``.
        FileNotFoundError: missing checkpoint, config or data.
        CheckpointMismatchError: the file is not a checkpoint of that format, or does not fit the model.
        ValueError: the config is of another model, or invalid.
    """
    from avs_mamba.config import load_config
    from avs_mamba.engine import record_run

    try:
        fmt = get_format(source_format)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    state, arch, dropped = load_official(fmt, path, task)
    sugar = {"data.task": task, "data.root": data_root, "train.device": device}
    extra = [f"{k}={json.dumps(v)}" for k, v in sugar.items() if v is not None]
    # The checkpoint's architecture first, the user's overrides on top (one that breaks the fit is caught below).
    cfg = load_config(config, [*flatten_overrides(arch), *overrides, *extra], size)
    if cfg.model.name != fmt.model:
        raise ValueError(
            f"config {config} builds model {cfg.model.name!r}, but --from {fmt.name} checkpoints are {fmt.model!r} "
            f"models; expected one of the {fmt.model} configs (available formats: {list_formats()})"
        )
    model = cfg.build_model()
    check_fit(path, fmt, state, model)
    # Parts the official file does not hold (TPAVI's VGGish) keep the weights the model was built with.
    external = external_prefixes(fmt)
    state = {**{k: v for k, v in model.state_dict().items() if k.startswith(external) and k not in state}, **state}
    digest = sha256_of(path)
    resolved = path.resolve()
    imported = {
        "file": str(resolved),
        "sha256": digest,
        "format": fmt.name,
        "source": fmt.source,
        "dropped": dropped,
        "provenance": f"imported from {resolved} (sha256 {digest})",
    }
    return record_run(
        cfg,
        out_dir,
        state,
        extra={"imported": imported},
        tags={"imported_from": imported["provenance"], "import_format": fmt.name},
        tracking=tracking,
        tracking_uri=tracking_uri,
        cost=cost,
    )
