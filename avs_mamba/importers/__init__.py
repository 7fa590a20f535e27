"""Importers of checkpoints trained with the official codes of AVS-Mamba, TPAVI and AVSegFormer.

Each official format is one module here exposing an :class:`~avs_mamba.importers.base.OfficialFormat`; the
``avs-bench import --from NAME`` command looks it up by name with :func:`get_format`.
"""

from __future__ import annotations

import importlib

from avs_mamba.importers.base import MappedState, OfficialFormat

__all__ = ["FORMAT_MODULES", "MappedState", "OfficialFormat", "get_format", "list_formats"]

# ``--from`` name -> module defining ``FORMAT`` (an OfficialFormat).
FORMAT_MODULES: dict[str, str] = {
    "avs_mamba_official": "avs_mamba.importers.avs_mamba_official",
    "tpavi_official": "avs_mamba.importers.tpavi_official",
    "avsegformer_official": "avs_mamba.importers.avsegformer_official",
}


def list_formats() -> list[str]:
    """The ``--from`` names, sorted."""
    return sorted(FORMAT_MODULES)


def get_format(name: str) -> OfficialFormat:
    """The official format called ``name``.

    Raises:
        KeyError: ``name`` is not one of :func:`list_formats` (the message lists them).
    """
    if name not in FORMAT_MODULES:
        raise KeyError(f"Unknown official checkpoint format {name!r}; expected one of {list_formats()}")
    return importlib.import_module(FORMAT_MODULES[name]).FORMAT
