# Cost: one profile per (dataset, model) at the run's input shape (efficiency table), and the scaling sweeps
# (FLOPs, peak memory and latency as the clip length T and the resolution grow).


# Params, GFLOPs (fvcore), peak memory and latency of one model at the task's input shape.
rule profile_model:
    input:
        config=variant_config,
    output:
        f"{RESULTS}/profile/{PROFILE}/{{dataset}}/{{variant}}.json",
    log:
        f"{LOGS}/profile/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/profile/{{dataset}}/{{variant}}.tsv"
    params:
        size=PROFILE,
        device=config["cost"]["device"],
        measure=" ".join(f"--measure {m}" for m in config["cost"]["measure"]),
        sets=task_sets,
    threads: 2
    conda:
        ENV
    resources:
        gpu=device_gpus(config["cost"]["device"]),
        runtime=size("job_runtime_min"),
        mem_mb=size("job_mem_mb"),
    shell:
        "OMP_NUM_THREADS={threads} avs-bench profile --config {input.config} --size {params.size} "
        "{params.sets} --device {params.device} {params.measure} --threads {threads} --out {output} > {log} 2>&1"


# Cost against T (at the profile's image size) and against the image side (at the task's T) for one model.
rule scaling_sweep:
    input:
        config=variant_config,
    output:
        f"{RESULTS}/scaling/{PROFILE}/{{variant}}.json",
    log:
        f"{LOGS}/scaling/{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/scaling/{{variant}}.tsv"
    params:
        size=PROFILE,
        frames=" ".join(str(t) for t in config["scaling"]["frames"]),
        image_sizes=" ".join(str(s) for s in config["scaling"]["image_sizes"]),
        device=config["scaling"]["device"],
        measure=" ".join(f"--measure {m}" for m in config["scaling"]["measure"]),
    threads: 2
    conda:
        ENV
    resources:
        gpu=device_gpus(config["scaling"]["device"]),
        runtime=size("job_runtime_min"),
        mem_mb=size("job_mem_mb"),
    shell:
        "OMP_NUM_THREADS={threads} avs-bench scaling --config {input.config} --size {params.size} "
        "--frames {params.frames} --image-sizes {params.image_sizes} --device {params.device} "
        "{params.measure} --threads {threads} --out {output} > {log} 2>&1"
