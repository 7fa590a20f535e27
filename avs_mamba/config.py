"""Experiment config: typed sections, YAML inheritance, size presets and dotted command-line overrides.

A run is described by one resolved, validated :class:`ExperimentConfig`. It is assembled from layers, lowest first:

1. the generic size preset ``SIZE_PRESETS[size]`` (``smoke`` or ``paper``),
2. the model's size preset (``register_size_preset(model_name, size, preset)``, filled by the model modules),
3. the YAML file's bases (``base: full.yaml`` or ``base: [a.yaml, b.yaml]``, relative to the file), in order,
4. the YAML file itself, then its own ``tasks: {<task>: {...}}`` block for ``data.task`` (a task's recipe, e.g.
   AVSS's 71 classes and CE loss), then its ``sizes: {<size>: {...}}`` block for the selected size, then the task
   block's ``sizes`` block (``tasks: {avss: {sizes: {paper: {...}}}}``: one task's recipe at one size),
5. command-line overrides ``key.path=value``, parsed with YAML scalar rules.

Dicts merge key by key; any other value (lists included) replaces what is below it, so ``null`` resets a key.
Size-dependent values (epochs, lr, widths) therefore belong in a preset or a ``sizes`` block, not in the file body,
which would override the presets at every size::

    base: full.yaml                  # ablations/no_tmb.yaml
    variant: no_tmb
    model: {mte: {tmb: false}, cip: {tmb: false}}
    sizes:
      smoke: {train: {epochs: 2}}

Unknown keys and wrong types are rejected with the dotted key and the layer (file, preset or override) it came from.
The ``model`` section holds ``name`` plus free options that the registered model's own pydantic config checks; the
resolved config stores the model's fully resolved options, so its flattened form rebuilds the model exactly.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from avs_mamba.lr_schedule import LRSchedule

__all__ = [
    "SIZES",
    "TASKS",
    "LOSS_TERMS",
    "TASK_FRAMES",
    "HASH_EXCLUDE",
    "SIZE_PRESETS",
    "ModelSection",
    "AugmentSection",
    "DataSection",
    "TrainSection",
    "EvalSection",
    "ExperimentConfig",
    "register_size_preset",
    "size_preset",
    "deep_merge",
    "parse_override",
    "parse_overrides",
    "format_validation_error",
    "config_from_dict",
    "load_config",
]

SIZES = ("smoke", "paper")
TASKS = ("s4", "ms3", "avss")
# Clip length of each AVSBench task: S4/MS3 clips have 5 one-second frames, AVSS clips are padded to 10.
TASK_FRAMES = {"s4": 5, "ms3": 5, "avss": 10}
# Loss terms the engine understands: mask losses, TPAVI's audio-visual mapping loss (avm) and AVSegFormer's
# Dice on the channel-mean mask feature (mix_dice).
LossTerm = Literal["dice", "bce", "ce", "iou", "focal", "avm", "mix_dice"]
LOSS_TERMS: tuple[str, ...] = typing.get_args(LossTerm)
# Keys that do not change what a run computes (labels, paths, loader parallelism, device choice) and are
# therefore left out of the config hash.
HASH_EXCLUDE = ("name", "variant", "data.root", "data.num_workers", "train.device", "eval.num_overlays")

SIZE_PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: embedded synthetic data, small frames, a couple of epochs.
    "smoke": {
        "data": {"synthetic": True, "root": "data/synthetic", "image_size": 64, "num_workers": 0},
        "train": {"epochs": 2, "batch_size": 2},
        "eval": {"batch_size": 2},
    },
    # The real protocol: AVSBench from disk at 224x224, evaluated one clip per batch (the official S4/MS3 scripts'
    # val_batch_size); each model's YAML sets its own recipe (AVS-Mamba and AVSegFormer train S4/MS3 at 512).
    "paper": {
        "data": {"synthetic": False, "root": "data/avsbench", "image_size": 224, "num_workers": 4},
        "eval": {"batch_size": 1},
    },
}
_MODEL_SIZE_PRESETS: dict[tuple[str, str], dict[str, Any]] = {}
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_LOADER_KEYS = ("base", "sizes", "tasks")  # consumed while loading, never part of the config

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(BaseModel):
    """``name`` picks the registered model; every other key is a model option checked by that model's config class."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=_NAME_PATTERN)

    @property
    def options(self) -> dict[str, Any]:
        """The model options (every key but ``name``), as a fresh dict."""
        return copy.deepcopy(dict(self.model_extra or {}))


class AugmentSection(_Section):
    """Training augmentation (train split only; val/test are never augmented): the official AVS-Mamba transforms,
    :class:`avs_mamba.data.transforms.TrainAugment`. Pixel sizes refer to 224-px source frames (AVSBench S4/MS3) and
    scale with the stored frames' short side."""

    enabled: bool = False
    flip_p: Annotated[float, Field(ge=0, le=1)] = 0.5
    photometric: bool = True
    overflow: Literal["wrap", "clip"] = "wrap"  # photometric out-of-range rule: the official uint8 wrap, or clip
    geometry: bool = True  # the random resize / resize-crop-resize branch (S4/MS3 official; AVSS has none)
    scales: list[PositiveInt] = Field(default_factory=lambda: [288, 320, 352, 392, 416, 448, 480, 512], min_length=1)
    max_size: PositiveInt = 640
    crop_p: Annotated[float, Field(ge=0, le=1)] = 0.5
    crop_scales: list[PositiveInt] = Field(default_factory=lambda: [400, 500, 600], min_length=1)
    crop_min: PositiveInt = 224  # official S4 224, MS3 384
    crop_max: PositiveInt = 600
    per_frame: bool = True  # independent draws per frame (official); false: one draw for the whole clip

    def build(self) -> Any:
        """The configured :class:`~avs_mamba.data.transforms.TrainAugment`, or None when disabled."""
        if not self.enabled:
            return None
        from avs_mamba.data.transforms import TrainAugment

        options = self.model_dump(exclude={"enabled"})
        return TrainAugment(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


class DataSection(_Section):
    """Which AVSBench task to load, from where, at what size and with which training augmentation."""

    task: Literal["s4", "ms3", "avss"] = "s4"
    root: str = "data/synthetic"
    synthetic: bool = True
    image_size: PositiveInt = 224
    # None resolves to the task's clip length (TASK_FRAMES); fewer frames are allowed for scaling studies.
    num_frames: PositiveInt | None = None
    # VGGish log-mel input: a cached .pkl, the .wav, or the .pkl where present and the .wav otherwise.
    audio_source: Literal["auto", "pkl", "wav"] = "auto"
    num_workers: NonNegativeInt = 0
    # Cap on clips per split (None = all): keeps smoke runs small.
    max_clips: PositiveInt | None = None
    augment: AugmentSection = Field(default_factory=AugmentSection)
    # S4/MS3 train masks brought to image_size: nearest (binary) or bilinear (soft targets, official AVS-Mamba).
    train_mask_resize: Literal["nearest", "bilinear"] = "nearest"
    # AVSS labels_rgb colour outside the palette: class 0, logged once per clip (official), or an error.
    off_palette: Literal["background", "error"] = "background"

    @model_validator(mode="after")
    def _resolve_frames(self) -> DataSection:
        if self.num_frames is None:
            self.num_frames = TASK_FRAMES[self.task]
        return self


class TrainSection(_Section):
    """Optimiser, schedule length, loss and numerics of one training run."""

    optimizer: Literal["adamw"] = "adamw"  # Adam without weight decay (TPAVI) is AdamW with weight_decay 0
    lr: PositiveFloat = 2e-5
    # Rate over the run (avs_mamba.lr_schedule): the official recipes are constant, without warm-up.
    lr_schedule: LRSchedule = "constant"
    warmup_steps: NonNegativeInt = 0
    weight_decay: NonNegativeFloat = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    # Training stops at whichever limit is reached first; at least one must be set.
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 2
    backbone_freeze_epochs: NonNegativeInt = 0
    # Loss term -> weight; a weight of 0 switches an inherited term off. "dice" or "dice+bce" is shorthand.
    loss: dict[LossTerm, NonNegativeFloat] = Field(default_factory=lambda: {"dice": 1.0})
    aux_loss_weight: NonNegativeFloat = 1.0  # weight of the losses on the intermediate outputs
    # TPAVI's AVM term over the labelled frames: "mean" (official AVSS) or "sum" (official MS3, kl_div reduction='sum').
    avm_reduction: Literal["mean", "sum"] = "mean"
    grad_clip: PositiveFloat | None = None  # max global gradient norm; None = no clipping
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU); the official recipes train in fp32
    seed: int = 0
    eval_every: PositiveInt = 1  # epochs between validation passes
    eval_from_epoch: NonNegativeInt = 0
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {term.strip(): 1.0 for term in value.split("+")}
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set train.epochs or train.max_steps (training stops at whichever comes first)")
        if not any(weight > 0 for weight in self.loss.values()):
            raise ValueError(f"train.loss needs at least one term with a positive weight, got {self.loss}")
        return self


class EvalSection(_Section):
    """Evaluation settings; ``batch_size`` matters because the official M_F picks its threshold per batch."""

    batch_size: PositiveInt = 4
    # Split the best checkpoint is chosen on: val (honest, default) or test (what the official AVS-Mamba scripts do:
    # evaluate on test every epoch and keep the best). Every table labels the selection of each row.
    selection: Literal["val", "test"] = "val"
    protocols: list[Literal["official", "clean"]] = Field(default_factory=lambda: ["official", "clean"], min_length=1)
    num_overlays: NonNegativeInt = 4  # qualitative mask overlays saved per run

    @field_validator("protocols")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"eval.protocols lists a protocol twice: {value}")
        return value


class ExperimentConfig(_Section):
    """The resolved configuration of one run: what is trained, on what data, how, and how it is evaluated."""

    name: str = Field(pattern=_NAME_PATTERN)  # the row label in tables and run names; defaults to the YAML stem
    variant: str = "default"
    profile: Literal["smoke", "paper"] = "smoke"
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection
    eval: EvalSection = Field(default_factory=EvalSection)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Read a resolved config written by :meth:`to_yaml` exactly as stored: no bases, presets or overrides,
        and no model registry lookup (its model options are already resolved)."""
        path = Path(path)
        data = _read_yaml(path)
        loader_keys = sorted(set(data) & set(_LOADER_KEYS))
        if loader_keys:
            raise ValueError(f"config file {path} is not a resolved config (it has {loader_keys}); use load_config")
        return config_from_dict(data, source=str(path), resolve_model=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible nested dict (tuples become lists)."""
        return self.model_dump(mode="json")

    def flatten(self) -> dict[str, Any]:
        """Flat ``{"train.lr": 2e-05, "model.mte.tmb": True, ...}``: dotted keys to leaf values (lists kept whole)."""
        return _flatten(self.to_dict())

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text; written to ``path`` too when given. ``load_config`` reads it back unchanged."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def config_hash(self, length: int = 12) -> str:
        """Stable hex digest of what the run computes (keys in ``HASH_EXCLUDE`` left out): equal hash, same run."""
        flat = {key: value for key, value in self.flatten().items() if not _excluded(key)}
        blob = json.dumps(flat, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:length]

    def build_model(self) -> Any:
        """Build the configured model through the registry (the one way runs construct models)."""
        from avs_mamba.registry import create_model

        return create_model(self.model.name, **self.model.options)


def _excluded(key: str) -> bool:
    return any(key == ex or key.startswith(ex + ".") for ex in HASH_EXCLUDE)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


# ----------------------------------------------------------------------------------------------------------------
# Size presets


def register_size_preset(model_name: str, size: str, preset: Mapping[str, Any]) -> None:
    """Register config values (a partial config dict, e.g. ``{"model": {"d_model": 32}}``) for one model at one size.

    They sit beneath every YAML file (above the generic ``SIZE_PRESETS[size]``), so files and overrides still win.
    """
    if size not in SIZES:
        raise ValueError(f"size preset for model {model_name!r}: unknown size {size!r}; expected one of {SIZES}")
    if not isinstance(preset, Mapping):
        raise ValueError(
            f"size preset {size!r} for model {model_name!r} must be a mapping, got {type(preset).__name__}"
        )
    unknown = sorted(set(preset) - set(ExperimentConfig.model_fields))
    if unknown:
        raise ValueError(
            f"size preset {size!r} for model {model_name!r} has unknown top-level keys {unknown}; "
            f"expected some of {sorted(ExperimentConfig.model_fields)}"
        )
    if (model_name, size) in _MODEL_SIZE_PRESETS:
        raise ValueError(f"a {size!r} size preset for model {model_name!r} is already registered")
    _MODEL_SIZE_PRESETS[(model_name, size)] = copy.deepcopy(dict(preset))


def size_preset(size: str, model_name: str | None = None) -> dict[str, Any]:
    """The merged preset layers for ``size`` (generic, then the model's own when registered)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    merged = copy.deepcopy(SIZE_PRESETS[size])
    if model_name is not None:
        merged = deep_merge(merged, _MODEL_SIZE_PRESETS.get((model_name, size), {}))
    return merged


# ----------------------------------------------------------------------------------------------------------------
# Merging and overrides


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """New dict: ``override`` on top of ``base``; nested dicts merge, any other value (lists too) replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


Provenance = dict[tuple[str, ...], str]


def _merge_layer(data: dict[str, Any], prov: Provenance, layer: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Merge ``layer`` onto ``data`` and record ``source`` for every key path the layer sets."""
    for path in _leaf_paths(layer):
        for old in [p for p in prov if p[: len(path)] == path or path[: len(p)] == p]:
            del prov[old]  # a replaced subtree or a scalar turned into a dict no longer comes from the old layer
        prov[path] = source
    return deep_merge(data, layer)


def _leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            paths.extend(_leaf_paths(value, path))
        else:
            paths.append(path)
    return paths


def _source_of(prov: Provenance, default: str) -> Callable[[tuple[str, ...]], str]:
    def source(loc: tuple[str, ...]) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in prov:
                return prov[loc[:n]]
        under = sorted({src for path, src in prov.items() if path[: len(loc)] == loc}) if loc else []
        return ", ".join(under) if under else default

    return source


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}``; the value follows YAML scalar rules (``""`` is null)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY_RE.match(key):
        raise ValueError(f"override {text!r}: expected KEY=VALUE with a dotted key such as train.lr=1e-3")
    if key.split(".")[0] in _LOADER_KEYS:
        raise ValueError(f"override {text!r}: {key.split('.')[0]!r} can only be set in a YAML file")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({err})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """All overrides merged into one nested dict; later ones win."""
    merged: dict[str, Any] = {}
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    return merged


# ----------------------------------------------------------------------------------------------------------------
# YAML reading


class _Loader(yaml.SafeLoader):
    """Safe loader that reads ``1e-3`` as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _bases(path: Path, data: Mapping[str, Any]) -> list[Path]:
    base = data.get("base", [])
    names = [base] if isinstance(base, str) else base
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"config file {path}: 'base' must be a file name or a list of file names, got {base!r}")
    return [path.parent / name for name in names]


def _named_block(path: Path, data: Mapping[str, Any], key: str, allowed: tuple[str, ...], name: str) -> dict[str, Any]:
    """The ``key.<name>`` block of a file (``sizes.smoke``, ``tasks.avss``), checked against the allowed names."""
    blocks = data.get(key, {})
    if not isinstance(blocks, Mapping) or not all(isinstance(block, Mapping) for block in blocks.values()):
        raise ValueError(f"config file {path}: '{key}' must map a name to a mapping, got {blocks!r}")
    unknown = sorted(set(blocks) - set(allowed))
    if unknown:
        raise ValueError(f"config file {path}: {key}.{unknown[0]} is not one of {allowed}")
    return dict(blocks.get(name, {}))


def _read_chain(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The file and all its bases, depth first, bases before the files that name them."""
    key = path.resolve()
    if key in stack:
        chain = " -> ".join(str(p) for p in (*stack, key))
        raise ValueError(f"config file {path}: 'base' forms a cycle ({chain})")
    data = _read_yaml(path)
    files: list[tuple[Path, dict[str, Any]]] = []
    for base in _bases(path, data):
        files.extend(_read_chain(base, (*stack, key)))
    files.append((path, data))
    return files


def _assemble(
    data: dict[str, Any],
    files: list[tuple[Path, dict[str, Any]]],
    size: str | None,
    prov: Provenance,
    task: str | None = None,
) -> dict[str, Any]:
    """Merge each file (bases first) onto ``data``, followed by its ``tasks`` block for ``task`` (a task's recipe,
    e.g. AVSS's 71 classes and CE loss), then its ``sizes`` block for ``size`` (so a smoke schedule still wins), then
    the task block's own ``sizes`` block (``tasks.avss.sizes.paper``: a task's recipe at one size)."""
    for path, body in files:
        data = _merge_layer(data, prov, {k: v for k, v in body.items() if k not in _LOADER_KEYS}, str(path))
        task_block = _named_block(path, body, "tasks", TASKS, task) if task is not None else {}
        task_sizes = {"sizes": task_block.pop("sizes")} if "sizes" in task_block else {}
        if task is not None:
            data = _merge_layer(data, prov, task_block, f"{path} (tasks.{task})")
        if size is not None:
            data = _merge_layer(data, prov, _named_block(path, body, "sizes", SIZES, size), f"{path} (sizes.{size})")
            block = _named_block(path, task_sizes, "sizes", SIZES, size)
            data = _merge_layer(data, prov, block, f"{path} (tasks.{task}.sizes.{size})")
    return data


# ----------------------------------------------------------------------------------------------------------------
# Validation


def format_validation_error(
    error: ValidationError,
    schema: type[BaseModel],
    *,
    prefix: str = "",
    source_of: Callable[[tuple[str, ...]], str] | None = None,
) -> str:
    """One line per problem: dotted key, what is wrong, the offending value, close key names, and its source."""
    lines = []
    for err in error.errors():
        raw = [part for part in err["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        loc = tuple(str(part) for part in raw if isinstance(part, str))  # key path; list indices dropped
        key = _dotted([*filter(None, prefix.split(".")), *raw]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            message = f"unknown key{hint} (allowed here: {', '.join(allowed)})"
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = f"{err['msg']}, got {err['input']!r}"
            if err["type"] not in ("value_error", "assertion_error"):
                message += f" ({type(err['input']).__name__})"
        src = source_of(tuple(p for p in (*prefix.split("."), *loc) if p)) if source_of else None
        lines.append(f"  {key}: {message}" + (f"  [from {src}]" if src else ""))
    return "\n".join(lines)


def _dotted(loc: Iterable[str | int]) -> str:
    """``("train", "betas", 1)`` -> ``"train.betas[1]"``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _allowed_keys(schema: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Field names of the (nested) model reached from ``schema`` by following ``loc``."""
    current: Any = schema
    for part in loc:
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_in(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((arg for arg in typing.get_args(annotation) if _is_model(arg)), None)
    return None


def config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    resolve_model: bool = True,
    source_of: Callable[[tuple[str, ...]], str] | None = None,
) -> ExperimentConfig:
    """Validate a nested config dict; with ``resolve_model`` the model options are checked and filled in."""
    try:
        config = ExperimentConfig.model_validate(dict(data))
    except ValidationError as err:
        detail = format_validation_error(err, ExperimentConfig, source_of=source_of)
        raise ValueError(f"invalid config {source}:\n{detail}") from None
    if resolve_model:
        from avs_mamba.registry import resolve_model_config

        try:
            options = resolve_model_config(
                config.model.name, config.model.options, key_prefix="model", source_of=source_of
            )
        except ValueError as err:
            raise ValueError(f"invalid config {source}: {err}") from None
        config.model = ModelSection(name=config.model.name, **options.model_dump(mode="json"))
    return config


def load_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    size: str | None = None,
    *,
    resolve_model: bool = True,
) -> ExperimentConfig:
    """Load a YAML experiment config with its bases, size presets and ``key=value`` overrides, then validate it.

    Args:
        path: The YAML file; ``base:`` paths inside it are relative to its folder.
        overrides: Dotted ``key=value`` strings (``train.lr=1e-3``, ``model.mte.tmb=false``), applied last.
        size: ``"smoke"`` or ``"paper"``; when None, the ``profile`` the files/overrides set, else ``"smoke"``.
        resolve_model: Check the model options against the registered model's config class and fill its defaults.

    Raises:
        FileNotFoundError: The file or one of its bases is missing.
        ValueError: Invalid YAML, an unknown key or a wrong type; the message names the key and the layer it came from.
    """
    from avs_mamba.registry import import_builtin_models

    path = Path(path)
    files = _read_chain(path)
    override_layers = [(parse_override(text), f"override {text!r}") for text in overrides]

    # The size must be known before the layers are merged: it selects the presets and each file's sizes block.
    scratch = _assemble({}, files, None, {})
    for layer, _ in override_layers:
        scratch = deep_merge(scratch, layer)
    size = size or scratch.get("profile") or "smoke"
    if size not in SIZES:
        raise ValueError(f"config {path}: unknown size/profile {size!r}; expected one of {SIZES}")
    model_name = scratch.get("model", {}).get("name") if isinstance(scratch.get("model"), Mapping) else None
    data_section = scratch.get("data")
    task = data_section.get("task", "s4") if isinstance(data_section, Mapping) else "s4"
    if task not in TASKS:
        raise ValueError(f"config {path}: data.task is {task!r}; expected one of {TASKS}")

    import_builtin_models()  # model modules register their size presets on import
    prov: Provenance = {}
    data = _merge_layer({}, prov, SIZE_PRESETS[size], f"size preset {size!r}")
    if model_name is not None:
        data = _merge_layer(
            data, prov, _MODEL_SIZE_PRESETS.get((model_name, size), {}), f"{size!r} preset of model {model_name!r}"
        )
    data = _assemble(data, files, size, prov, task)
    for layer, source in override_layers:
        data = _merge_layer(data, prov, layer, source)
    data["profile"] = size
    data.setdefault("name", path.stem)
    return config_from_dict(data, source=str(path), resolve_model=resolve_model, source_of=_source_of(prov, str(path)))
