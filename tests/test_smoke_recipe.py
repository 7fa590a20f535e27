"""The smoke recipe of AVS-Mamba: what ``ablations/full.yaml --size smoke`` resolves to, and that it learns.

The smoke profile is the CPU demo and CI run (DESIGN §10): a tiny random-init model on synthetic AVSBench. These
checks pin the recipe the ablation files share and show that a few optimiser steps at the smoke learning rate fit a
tiny synthetic S4 set, through the same dataset, loss and model code the engine uses.
"""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from avs_mamba.config import load_config
from avs_mamba.data.synthetic import SplitCounts, SynthConfig, generate
from avs_mamba.engine import compute_loss
from avs_mamba.evaluation import build_split, forward_batch

ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"
SIZE = 32  # the smallest stored size the generator allows; keeps every step well under a second


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_smoke_recipe_resolves_for_every_ablation():
    """Every ablation inherits full.yaml's smoke block: large step (half of it on S4), no frozen backbone, random-init
    tiny model."""
    for path in sorted(ABLATIONS.glob("*.yaml")):
        cfg = load_config(path, size="smoke")
        assert cfg.data.task == "s4" and cfg.train.lr == pytest.approx(5e-4), path.name
        assert load_config(path, ["data.task=ms3"], size="smoke").train.lr == pytest.approx(1e-3), path.name
        assert cfg.train.backbone_freeze_epochs == 0, path.name
        assert cfg.data.num_frames == 5, path.name  # S4 clips keep all five frames
        model = cfg.model.options
        assert (model["d_model"], model["backbone"], model["pretrained"]) == (32, "pvt_v2_b0", "none"), path.name
        assert model["audio_encoder"] == "logmel_cnn", path.name


def test_smoke_model_shapes_on_an_s4_clip():
    """The smoke model maps 2 clips x 5 frames to one logit map per frame, plus the intermediate output."""
    cfg = load_config(ABLATIONS / "full.yaml", [f"data.image_size={SIZE}"], size="smoke")
    model = cfg.build_model().eval()
    frames, audio = torch.randn(2, 5, 3, SIZE, SIZE), torch.randn(2, 5, 1, 96, 64)
    with torch.no_grad():
        out = model(frames, audio)
    assert out.logits.shape == (2, 5, 1, SIZE, SIZE)
    assert len(out.aux) == 1 and out.aux[0].shape == (2, 5, 1, SIZE, SIZE)
    assert torch.isfinite(out.logits).all()


def test_smoke_recipe_fits_a_tiny_synthetic_set(tmp_path):
    """Ten AdamW steps at the smoke learning rate on two S4 clips cut the Dice loss (frame 1 only, as S4 trains)."""
    synth = SynthConfig(image_size=SIZE, s4=SplitCounts(train=2, val=1, test=1))
    root = generate("s4", tmp_path, synth)["s4"]
    cfg = load_config(
        ABLATIONS / "full.yaml",
        [f"data.root={root}", f"data.image_size={SIZE}", "model.drop_path_rate=0.0"],
        size="smoke",
    )
    batch = next(iter(DataLoader(build_split(cfg, "train"), batch_size=2)))
    assert batch["label_flags"][:, 0].all() and not batch["label_flags"][:, 1:].any()  # S4 train: frame 1 labelled

    model = cfg.build_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    losses = []
    for _ in range(10):
        loss = compute_loss(model, forward_batch(model, batch, torch.device("cpu"), amp=False), batch, cfg).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Dice on the final and the intermediate mask: each term lies in [0, 1], so the sum starts near its maximum 2.
    assert 0.5 < losses[0] <= 2.0
    assert min(losses[-3:]) < 0.8 * losses[0], losses
