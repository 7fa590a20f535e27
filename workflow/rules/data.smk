# Datasets: synthesized in the AVSBench layouts (smoke) or checked where the user put AVSBench (paper).


# Write the synthetic dataset of one task under data_root (seconds; deterministic per seed).
rule synth_data:
    input:
        settings=synth_settings_file,
    output:
        f"{config['data_root']}/{{task_dir}}/synth_config.json",
    log:
        f"{LOGS}/data/synth_{{task_dir}}.log",
    params:
        task=synth_task,
        out=synth_out,
        knobs=synth_args,
    wildcard_constraints:
        task_dir="|".join(TASK_DIRS.values()),
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench synth --task {params.task} --out {params.out} --overwrite {params.knobs} > {log} 2>&1"


# Read every clip of the real dataset once and report problems; training waits for a clean report.
rule check_data:
    output:
        f"{RESULTS}/data/{PROFILE}/{{dataset}}.check.txt",
    log:
        f"{LOGS}/data/check_{{dataset}}.log",
    params:
        root=task_root_of,
    threads: 1
    resources:
        runtime=size("job_runtime_min"),
        mem_mb=size("job_mem_mb"),
    conda:
        ENV
    shell:
        "avs-bench data check {params.root} --task {wildcards.dataset} > {output} 2> {log}"


# The MLflow store (schema and experiments), created once before training jobs fan out: parallel first writers
# racing to create a fresh SQLite schema break.
rule init_store:
    output:
        touch(f"{RESULTS}/tracking/store.ready"),
    log:
        f"{LOGS}/init_store.log",
    params:
        uri=TRACKING_URI,
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench init-store --tracking-uri '{params.uri}' > {log} 2>&1"
