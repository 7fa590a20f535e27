"""A model whose training forward ends its process with SIGKILL, as the kernel's OOM killer would (for
``test_profiling``'s memory subprocess test; importable by the subprocess through PYTHONPATH)."""

from __future__ import annotations

import os
import signal

import torch
from torch import nn


class KilledInTraining(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        if self.training:
            os.kill(os.getpid(), signal.SIGKILL)
        return frames.mean() * self.scale + audio.mean()
