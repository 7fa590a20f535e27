"""The Snakemake workflow end to end at a tiny size, in a temporary directory, through `python -m snakemake`.

One run of `all scaling` with `.test/config.yaml` (two variants, S4, one seed, two optimisation steps), then: every
table and figure exists, every run is in MLflow once, a second invocation has nothing to do, deleting one run's
outputs plans only that job and the table that reads it, and `tables` rebuilds from disk without training. Plus the
config checks, the paper-profile guard and the slurm plan (dry runs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / ".test" / "config.yaml"
TABLES = [
    f"results/tables/{t}.{e}"
    for t in ("ablation", "comparison", "efficiency", "scaling", "robustness")
    for e in ("md", "tex", "csv")
]
FIGURES = ["results/figures/ablation_forest.png", "results/figures/qualitative_s4.png", "results/figures/scaling.png"]


def snakemake(workdir: Path, *args: str, config: Path = TEST_CONFIG, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m snakemake` on the repository's Snakefile, run in ``workdir``; the avs-bench CLI on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(config), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a dry run as {rule: count} (empty when there is nothing to do)."""
    counts = {}
    if "Job stats:" not in output:
        return counts
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def mlflow_run_names(workdir: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir.resolve() / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("avs-bench-smoke")
    assert experiment is not None, "the workflow created the smoke experiment"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return sorted(run.info.run_name for run in runs)


@pytest.mark.slow
def test_workflow_end_to_end(tmp_path: Path) -> None:
    snakemake(tmp_path, "--cores", "2", "all", "scaling")
    for name in TABLES + FIGURES:
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, f"{name} was not written"
    ablation = (tmp_path / "results/tables/ablation.md").read_text()
    assert "| full |" in ablation and "| no_tmb |" in ablation
    assert r"\toprule" in (tmp_path / "results/tables/ablation.tex").read_text()
    for run in ("full", "no_tmb"):
        assert (tmp_path / f"results/benchmarks/smoke/train/s4/{run}/seed0.tsv").is_file(), "train jobs are benchmarked"
        assert (tmp_path / f"results/logs/smoke/train/s4/{run}/seed0.log").is_file()
    names = mlflow_run_names(tmp_path)
    assert [n for n in names if n.count("/") == 2] == ["s4/full/seed0", "s4/no_tmb/seed0"], "one run per job"
    assert {"s4/full", "s4/no_tmb", "report/ablation"} <= set(names), "parent runs per variant and the report run"
    robustness = (tmp_path / "results/tables/robustness.md").read_text()
    assert "AVS-Mamba (full)" in robustness and "AVS-Mamba (no_tmb)" in robustness and "FPR silence" in robustness

    again = snakemake(tmp_path, "-n", "--cores", "2", "all", "scaling")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout

    shutil.rmtree(tmp_path / "results/runs/smoke/s4/no_tmb/seed0")
    plan = snakemake(tmp_path, "-n", "--cores", "2", "all", "scaling")
    expected = {"train": 1, "ablation_report": 1, "robustness_eval": 1, "robustness_report": 1, "all": 1, "total": 5}
    assert job_counts(plan.stdout) == expected, plan.stdout

    tables = snakemake(tmp_path, "--cores", "1", "tables")
    assert "Finished job" in tables.stdout + tables.stderr
    assert not (tmp_path / "results/runs/smoke/s4/no_cip").exists(), "`tables` never trains"


def _config(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text()) | changes
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_typo_names_the_key(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", config=_config(tmp_path, seed=[0]), check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "config: Additional properties are not allowed ('seed' was unexpected)" in output
    assert len(output.splitlines()) < 15 and "description" not in output, "the message, not the schema dump"
    proc = snakemake(tmp_path, "-n", "--config", "seeds=[0,x]", check=False)
    assert "config key 'seeds.1': 'x' is not of type 'integer'" in proc.stdout + proc.stderr


def test_readme_seed_override_from_the_command_line(tmp_path: Path) -> None:
    """`--config seeds=[0,1,2]` (the README's command) hands Snakemake's strings '0', '1', '2' to the schema."""
    proc = snakemake(tmp_path, "-n", "--cores", "2", "all_ablations", "--config", "seeds=[0,1,2]", "ablations=all")
    variants = len(list((REPO / "ablations").glob("*.yaml")))
    assert job_counts(proc.stdout)["train"] == 3 * variants
    assert "results/runs/smoke/s4/full/seed2/metrics.json" in proc.stdout


def test_unknown_variant_is_rejected(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", config=_config(tmp_path, ablations=["full", "no_tmbb"]), check=False)
    assert proc.returncode != 0
    assert "config 'ablations' names ['no_tmbb'], which have no YAML" in proc.stdout + proc.stderr


def test_paper_profile_without_data_stops_before_training(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", config=_config(tmp_path, profile="paper", data_root="avsbench"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "avsbench/Single-source/" in out and "pvt_v2_b5.pth" in out
    assert "opennlplab.github.io/AVSBench" in out


def _slurm_profile(tmp_path: Path, fill: bool) -> Path:
    """A copy of profiles/slurm, its REPLACE_ME placeholders filled in when ``fill``."""
    folder = tmp_path / "slurm"
    shutil.copytree(REPO / "profiles" / "slurm", folder)
    if fill:
        for path in folder.glob("*.yaml"):
            path.write_text(path.read_text().replace("REPLACE_ME_", "my_"))
    (folder / "config.yaml").write_text(
        (folder / "config.yaml").read_text().replace("profiles/slurm/partitions.yaml", str(folder / "partitions.yaml"))
    )
    return folder


def test_slurm_profile_placeholders_stop_the_workflow_naming_the_key(tmp_path: Path) -> None:
    profile = _slurm_profile(tmp_path, fill=False)
    proc = snakemake(tmp_path, "-n", "--workflow-profile", str(profile), "all", config=_config(tmp_path), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config.yaml:" in out and "'slurm_account' is a placeholder" in out


def test_slurm_profile_sizes_jobs_from_the_config(tmp_path: Path) -> None:
    profile = _slurm_profile(tmp_path, fill=True)
    proc = snakemake(tmp_path, "-n", "--workflow-profile", str(profile), "all", config=_config(tmp_path), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert job_counts(proc.stdout)["train"] == 2
    # smoke training jobs: the config's sizes, no GPU, one core; nothing from profiles/default (latency-wait 30)
    train = [block for block in proc.stdout.split("\n\n") if "rule train:" in block]
    assert train and all("gpu=0" in b and "runtime=10" in b and "mem_mb=2000" in b for b in train), train
    assert "slurm_partition" not in proc.stdout  # chosen by the plugin from partitions.yaml
    assert "workflow specific profile" in out and "profiles/default" not in out


def test_data_of_other_synth_settings_is_resynthesized(tmp_path: Path) -> None:
    from avs_mamba.data.synthetic import SplitCounts, SynthConfig, generate

    # the clip counts of .test/config.yaml (synth.clips_per_split)
    counts = dict.fromkeys(("s4", "ms3", "avss_v1s", "avss_v1m", "avss_v2"), SplitCounts(train=4, val=2, test=4))
    generate("s4", tmp_path / "data/synthetic", SynthConfig(seed=0, image_size=48, **counts))  # config says 32 px
    plan = snakemake(tmp_path, "-n", "--cores", "1", "data")
    assert job_counts(plan.stdout) == {"data": 1, "synth_data": 1, "total": 2}, plan.stdout
    generate("s4", tmp_path / "data/synthetic", SynthConfig(seed=0, image_size=32, **counts), overwrite=True)
    plan = snakemake(tmp_path, "-n", "--cores", "1", "data")
    assert "Nothing to be done" in plan.stdout, plan.stdout
