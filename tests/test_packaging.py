"""Packaging checks: environment.yml and pyproject.toml name the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Conda spells some packages differently from PyPI.
CONDA_TO_PYPI = {"pytorch": "torch"}
# Conda-only helpers with no PyPI counterpart in pyproject.toml.
CONDA_ONLY = {"python", "pip", "pytorch-cuda"}


def _name(spec: str) -> str:
    """Distribution name of a requirement string, normalised as PEP 503 does."""
    name = re.split(r"[<>=!~\[;\s]", spec.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_yml_parses_with_python_311() -> None:
    env = _environment()
    assert env["name"] == "avs-bench"
    assert "python=3.11" in env["dependencies"], "environment.yml must pin Python 3.11"


def test_environment_yml_names_the_runtime_dependencies_of_pyproject() -> None:
    env = _environment()
    conda, pip = set(), set()
    pip_editable = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep["pip"]:
                if spec.startswith("-e"):
                    pip_editable.append(spec)
                else:
                    pip.add(_name(spec))
        else:
            name = _name(dep)
            conda.add(CONDA_TO_PYPI.get(name, name))
    runtime = {_name(d) for d in _pyproject()["project"]["dependencies"]}
    in_env = (conda | pip) - CONDA_ONLY
    assert in_env == runtime, f"only in environment.yml: {in_env - runtime}; only in pyproject: {runtime - in_env}"
    # The project itself is installed with the cuda extra (mamba-ssm, causal-conv1d) on GPU machines.
    assert pip_editable == ["-e .[dev,cuda]"]


def test_version_ranges_agree() -> None:
    """The torch range is the same in both files, so a conda env never holds a torch pip would replace."""
    torch_spec = next(d for d in _pyproject()["project"]["dependencies"] if _name(d) == "torch")
    env_torch = next(d for d in _environment()["dependencies"] if isinstance(d, str) and d.startswith("pytorch>"))
    assert torch_spec.removeprefix("torch") == env_torch.removeprefix("pytorch")


def test_cuda_extra_holds_the_source_only_kernels() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {_name(d) for d in extras["cuda"]} == {"mamba-ssm", "causal-conv1d"}
    runtime = {_name(d) for d in _pyproject()["project"]["dependencies"]}
    forbidden = {"timm", "torchvision", "torchaudio", "mamba-ssm", "causal-conv1d"}
    assert not runtime & forbidden, f"these would pull CUDA wheels or fail to build on CPU: {runtime & forbidden}"


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(name)] = version
    project = _pyproject()["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(text)
        if req.name == "torch":
            assert "torch" not in pins, "./run installs torch itself (or keeps a CUDA build); it is not locked"
            continue
        assert _name(req.name) in pins, f"{req.name} is not in requirements/constraints.txt"
        assert req.specifier.contains(pins[_name(req.name)]), f"{req.name}=={pins[_name(req.name)]} is not {text}"
    run = (ROOT / "run").read_text()
    assert '-c "$constraints" -e "$root[dev]"' in run and "requirements/constraints.txt" in run
