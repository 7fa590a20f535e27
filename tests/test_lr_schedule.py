"""Learning-rate schedules: values worked out by hand, and the errors."""

import math

import pytest

from avs_mamba.lr_schedule import lr_at


def test_constant_with_linear_warmup():
    assert [lr_at(s, 10, 1.0, "constant", warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_at(s, 3, 2e-5) for s in range(3)] == [2e-5] * 3  # the official recipes: constant, no warm-up


def test_cosine_and_poly_decay():
    # 10 steps, no warm-up: p = step / 10
    assert lr_at(0, 10, 1.0, "cosine") == 1.0
    assert lr_at(5, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(9, 10, 1.0, "cosine") == pytest.approx(0.5 * (1 - 0.9510565163))  # cos(0.9 pi)
    assert lr_at(5, 10, 1.0, "poly") == pytest.approx(0.5**0.9)
    assert lr_at(9, 10, 1.0, "poly") == pytest.approx(0.1**0.9)
    # warm-up 2 then cosine over the remaining 8 steps: step 6 is half-way
    assert [lr_at(s, 10, 1.0, "cosine", warmup_steps=2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_at(6, 10, 1.0, "cosine", warmup_steps=2) == pytest.approx(0.5)
    # the last step never runs at rate 0
    assert all(lr_at(s, 7, 1.0, name) > 0 for name in ("cosine", "poly") for s in range(7))
    assert math.isclose(lr_at(0, 1, 3e-4, "cosine"), 3e-4)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'; choose from constant, cosine, poly"):
        lr_at(0, 10, 1.0, "step")
    with pytest.raises(ValueError, match="step 10 is outside a schedule of 10 steps"):
        lr_at(10, 10, 1.0, "cosine")
