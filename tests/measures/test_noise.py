"""Label perturbation (Dankers & Titov, 2024): which training examples become noisy, and how."""

import numpy as np
import pytest

from raymem.measures.noise import perturb_labels


def _data(n=(40, 27, 13), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(k, c) for c, k in enumerate(n)])
    rng.shuffle(labels)
    ids = [f"{rng.integers(1 << 60):016x}" for _ in range(len(labels))]
    assert len(set(ids)) == len(ids)
    return ids, labels


@pytest.mark.parametrize("ratio", [0.15, 0.1, 0.5, 0.9])
def test_exact_number_per_class_always_to_another_class(ratio):
    ids, labels = _data()
    out = perturb_labels(ids, labels, 3, ratio, data_seed=1)
    assert out.shape == labels.shape
    noisy = out != labels
    for c in range(3):
        n_c = int((labels == c).sum())
        assert int(noisy[labels == c].sum()) == round(ratio * n_c)
    assert set(out.tolist()) <= {0, 1, 2}


def test_input_labels_are_not_modified():
    ids, labels = _data()
    before = labels.copy()
    perturb_labels(ids, labels, 3, 0.5, data_seed=1)
    assert (labels == before).all()


def test_flipped_labels_reach_every_other_class():
    ids, labels = _data(n=(300, 300, 300))
    out = perturb_labels(ids, labels, 3, 0.5, data_seed=3)
    for c in range(3):
        targets = set(out[(labels == c) & (out != labels)].tolist())
        assert targets == {0, 1, 2} - {c}


def test_deterministic_for_a_data_seed():
    ids, labels = _data()
    a = perturb_labels(ids, labels, 3, 0.15, data_seed=7)
    b = perturb_labels(list(ids), labels.copy(), 3, 0.15, data_seed=7)
    assert (a == b).all()


def test_independent_of_row_order():
    ids, labels = _data()
    out = perturb_labels(ids, labels, 3, 0.15, data_seed=1)
    perm = np.random.default_rng(42).permutation(len(ids))
    out_perm = perturb_labels([ids[i] for i in perm], labels[perm], 3, 0.15, data_seed=1)
    # The same example gets the same (perturbed) label, wherever its row is.
    assert dict(zip(ids, out.tolist())) == dict(zip([ids[i] for i in perm], out_perm.tolist()))


def test_different_seeds_choose_different_sets():
    ids, labels = _data()
    sets = {frozenset(np.flatnonzero(perturb_labels(ids, labels, 3, 0.15, s) != labels))
            for s in range(1, 6)}
    assert len(sets) == 5


def test_ratio_zero_changes_nothing():
    ids, labels = _data()
    out = perturb_labels(ids, labels, 3, 0.0, data_seed=1)
    assert (out == labels).all()
    assert out is not labels  # a copy: callers may change it


def test_binary_flips_to_the_other_class():
    ids, labels = _data(n=(20, 10))
    out = perturb_labels(ids, labels, 2, 0.2, data_seed=1)
    noisy = out != labels
    assert (out[noisy] == 1 - labels[noisy]).all()
    assert noisy.sum() == round(0.2 * 20) + round(0.2 * 10)


def test_a_class_without_examples_is_fine():
    ids, labels = _data(n=(20, 10))
    out = perturb_labels(ids, labels, 3, 0.2, data_seed=1)  # class 2 has no examples
    assert (out != labels).sum() == round(0.2 * 20) + round(0.2 * 10)
