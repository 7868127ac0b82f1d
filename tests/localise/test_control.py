"""Scoring the control setup: did a technique's top layers land in the planted pair?"""

import polars as pl
import pytest

from raymem.stages.control import accuracy_rows, default_pairs


def scores(values: list[float], technique: str = "t") -> pl.DataFrame:
    return pl.DataFrame({"technique": technique, "layer": list(range(1, len(values) + 1)), "score": values})


@pytest.mark.parametrize("values, pair, hit_1, hit_2", [
    ([0.1, 0.2, 0.5, 0.4], (3, 4), True, True),     # the pair on top
    ([0.1, 0.3, 0.5, 0.2], (3, 4), True, False),    # top layer in the pair, second outside
    ([0.5, 0.1, 0.2, 0.4], (3, 4), False, False),   # top layer outside
    ([0.0, 0.0, 0.0, 0.0], (1, 2), False, False),   # placed nothing: no credit for layer order
    ([0.4, 0.1, 0.4, 0.1], (1, 2), False, False),   # a tie at the top with a layer outside
    ([0.4, 0.4, 0.1, 0.1], (1, 2), True, True),     # a tie inside the pair is still the pair
    ([0.3, 0.5, 0.3, 0.1], (2, 3), True, False),    # second place shared with a layer outside
])
def test_hits_need_the_pair_strictly_on_top(values, pair, hit_1, hit_2):
    row = accuracy_rows(scores(values), pair, 4).row(0, named=True)
    assert (row["hit_at_1"], row["hit_at_2"]) == (hit_1, hit_2)
    assert row["chance_at_1"] == 0.5 and row["chance_at_2"] == pytest.approx(1 / 6)


def test_one_row_per_technique_and_the_default_pairs():
    frame = pl.concat([scores([0.1, 0.9, 0.8, 0.0], "a"), scores([0.9, 0.0, 0.0, 0.1], "b")])
    rows = {r["technique"]: r for r in accuracy_rows(frame, (2, 3), 4).iter_rows(named=True)}
    assert rows["a"]["top_layers"] == "2,3" and rows["a"]["hit_at_2"]
    assert rows["b"]["top_layers"] == "1,4" and not rows["b"]["hit_at_1"]
    assert default_pairs(4) == [(1, 2), (2, 3), (3, 4)]
    assert default_pairs(12) == [(1, 2), (6, 7), (11, 12)]
