# Audio reliance (AVSBench-Robust protocol): every run of the selected models is re-evaluated on test with silence,
# noise and swapped audio (no retraining: the trained checkpoint is read, the run's metrics.json gains a robustness
# block), then the robustness table is built from those metrics.json files.

ROBUSTNESS_CONDITIONS = ["silence", "noise", "swapped"]


def robustness_models():
    return [*ABLATIONS, *BASELINES]


def robustness_files(datasets=DATASETS, seeds=SEEDS):
    """The robustness evaluation record of every (dataset, selected model, seed) run."""
    return expand(f"{RUNS}/{{dataset}}/{{variant}}/seed{{seed}}/robustness_test.json", dataset=datasets,
                  variant=robustness_models(), seed=seeds)


def robustness_outputs():
    return _table("robustness") if robustness_models() else []


# Re-evaluate one trained run under each negative audio condition (original audio included). ancient(): the run's
# metrics.json is rewritten by this rule itself, so its time stamp must never make the evaluation (or training) rerun.
rule robustness_eval:
    input:
        metrics=ancient(f"{RUNS}/{{dataset}}/{{variant}}/seed{{seed}}/metrics.json"),
    output:
        f"{RUNS}/{{dataset}}/{{variant}}/seed{{seed}}/robustness_test.json",
    log:
        f"{LOGS}/robustness/{{dataset}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/robustness/{{dataset}}/{{variant}}/seed{{seed}}.tsv"
    params:
        run=run_dir,
        device=config["device"],
        conditions=" ".join(f"--audio-condition {c}" for c in ROBUSTNESS_CONDITIONS),
        tracking=tracking_args,
    threads: 1
    conda:
        ENV
    resources:
        gpu=GPU,
    shell:
        "OMP_NUM_THREADS={threads} NUMBA_NUM_THREADS={threads} avs-bench evaluate --run {params.run} --split test "
        "{params.conditions} --device {params.device} {params.tracking} --threads {threads} --out {output} "
        "> {log} 2>&1"


# The robustness table: one row per model (mean ± std over seeds) from the runs' metrics.json robustness blocks.
rule robustness_report:
    input:
        evaluations=robustness_files(),
    output:
        robustness_outputs(),
    log:
        f"{LOGS}/report/robustness.log",
    params:
        runs=lambda wildcards, input: " ".join(str(Path(f).with_name("metrics.json")) for f in input.evaluations),
        tables=table_dir,
        protocol=config["protocol"],
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench tables --runs {params.runs} --only robustness --protocol {params.protocol} "
        "--out {params.tables} > {log} 2>&1"
