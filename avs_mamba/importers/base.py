"""The contract an official checkpoint format fulfils: the architecture it implies and its key table.

A format never guesses: :meth:`OfficialFormat.map_state` renames keys through one explicit table, drops by exact
name the parameters that are dead in the official model, and returns every other key it does not know as
``unknown`` so that the importer can stop and list them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

__all__ = ["MappedState", "OfficialFormat", "strip_prefix"]


@dataclass
class MappedState:
    """An official state dict renamed to this project's keys.

    Attributes:
        state: project key -> tensor (values may be reshaped or split where the official layout differs).
        dropped: official keys deliberately dropped because the official model never uses them.
        unknown: official keys that no rule of the table maps (the import stops on them).
    """

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


class OfficialFormat(Protocol):
    """One official codebase's checkpoint format."""

    name: str  # the ``--from`` value, e.g. "tpavi_official"
    model: str  # the registry name of the project model it becomes, e.g. "tpavi"
    source: str  # the official code it was read from, as ``owner/repo@commit``
    # Project key prefixes of parts the official files never hold (TPAVI's VGGish: its scripts load it from its own
    # release file); those keys keep the weights the project model is built with.
    external_prefixes: tuple[str, ...]

    def architecture(self, state: Mapping[str, torch.Tensor], task: str) -> dict[str, Any]:
        """Model-config overrides (registry options) that the checkpoint implies for ``task``.

        Read from key names and shapes (backbone, widths, classes, ...), plus the official fixed settings.

        Raises:
            ValueError: the keys are not this format's (message says what was expected).
        """
        ...

    def map_state(self, state: Mapping[str, torch.Tensor]) -> MappedState:
        """Rename ``state`` (already unwrapped, without a DataParallel prefix) to the project's keys."""
        ...


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """``state`` without ``prefix`` on its keys when every key has it (DataParallel / DDP checkpoints)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)
