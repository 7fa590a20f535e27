"""The official AVS-Mamba augmentation, step by step, on values worked out by hand or by an independent oracle."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from avs_mamba.data.transforms import Draws, TrainAugment, _short_side_size, nearest_resize, photometric_distort


class Scripted(Draws):
    """Draws that replay fixed coins, uniforms and integers (the order the official transform asks for them)."""

    def __init__(self, coins: list[bool], uniforms: list[float] = (), ints: list[int] = ()) -> None:
        self.coins, self.uniforms, self.ints = list(coins), list(uniforms), list(ints)

    def coin(self, p: float = 0.5) -> bool:
        return self.coins.pop(0)

    def uniform(self, low: float, high: float) -> float:
        return self.uniforms.pop(0)

    def randint(self, low: int, high: int) -> int:
        value = self.ints.pop(0)
        assert low <= value <= high
        return value


def _grey(value: int) -> Image.Image:
    return Image.fromarray(np.full((2, 2, 3), value, dtype=np.uint8))


def test_brightness_wraps_like_the_official_uint8_cast() -> None:
    # coins: brightness on, contrast-first order, contrast off, saturation off, hue off, channel swap off
    coins = [True, True, False, False, False, False]
    out = np.asarray(photometric_distort(_grey(250), Scripted(coins, [10.0])))
    assert (out == 4).all(), "250 + 10 = 260 wraps to 4 as numpy's float->uint8 cast does"
    clipped = np.asarray(photometric_distort(_grey(250), Scripted(coins, [10.0]), overflow="clip"))
    assert (clipped == 255).all()
    assert (np.asarray(photometric_distort(_grey(100), Scripted(coins, [10.0]))) == 110).all()


def test_hue_reads_the_rgb_array_as_bgr() -> None:
    """Pure red RGB (255, 0, 0) read as BGR is blue: H = 240; +18 -> 258 degrees, sector 4, fraction 0.3, giving
    "BGR" (255, 0, 76.5) -> stored RGB array (255, 0, 76)."""
    red = Image.fromarray(np.array([[[255, 0, 0]]], dtype=np.uint8))
    coins = [False, False, False, True, False]  # no brightness, HSV first, sat off, hue on, (contrast off), no swap
    out = np.asarray(photometric_distort(red, Scripted([*coins, False], [18.0])))
    assert out[0, 0].tolist() == [255, 0, 76]


def test_official_resize_sizes() -> None:
    assert _short_side_size(224, 224, 512, 640) == (512, 512)
    assert _short_side_size(300, 200, 400, 640) == (400, 600)
    assert _short_side_size(300, 200, 400, 500) == (333, 499), "long side capped: size = round(500 * 200 / 300)"
    assert _short_side_size(224, 224, 224, 640) == (224, 224)


@pytest.mark.parametrize("size", [(512, 512), (300, 417), (100, 37)])
def test_mask_resize_is_torch_legacy_nearest(size: tuple[int, int]) -> None:
    mask = (np.random.default_rng(0).uniform(size=(224, 224)) > 0.5).astype(np.uint8)
    oracle = F.interpolate(torch.from_numpy(mask)[None, None].float(), size, mode="nearest")[0, 0] > 0.5
    np.testing.assert_array_equal(nearest_resize(mask, *size).astype(bool), oracle.numpy())


def test_crop_branch_moves_frame_and_mask_together() -> None:
    """Resize-crop-resize on a frame whose content is its mask: both end up cropped and resized alike."""
    mask = np.zeros((224, 224), dtype=np.uint8)
    mask[60:150, 40:120] = 1
    image = Image.fromarray(np.repeat(mask[:, :, None] * 255, 3, axis=2))
    augment = TrainAugment(flip_p=0.0, photometric=False)
    # coin: flip off, branch (False -> crop branch since coin(1 - crop_p) is False); ints: scale 500, crop w/h,
    # top, left, final scale 288
    draws = Scripted([False, False], ints=[1, 300, 260, 100, 50, 0])
    out, out_mask = augment(image, mask, draws)
    assert out_mask.shape == (out.height, out.width) and min(out.size) == 288
    agree = ((np.asarray(out)[:, :, 0] > 127) == out_mask.astype(bool)).mean()
    assert agree > 0.98
