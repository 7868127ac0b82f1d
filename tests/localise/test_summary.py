"""M-CoG: known centres, the all-zero case, the mean over techniques."""

import math

import numpy as np
import pytest

from raymem.localise.summary import m_cog, mean_m_cog


@pytest.mark.parametrize("scores, expected", [
    ([1, 0, 0, 0], 1.0),                # all weight on the first layer: layers count from 1
    ([0, 0, 0, 5], 4.0),
    ([1, 1, 1, 1], 2.5),
    ([0.2, 0.0, 0.6], (1 * 0.2 + 3 * 0.6) / 0.8),
    (np.array([3.0]), 1.0),
])
def test_m_cog_of_known_vectors(scores, expected):
    assert m_cog(scores) == pytest.approx(expected)


def test_m_cog_is_nan_without_any_weight():
    assert math.isnan(m_cog([0.0, 0.0, 0.0]))
    assert math.isnan(m_cog([0.5, float("nan")]))


@pytest.mark.parametrize("scores", [[], [[1.0, 2.0]], [0.5, -0.1]])
def test_m_cog_refuses_what_is_not_a_weight_vector(scores):
    with pytest.raises(ValueError):
        m_cog(scores)


def test_mean_m_cog_averages_techniques_and_skips_the_empty_ones():
    assert mean_m_cog([[1, 0, 0], [0, 0, 1], [0, 1, 0]]) == pytest.approx(2.0)
    assert mean_m_cog({"swapping": [1, 0], "probing": [0, 0]}.values()) == pytest.approx(1.0)
    assert math.isnan(mean_m_cog([[0, 0], [0, 0]]))
    assert math.isnan(mean_m_cog([]))
