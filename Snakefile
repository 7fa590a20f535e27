# avs-bench workflow: AVS-Mamba ablations and transformer baselines on AVSBench, tracked in MLflow, reported as
# paper-style tables and figures. Configuration: config/config.yaml (validated against
# workflow/schemas/config.schema.yaml). Rules call the `avs-bench` command line; the logic lives in the package.
#
#   snakemake --cores 2 all_ablations      every ablation x dataset x seed, then the ablation table and figures
#   snakemake --cores 2 all_baselines      every baseline x dataset x seed
#   snakemake --cores 2                    all: both, plus the comparison and efficiency tables
#   snakemake --cores 2 tables             rebuild every table and figure from the runs on disk (never trains)
#   snakemake --cores 2 scaling            cost vs clip length and resolution, log-log slopes
#   snakemake --cores 2 robustness         audio reliance: silence / noise / swapped audio on every run, the table
#   snakemake --cores 2 data               synthesize (smoke) or check (paper) the datasets

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/robustness.smk"


# Cheap jobs run where snakemake runs, also under a cluster executor.
localrules:
    all,
    all_ablations,
    all_baselines,
    data,
    scaling,
    tables,
    synth_data,
    init_store,
    ablation_report,
    comparison_report,
    efficiency_report,
    scaling_report,
    robustness_report,


rule all_ablations:
    input:
        run_metrics(ABLATIONS),
        ablation_outputs(),


rule all_baselines:
    input:
        run_metrics(BASELINES),


rule scaling:
    input:
        scaling_outputs(),


rule data:
    input:
        data_outputs(),


rule robustness:
    input:
        robustness_outputs(),


rule all:
    default_target: True
    input:
        rules.all_ablations.input,
        rules.all_baselines.input,
        comparison_outputs(),
        efficiency_outputs(),
        robustness_outputs(),
