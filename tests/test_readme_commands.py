"""Every command in the README's ``bash`` blocks runs as written.

The commands are read from the README itself, so a new or edited command is checked without editing this file, and
a command of a kind this file does not know fails the test. Each one is tried in a copy of the checkout (its tracked
and untracked, not ignored files: what a fresh clone holds) without doing the work:

* ``snakemake ...``: a dry run (``-n``) of exactly those arguments; the paper profile gets empty stand-ins of the
  AVSBench folders and checkpoints it names, the ``slurm`` profile its placeholders filled in, ``tables`` one run
  file to find;
* ``avs-bench ...`` and ``torchrun ... -m avs_mamba.cli ...``: parsed by the real argument parser, and the files it
  reads from the repository (``--config``) exist;
* ``pytest ...``: collected (``--collect-only``) with those arguments.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avs_mamba.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block: one per line (each part of an ``&&`` chain on its own), comments and the
    ``./run`` prefix removed."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                part = words[: words.index("&&")] if "&&" in words else words
                words = words[len(part) + 1 :]
                if part:
                    commands.append(shlex.join(part[1:] if part[0] == "./run" else part))
    return commands


COMMANDS = readme_commands(README.read_text())


def test_readme_commands_are_found() -> None:
    assert readme_commands("x\n```bash\n./run a b  # c\n\n# d\nc 'e f'\n```\n```python\nz\n```\n") == ["a b", "c 'e f'"]
    assert readme_commands("```bash\n./run a b && ./run c\n```\n") == ["a b", "c"]
    assert any(c.startswith("snakemake ") for c in COMMANDS) and any(c.startswith("avs-bench ") for c in COMMANDS)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files, with what the README tells a user to provide before some commands."""
    listing = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    root = tmp_path_factory.mktemp("clone")
    for name in filter(None, listing.split("\0")):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for task_dir in ("Single-source", "Multi-sources", "AVSS"):  # "data_root must hold ..."
        (root / "data" / "avsbench" / task_dir).mkdir(parents=True)
    (root / "pretrained").mkdir()
    for name in ("pvt_v2_b5.pth", "resnet50-19c8e357.pth", "vggish-10086976.pth"):  # "pretrained_dir holds ..."
        (root / "pretrained" / name).touch()
    for name in ("config.yaml", "partitions.yaml"):  # "Edit profiles/slurm/config.yaml (and partitions.yaml) first"
        slurm = root / "profiles" / "slurm" / name
        slurm.write_text(slurm.read_text().replace("REPLACE_ME_", "filled_"))
    run = root / "results" / "runs" / "smoke" / "s4" / "full" / "seed0"  # `tables` reads the runs on disk
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    return root


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _parse_cli(words: list[str]) -> None:
    args = build_parser().parse_args(words)  # SystemExit (argparse's error) fails the test
    config = getattr(args, "config", None)
    if config is not None:
        assert (REPO / config).is_file(), f"{config} named by the README does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(command: str, clone: Path) -> None:
    words = shlex.split(command)
    if words[0] == "snakemake":
        proc = _run([sys.executable, "-m", "snakemake", "-n", *words[1:]], clone)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        assert "Job stats:" in proc.stdout or "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout
    elif words[0] == "avs-bench":
        _parse_cli(words[1:])
    elif words[0] == "torchrun":
        assert (BIN / "torchrun").is_file() or shutil.which("torchrun"), "torchrun is not installed"
        assert words[words.index("-m") + 1] == "avs_mamba.cli", command
        _parse_cli(words[words.index("-m") + 2 :])
    elif words[0] == "pytest":
        collect = ["--collect-only", "-q", "-p", "no:cacheprovider"]
        proc = _run([sys.executable, "-m", "pytest", *collect, *words[1:]], clone)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    else:
        pytest.fail(f"README command of an unknown kind (teach tests/test_readme_commands.py to check it): {command}")
