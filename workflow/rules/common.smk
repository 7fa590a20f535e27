# Config loading and validation, the variant catalogue, paths and the helpers the rules share.
# Kept short on purpose: what a job does lives in the avs_mamba package and its CLI.

import glob
import json
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _as_ints(values):
    """`--config seeds=[0,1,2]` arrives as ['0', '1', '2'] (Snakemake reads list items as strings): digits -> int."""
    if not isinstance(values, list):
        return values
    return [int(v) if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v) else v for v in values]


def _validate(schema):
    """snakemake's validate (it fills in the defaults), failing with the first error in one line: its own message
    dumps the whole schema (hundreds of lines) for a one-key typo."""
    try:
        validate(config, schema=schema)
    except WorkflowError:
        import jsonschema
        import yaml

        with open(Path(workflow.basedir) / "workflow" / "schemas" / Path(schema).name) as f:
            checker = jsonschema.Draft202012Validator(yaml.safe_load(f))
        error = jsonschema.exceptions.best_match(checker.iter_errors(config))
        if error is None:
            raise
        key = ".".join(str(p) for p in error.absolute_path)
        where = f"config key '{key}'" if key else "config"
        raise WorkflowError(f"{where}: {error.message} (schema: workflow/schemas/{Path(schema).name})") from None


config["seeds"] = _as_ints(config.get("seeds"))
_validate("../schemas/config.schema.yaml")

PROFILE = config["profile"]
DATASETS = list(dict.fromkeys(config["datasets"]))
SEEDS = sorted(set(config["seeds"]))
# The AVSBench folder of each task under data_root (the names of the official release).
TASK_DIRS = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSS"}
RESULTS = "results"
RUNS = f"{RESULTS}/runs/{PROFILE}"
LOGS = f"{RESULTS}/logs/{PROFILE}"
BENCHMARKS = f"{RESULTS}/benchmarks/{PROFILE}"
TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"
GPU = 1 if PROFILE == "paper" else 0  # paper training jobs each need one GPU; smoke jobs run on CPU
SIZES = config["resources"].get(PROFILE, {})  # cluster job sizes of this profile (defaults from the schema)
TRACKING_URI = config["tracking"]["uri"] or f"sqlite:///{Path(RESULTS).resolve()}/mlflow.db"


def _catalogue(folder):
    """Variant name (YAML stem) -> config path, for every YAML in a folder of the repository."""
    return {Path(p).stem: p for p in sorted(glob.glob(os.path.join(workflow.basedir, folder, "*.yaml")))}


def _profile_dirs(argv):
    """The folders of the profiles named on snakemake's command line (--profile, --workflow-profile)."""
    dirs = []
    for i, word in enumerate(argv):
        flag, _, value = word.partition("=")
        if flag in ("--profile", "--workflow-profile"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            if value and value != "none":
                dirs.append(Path(value) if Path(value).is_dir() else Path(workflow.basedir, value))
    return [d for d in dirs if d.is_dir()]


def _check_placeholders():
    """Stop before any job while a profile still holds a REPLACE_ME placeholder, naming the file, line and key."""
    for folder in _profile_dirs(sys.argv):
        for path in sorted(folder.glob("*.yaml")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                text = line.split("#", 1)[0]
                if "REPLACE_ME" in text:
                    key = text.split(":", 1)[0].strip().strip("'\"")
                    raise WorkflowError(
                        f"{path}:{number}: '{key}' is a placeholder ({text.strip()}); edit it for your cluster "
                        "(see the comments in that file) before submitting"
                    )


_check_placeholders()

ABLATION_FILES = _catalogue("ablations")
BASELINE_FILES = _catalogue("baselines")
_clash = sorted(set(ABLATION_FILES) & set(BASELINE_FILES))
if _clash:
    raise WorkflowError(f"ablations/ and baselines/ both define {_clash}; variant names must be unique")
VARIANT_FILES = {**ABLATION_FILES, **BASELINE_FILES}
REFERENCE = config["reference"]


def _selected(key, catalogue):
    """The variants named by config[key] ("all" or a list), checked against the YAML files that exist."""
    chosen = list(catalogue) if config[key] == "all" else list(dict.fromkeys(config[key]))
    unknown = [name for name in chosen if name not in catalogue]
    if unknown:
        raise WorkflowError(f"config '{key}' names {unknown}, which have no YAML; available: {sorted(catalogue)}")
    return chosen


ABLATIONS = _selected("ablations", ABLATION_FILES)
BASELINES = _selected("baselines", BASELINE_FILES)
if ABLATIONS and REFERENCE not in ABLATIONS:
    raise WorkflowError(f"config 'ablations' must include the reference variant '{REFERENCE}' (the Δ baseline)")


# Software of every job: the project's conda environment. Inert unless snakemake runs with --sdm conda; the
# default is the environment snakemake itself runs in (./run snakemake ...).
ENV = "../../environment.yml"


wildcard_constraints:
    dataset="|".join(TASK_DIRS),
    variant="|".join(re.escape(v) for v in VARIANT_FILES),
    seed=r"\d+",


def run_metrics(variants, datasets=DATASETS, seeds=SEEDS):
    """The metrics.json of every (dataset, variant, seed) run."""
    return expand(f"{RUNS}/{{dataset}}/{{variant}}/seed{{seed}}/metrics.json", dataset=datasets, variant=variants, seed=seeds)


def task_root(dataset):
    """The folder the loaders read for one task."""
    return f"{config['data_root']}/{TASK_DIRS[dataset]}"


def synth_task(wildcards):
    return {folder: task for task, folder in TASK_DIRS.items()}[wildcards.task_dir]


def synth_settings():
    """The synthetic dataset config/config.yaml asks for, as `avs-bench synth` writes it to synth_config.json."""
    from avs_mamba.data.synthetic import SynthConfig

    knobs = {k: config["synth"][k] for k in ("seed", "image_size", "num_classes")}
    if config["synth"]["clips_per_split"]:
        counts = dict(zip(("train", "val", "test"), config["synth"]["clips_per_split"]))
        knobs.update({kind: counts for kind in ("s4", "ms3", "avss_v1s", "avss_v1m", "avss_v2")})
    return SynthConfig(**knobs).model_dump()


def synth_settings_file(wildcards):
    """A file holding the wanted synth settings, an input of synth_data: rewritten (so newer than the data) when the
    settings change or when the data on disk was written with other settings (say, by `avs-bench synth` by hand),
    so that a mismatch re-synthesizes."""
    wanted = synth_settings()
    path = Path(f"{RESULTS}/data/{PROFILE}/synth_{wildcards.task_dir}.json")
    on_disk = Path(f"{config['data_root']}/{wildcards.task_dir}/synth_config.json")
    text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
    stale = on_disk.is_file() and json.loads(on_disk.read_text()) != wanted
    if stale or not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


def synth_args(wildcards):
    """avs-bench synth options from config['synth']."""
    knobs = config["synth"]
    args = f"--seed {knobs['seed']} --image-size {knobs['image_size']} --num-classes {knobs['num_classes']}"
    if knobs["clips_per_split"]:
        counts = ",".join(str(n) for n in knobs["clips_per_split"])
        args = f"{args} --clips-per-split {counts}"
    return args


def task_root_of(wildcards):
    return task_root(wildcards.dataset)


def data_marker(wildcards):
    """What a training job needs before it starts: the synthesized (smoke) or checked (paper) dataset."""
    if PROFILE == "smoke":
        return f"{task_root(wildcards.dataset)}/synth_config.json"
    return f"{RESULTS}/data/{PROFILE}/{wildcards.dataset}.check.txt"


def variant_config(wildcards):
    return VARIANT_FILES[wildcards.variant]


def store_marker(wildcards):
    """The MLflow store is created once (rule init_store) before training jobs fan out."""
    return [f"{RESULTS}/tracking/store.ready"] if config["tracking"]["enabled"] else []


def tracking_args(wildcards):
    return f"--tracking-uri '{TRACKING_URI}'" if config["tracking"]["enabled"] else "--no-tracking"


def device_gpus(device):
    """GPUs a profiling job needs: one when it measures on CUDA, none on the CPU."""
    return 1 if str(device).startswith("cuda") else 0


def size(key):
    """One cluster job size of this profile (config 'resources'), the schema's default when not set."""
    defaults = {"train_runtime_min": 60, "train_mem_mb": 8000, "train_cpus": 1, "job_runtime_min": 30, "job_mem_mb": 4000}
    return SIZES.get(key, defaults[key])


def report_tracking_args(wildcards):
    """Report rules log their tables and figures, and a parent run per variant, to the store (when tracking)."""
    return f"--tracking-uri '{TRACKING_URI}' --profile {PROFILE}" if config["tracking"]["enabled"] else ""


# Per-task model settings: AVSS predicts 70 classes + background (softmax), S4/MS3 one binary mask.
TASK_SETS = {"s4": [], "ms3": [], "avss": ["model.num_classes=71"]}


def _sets(items):
    return " ".join(f"--set '{item}'" for item in items)


def task_sets(wildcards):
    """--set options that make a config fit one task (data.task, the class count, the paper checkpoints folder)."""
    items = [f"data.task={wildcards.dataset}", *TASK_SETS[wildcards.dataset]]
    if PROFILE == "paper":
        items.append(f"model.pretrained_dir={config['pretrained_dir']}")
    return _sets(items)


def train_sets(wildcards):
    """--set options of every training job: the task's, then the config's train_overrides (which win)."""
    return f"{task_sets(wildcards)} {_sets(config['train_overrides'])}"


def run_dir(wildcards):
    return f"{RUNS}/{wildcards.dataset}/{wildcards.variant}/seed{wildcards.seed}"


def _missing_paper_inputs():
    """Paths the paper profile needs and does not find: each task's AVSBench folder and the pretrained weights."""
    from avs_mamba.backbones import pretrained_spec
    from avs_mamba.config import load_config

    missing = [f"{task_root(d)}/  (AVSBench {d.upper()})" for d in DATASETS if not Path(task_root(d)).is_dir()]
    needed = {}
    for name in [*ABLATIONS, *BASELINES]:
        model = load_config(VARIANT_FILES[name], size="paper").model.options
        for key in ("backbone", "audio_encoder"):
            spec = pretrained_spec(model[key]) if key in model else None
            if spec is not None and model.get("pretrained") == "auto":
                needed[spec.filename] = spec.describe()
    folder = Path(config["pretrained_dir"])
    missing += [f"{folder / f}  ({source})" for f, source in needed.items() if not (folder / f).is_file()]
    return missing


if PROFILE == "paper":
    _missing = _missing_paper_inputs()
    if _missing:
        _listing = "\n  ".join(_missing)
        raise WorkflowError(
            f"The paper profile needs the real AVSBench data and the pretrained checkpoints; missing:\n  {_listing}\n"
            "AVSBench (S4, MS3, AVSS) is released under CC BY-NC 4.0 on request: see "
            "https://opennlplab.github.io/AVSBench/ (Google Form / e-mail), and unpack it so that data_root holds "
            "Single-source/, Multi-sources/ and AVSS/. Put the checkpoints into pretrained_dir. "
            "Or run the smoke profile (profile: smoke), which needs no download."
        )


def data_outputs():
    """The `data` target: each selected task synthesized (smoke) or checked (paper)."""
    if PROFILE == "smoke":
        return [f"{task_root(d)}/synth_config.json" for d in DATASETS]
    return [f"{RESULTS}/data/{PROFILE}/{d}.check.txt" for d in DATASETS]


def synth_out(wildcards, output):
    """The parent of the task folder written by avs-bench synth (data_root)."""
    return str(Path(output[0]).parent.parent)


def table_dir(wildcards, output):
    return str(Path(next(f for f in output if f.endswith(".md"))).parent)


def figure_dir(wildcards, output):
    return str(Path(next(f for f in output if f.endswith(".png"))).parent)


def _table(name):
    return [f"{TABLES}/{name}.{ext}" for ext in ("md", "tex", "csv")]


def ablation_outputs():
    figures = [f"{FIGURES}/ablation_forest.png"] + [f"{FIGURES}/qualitative_{d}.png" for d in DATASETS]
    return _table("ablation") + figures if ABLATIONS else []


def comparison_outputs():
    return _table("comparison") if ABLATIONS or BASELINES else []


def efficiency_outputs():
    return _table("efficiency") if main_models() else []


def scaling_outputs():
    return _table("scaling") + [f"{FIGURES}/scaling.png"]


def main_models():
    """The models of the comparison: AVS-Mamba's reference variant (when ablations run) and the baselines."""
    return ([REFERENCE] if ABLATIONS else []) + BASELINES


def scaling_models():
    chosen = config["scaling"]["models"]
    names = main_models() if chosen == "main" else list(dict.fromkeys(chosen))
    unknown = [name for name in names if name not in VARIANT_FILES]
    if unknown:
        raise WorkflowError(f"config 'scaling.models' names {unknown}; available: {sorted(VARIANT_FILES)}")
    return names


def tables_options(wildcards):
    """--runs/--costs/--scaling of the `tables` target: the files of this profile already on disk."""
    found = {
        "--runs": glob.glob(f"{RUNS}/*/*/seed*/metrics.json"),
        "--costs": glob.glob(f"{RESULTS}/profile/{PROFILE}/*/*.json"),
        "--scaling": glob.glob(f"{RESULTS}/scaling/{PROFILE}/*.json"),
    }
    if not any(found.values()):
        raise WorkflowError(f"tables: no run, profile or scaling outputs under {RESULTS}/ for profile '{PROFILE}' yet")
    return " ".join(f"{flag} {' '.join(sorted(files))}" for flag, files in found.items() if files)
