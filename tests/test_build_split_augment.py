"""data.augment through build_split: the train split is augmented as the transform says; val and test never are."""

from pathlib import Path

import pytest
import torch

from avs_mamba.config import load_config
from avs_mamba.data.synthetic import SplitCounts, SynthConfig, generate
from avs_mamba.evaluation import build_split

FULL = Path(__file__).resolve().parents[1] / "ablations" / "full.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    synth = SynthConfig(image_size=32, s4=SplitCounts(train=2, val=1, test=1))
    return generate("s4", tmp_path_factory.mktemp("aug"), synth)["s4"]


def _split(root: Path, split: str, *overrides: str):
    config = load_config(FULL, [f"data.root={root}", "data.image_size=32", *overrides], size="smoke")
    return build_split(config, split)


def test_train_batches_are_augmented_as_configured(root: Path) -> None:
    plain = _split(root, "train")[0]
    # flip only: frames and masks are exactly the mirrored un-augmented ones, on the frames the draw flipped
    flip = _split(
        root,
        "train",
        "data.augment.enabled=true",
        "data.augment.flip_p=1",
        "data.augment.photometric=false",
        "data.augment.geometry=false",
    )[0]
    assert flip["frames"].equal(plain["frames"].flip(-1))
    assert flip["masks"].equal(plain["masks"].flip(-1))
    # the official augmentation changes the frames and keeps each mask a mask of the same frame size
    official = _split(root, "train", "data.augment.enabled=true")[0]
    assert official["frames"].shape == plain["frames"].shape and not official["frames"].equal(plain["frames"])
    assert official["masks"].shape == plain["masks"].shape


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_are_never_augmented(root: Path, split: str) -> None:
    plain = _split(root, split)[0]
    on = _split(root, split, "data.augment.enabled=true", "data.train_mask_resize=bilinear")[0]
    assert on["frames"].equal(plain["frames"]) and on["masks"].equal(plain["masks"])
    assert set(torch.unique(on["masks"]).tolist()) <= {0.0, 1.0}
