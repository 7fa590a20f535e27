# Tables (Markdown, LaTeX booktabs, CSV) and figures, built by `avs-bench tables` from the files the runs wrote.


# Ablation table (✓/✗ components, paired Δ vs the reference with 95 % CIs) with its forest plot and mask grids.
rule ablation_report:
    input:
        runs=run_metrics(ABLATIONS),
        store=store_marker,
    output:
        ablation_outputs(),
    log:
        f"{LOGS}/report/ablation.log",
    params:
        tracking=report_tracking_args,
        tables=table_dir,
        figures=figure_dir,
        protocol=config["protocol"],
        reference=REFERENCE,
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench tables {params.tracking} --runs {input.runs} --only ablation --protocol {params.protocol} "
        "--reference {params.reference} --out {params.tables} --figures {params.figures} > {log} 2>&1"


# Main comparison: reproduced AVS-Mamba and baselines (mean ± std over seeds) beside the published numbers.
rule comparison_report:
    input:
        runs=run_metrics(main_models()),
        store=store_marker,
    output:
        comparison_outputs(),
    log:
        f"{LOGS}/report/comparison.log",
    params:
        tracking=report_tracking_args,
        tables=table_dir,
        protocol=config["protocol"],
        reference=REFERENCE,
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench tables {params.tracking} --runs {input.runs} --only comparison --protocol {params.protocol} "
        "--reference {params.reference} --out {params.tables} > {log} 2>&1"


# Efficiency: params, GFLOPs, peak memory, latency/FPS of each model at each task's input shape.
rule efficiency_report:
    input:
        costs=expand(f"{RESULTS}/profile/{PROFILE}/{{dataset}}/{{variant}}.json", dataset=DATASETS, variant=main_models()),
        store=store_marker,
    output:
        efficiency_outputs(),
    log:
        f"{LOGS}/report/efficiency.log",
    params:
        tracking=report_tracking_args,
        tables=table_dir,
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench tables {params.tracking} --costs {input.costs} --only efficiency --out {params.tables} > {log} 2>&1"


# Scaling table (log-log slope per model and cost) and figure.
rule scaling_report:
    input:
        sweeps=expand(f"{RESULTS}/scaling/{PROFILE}/{{variant}}.json", variant=scaling_models()),
        store=store_marker,
    output:
        scaling_outputs(),
    log:
        f"{LOGS}/report/scaling.log",
    params:
        tracking=report_tracking_args,
        tables=table_dir,
        figures=figure_dir,
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench tables {params.tracking} --scaling {input.sweeps} --only scaling --out {params.tables} --figures {params.figures} "
        "> {log} 2>&1"


# Rebuild every table and figure from what is on disk, whatever the config selects; never trains or profiles.
# The files are found when the workflow is parsed and passed as params, not inputs, so that no missing or stale
# run is scheduled. No output: the rule runs each time it is asked for.
rule tables:
    log:
        f"{LOGS}/report/tables.log",
    params:
        tracking=report_tracking_args,
        tables=TABLES,
        figures=FIGURES,
        protocol=config["protocol"],
        reference=REFERENCE,
        options=tables_options,
    threads: 1
    conda:
        ENV
    shell:
        "avs-bench tables {params.tracking} {params.options} --protocol {params.protocol} --reference {params.reference} "
        "--out {params.tables} --figures {params.figures} > {log} 2>&1"
