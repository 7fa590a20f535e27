"""Recipe card: every paper YAML, for every task, against the official values pinned in tests/data.

The pinned values were read from the official code (numbers and names); the card's own facts table
(``avs_mamba/recipes.yaml``) must agree with them, and the paper profile of every ablation and baseline must either
reproduce each one or declare the deviation with its reason.
"""

import json
from pathlib import Path

import pytest
import yaml

from avs_mamba.cli import main
from avs_mamba.config import TASKS, load_config
from avs_mamba.recipe import RecipeError, card_keys, card_params, load_facts, recipe_card

REPO = Path(__file__).resolve().parents[1]
PAPER_YAMLS = sorted(REPO.glob("ablations/*.yaml")) + sorted(REPO.glob("baselines/*.yaml"))
OFFICIAL = yaml.safe_load((REPO / "tests/data/official_recipes.yaml").read_text())
UNDECLARED = "set here to"  # how the card words a deviation that the facts table does not declare


def _paper(path: Path, task: str):
    return load_config(path, [f"data.task={task}"], size="paper")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("path", PAPER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_profile_reproduces_the_official_recipe(path: Path, task: str) -> None:
    config = _paper(path, task)
    card = recipe_card(config)  # a model or key without a card entry raises, saying what to add
    assert set(card_keys(task)) <= set(card), "every card has the shared keys"
    model = config.model.name
    assert model in OFFICIAL, f"pin the official values of {model!r} in tests/data/official_recipes.yaml"
    if OFFICIAL[model] is None:  # no official code: every entry must say so
        assert all("deviation" in e and "no official code" in e["deviation"] for e in card.values())
        return
    for key, official in OFFICIAL[model][task].items():
        entry = card[key]
        if "source" in entry:
            assert entry["value"] == official, f"{path.name} {task} {key}: card value differs from the official"
            assert "@" in entry["source"] and ":" in entry["source"], f"{key}: source must be repo@commit:path"
        else:
            assert entry["deviation"], f"{path.name} {task} {key}: deviation without a reason"
    undeclared = {k: e["deviation"] for k, e in card.items() if e.get("deviation", "").startswith(UNDECLARED)}
    assert not undeclared, f"{path.name} {task}: undeclared deviations of the paper profile: {undeclared}"


@pytest.mark.parametrize("model", [m for m, v in OFFICIAL.items() if v is not None])
def test_facts_table_agrees_with_the_pinned_official_values(model: str) -> None:
    facts = load_facts()["models"][model]
    for task, pinned in OFFICIAL[model].items():
        for key, official in pinned.items():
            fact = facts.get(task, {}).get(key) or facts["all"][key]
            assert fact["official"] == official, f"recipes.yaml {model} {task} {key}"


def test_paper_values_that_the_issue_names() -> None:
    """Worked out from the official scripts: 512 px, eval batch 1, selection on val by default (test = official)."""
    card = recipe_card(_paper(REPO / "ablations/full.yaml", "ms3"))
    assert card["data.image_size"] == {"value": 512, "source": "SitongGong/AVS-Mamba@c47abde:train_ablation.py"}
    assert card["eval.batch_size"]["value"] == 1
    assert card["eval.selection"]["value"] == "val" and "eval.selection=test" in card["eval.selection"]["deviation"]
    assert card["data.augment"]["value"]["crop_min"] == 384 and "source" in card["data.augment"]
    on_test = recipe_card(load_config(REPO / "ablations/full.yaml", ["data.task=ms3", "eval.selection=test"], "paper"))
    assert on_test["eval.selection"] == {"value": "test", "source": "SitongGong/AVS-Mamba@c47abde:train_ablation.py"}
    tpavi = recipe_card(_paper(REPO / "baselines/tpavi.yaml", "avss"))
    assert (tpavi["train.eval_from_epoch"]["value"], tpavi["train.eval_every"]["value"]) == (16, 2)


def test_an_override_is_reported_as_a_deviation() -> None:
    config = load_config(REPO / "ablations/full.yaml", ["data.task=s4", "train.lr=1e-4"], size="paper")
    entry = recipe_card(config)["train.lr"]
    assert entry["value"] == pytest.approx(1e-4) and entry["deviation"].startswith(UNDECLARED)
    assert "official: 2e-05" in entry["deviation"]
    smoke = recipe_card(load_config(REPO / "ablations/full.yaml", size="smoke"))
    assert smoke["train.lr"]["deviation"].startswith("smoke profile")


def test_a_model_without_entries_says_what_to_add() -> None:
    facts = dict(load_facts())
    config = _paper(REPO / "ablations/full.yaml", "s4")
    with pytest.raises(
        RecipeError, match=r"model 'avs_mamba' has no recipe card entries: add 'models: avs_mamba: all:'"
    ):
        recipe_card(config, {**facts, "models": {}})
    partial = {**facts["models"]["avs_mamba"], "all": {}, "s4": {}}
    with pytest.raises(RecipeError, match=r"no recipe card entry for train\.optimizer \(s4\).*official: <value>"):
        recipe_card(config, {**facts, "models": {"avs_mamba": partial}})
    lenient = recipe_card(config, {**facts, "models": {}}, strict=False)
    assert lenient["train.lr"]["deviation"].startswith("no recipe card entry")


def test_a_model_key_is_one_line_of_data() -> None:
    """A model-level key (e.g. a drop-path rate) joins the card from one line in the facts table."""
    facts = load_facts()
    models = dict(facts["models"])
    block = dict(models["avs_mamba"])
    block["all"] = {**block["all"], "model.drop_path_rate": {"official": 0.1, "source": "repo@abc1234:model.py"}}
    models["avs_mamba"] = block
    config = _paper(REPO / "ablations/full.yaml", "s4")
    entry = recipe_card(config, {**facts, "models": models})["model.drop_path_rate"]
    assert entry["value"] == config.model.options["drop_path_rate"]
    assert ("source" in entry) == (entry["value"] == 0.1)
    assert card_params({"model.drop_path_rate": entry})["recipe.model.drop_path_rate"].split(":")[0] in (
        "source",
        "deviation",
    )


def test_cli_recipe_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["recipe", "--config", str(REPO / "ablations/full.yaml"), "--task", "ms3", "--size", "paper", "--json"])
        == 0
    )
    card = json.loads(capsys.readouterr().out)
    assert card["data.image_size"]["value"] == 512 and card["eval.batch_size"]["value"] == 1
    assert all(set(e) in ({"value", "source"}, {"value", "deviation"}) for e in card.values())
    assert (
        main(["recipe", "--config", str(REPO / "baselines/avsegformer.yaml"), "--task", "avss", "--size", "smoke"]) == 0
    )
    text = capsys.readouterr().out
    assert text.startswith("recipe card: avsegformer (avsegformer), task avss, size smoke") and "deviations" in text
