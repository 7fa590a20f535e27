# Training: one job per (dataset, variant, seed). The engine selects the best checkpoint on val, evaluates it on
# test (official and clean protocols), writes overlays and cost figures, and logs the run to MLflow.


rule train:
    input:
        config=variant_config,
        data=data_marker,
        store=store_marker,
    output:
        metrics=f"{RUNS}/{{dataset}}/{{variant}}/seed{{seed}}/metrics.json",
    log:
        f"{LOGS}/train/{{dataset}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{dataset}}/{{variant}}/seed{{seed}}.tsv"
    params:
        out=run_dir,
        size=PROFILE,
        root=task_root_of,
        device=config["device"],
        sets=train_sets,
        tracking=tracking_args,
    # config 'resources.<profile>.train_cpus' cores per job (smoke: 1, so --cores N runs N small CPU jobs side by
    # side); torch and numba's scan both use exactly this many threads.
    threads: size("train_cpus")
    conda:
        ENV
    resources:
        gpu=GPU,
        runtime=size("train_runtime_min"),
        mem_mb=size("train_mem_mb"),
    shell:
        "OMP_NUM_THREADS={threads} NUMBA_NUM_THREADS={threads} avs-bench train --config {input.config} --size {params.size} "
        "--seed {wildcards.seed} --data-root {params.root} --device {params.device} "
        "{params.sets} {params.tracking} --threads {threads} --no-progress --out {params.out} > {log} 2>&1"
