"""Recipe card: a resolved config's training and evaluation recipe, item by item, against the official code.

Each card entry is one dotted config key (``train.lr``, ``data.image_size``, ``eval.batch_size``, ...) with its
resolved ``value`` and either the ``source`` it reproduces (``repo@commit:path`` of the official code) or a
``deviation`` saying why it differs. The facts (official values, sources, deliberate deviations) are data, in
``avs_mamba/recipes.yaml``; adding a key for a model is one line there. A model without entries is an error that says
what to add, so a new model cannot get a card (and its tests cannot pass) without stating its recipe.

The card goes into every run's ``metrics.json`` (``recipe``) and MLflow params (``recipe.<key>``); ``avs-bench
recipe`` prints it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from avs_mamba.config import ExperimentConfig

__all__ = ["FACTS_FILE", "RecipeError", "load_facts", "card_keys", "recipe_card", "card_params", "format_card"]

FACTS_FILE = Path(__file__).with_name("recipes.yaml")


class RecipeError(ValueError):
    """The facts table lacks an entry for a model or key, or an entry is malformed."""


@functools.lru_cache(maxsize=1)
def _cached_facts(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise RecipeError(f"{path}: expected a mapping with 'card_keys', 'sources' and 'models'")
    return data


def load_facts(path: str | Path = FACTS_FILE) -> dict[str, Any]:
    """The facts table (parsed once per path)."""
    return _cached_facts(str(path))


def card_keys(task: str, facts: Mapping[str, Any] | None = None) -> list[str]:
    """The keys every model's card has for ``task``."""
    facts = facts or load_facts()
    return [*facts["card_keys"], *facts.get("task_keys", {}).get(task, [])]


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise RecipeError(f"recipe card key {dotted!r} is not a key of the resolved config")
        node = node[part]
    return node


def _value(config: ExperimentConfig, key: str) -> Any:
    value = _lookup(config.to_dict(), key)
    if key == "data.augment" and not value.get("enabled"):
        return {"enabled": False}  # the other knobs do nothing while it is off
    if key == "train.loss":
        return {term: w for term, w in value.items() if w > 0}  # a 0 weight switches an inherited term off
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def _text(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": ")) if isinstance(value, dict | list) else str(value)


def _fact(facts: Mapping[str, Any], model: str, task: str, key: str) -> Mapping[str, Any]:
    where = f"{FACTS_FILE.name}"
    block = facts["models"].get(model)
    if block is None:
        raise RecipeError(
            f"model {model!r} has no recipe card entries: add 'models: {model}: all:' to {where} with one line per "
            f"card key ({', '.join(card_keys(task, facts))}), each {{official: <value>, source: <repo@commit:path>}} "
            "or {deviation: <why>}"
        )
    fact = block.get(task, {}).get(key) or block.get("all", {}).get(key) or block.get("default")
    if fact is None:
        raise RecipeError(
            f"model {model!r} has no recipe card entry for {key} ({task}): add under 'models: {model}: all:' (or "
            f"'{task}:') in {where} the line  {key}: {{official: <value>, source: <repo@commit:path>}}  "
            "or  {deviation: <why>}"
        )
    if not isinstance(fact, Mapping) or not ({"source", "deviation"} & set(fact)):
        raise RecipeError(f"{where}: models.{model} entry for {key} needs a source or a deviation, got {fact!r}")
    return fact


def _source(facts: Mapping[str, Any], name: str) -> str:
    return str(facts.get("sources", {}).get(name, name))


def _entry(config: ExperimentConfig, key: str, fact: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    value = _value(config, key)
    entry: dict[str, Any] = {"value": value}
    if "official" not in fact:  # nothing official to reproduce
        entry["deviation"] = str(fact.get("deviation", "")).strip()
        return entry
    official, source = fact["official"], _source(facts, str(fact.get("source", "")))
    if _same(value, official):
        entry["source"] = source
    elif "deviation" in fact:
        entry["deviation"] = f"{str(fact['deviation']).strip()} (official: {_text(official)}, {source})"
    elif config.profile == "smoke":
        entry["deviation"] = f"smoke profile (CPU-sized synthetic run); official: {_text(official)} ({source})"
    else:
        entry["deviation"] = f"set here to {_text(value)}; official: {_text(official)} ({source})"
    return entry


def recipe_card(
    config: ExperimentConfig, facts: Mapping[str, Any] | None = None, *, strict: bool = True
) -> dict[str, dict[str, Any]]:
    """``{dotted key: {"value": ..., "source": ...} or {"value": ..., "deviation": ...}}`` for ``config``.

    The keys are the shared card keys plus every key the model's facts name for the task (model-level keys such as
    a drop-path rate). A model or key without an entry in the facts table raises :class:`RecipeError` saying what to
    add; with ``strict=False`` (training records) its entry is a deviation carrying that message instead.
    """
    facts = facts or load_facts()
    model, task = config.model.name, config.data.task
    block = facts["models"].get(model) or {}
    keys = card_keys(task, facts)
    for extra in (*block.get("all", {}), *block.get(task, {})):
        if extra not in keys:
            keys.append(extra)
    card = {}
    for key in keys:
        try:
            card[key] = _entry(config, key, _fact(facts, model, task, key), facts)
        except RecipeError as err:
            if strict:
                raise
            card[key] = {"value": _value(config, key), "deviation": f"no recipe card entry: {err}"}
    return card


def card_params(card: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """MLflow params of a card: ``recipe.<key>`` -> ``source: ...`` or ``deviation: ...``."""
    return {
        f"recipe.{key}": f"source: {e['source']}" if "source" in e else f"deviation: {e['deviation']}"
        for key, e in card.items()
    }


def format_card(config: ExperimentConfig, card: Mapping[str, Mapping[str, Any]]) -> str:
    """The card as text: a header naming the run, then one line per key with its value and provenance."""
    head = f"recipe card: {config.name} ({config.model.name}), task {config.data.task}, size {config.profile}"
    width = max(len(key) for key in card)
    lines = [head]
    for key, entry in card.items():
        how = f"source: {entry['source']}" if "source" in entry else f"deviation: {entry['deviation']}"
        lines.append(f"  {key:<{width}}  {_text(entry['value'])}\n  {'':<{width}}    {how}")
    deviations = sum("deviation" in e for e in card.values())
    lines.append(f"{len(card)} items, {len(card) - deviations} as the official code, {deviations} deviations")
    return "\n".join(lines)
