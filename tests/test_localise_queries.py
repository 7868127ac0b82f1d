"""The localisation queries (queries/*.sql) against tiny hand-made results databases.

Tables mirror what the stages write: layer_scores (localise.layer_rows), window_scores
(swapping_windows / retraining.window_errors + localise.with_keys), mcog (localise.summarise),
control_accuracy (control.accuracy_rows + keys) and counterfactual (counterfactual.mem_gen),
each with provenance columns. The control setup shares those tables with `pair` = "a-b";
the studied models have `pair` = "".
"""

import math

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from raymem.localise.summary import m_cog
from raymem.queries import query

NAN = float("nan")


def make_db(path, **tables):
    """A results database: each table from a list of row dicts (or a frame), plus provenance."""
    con = duckdb.connect(str(path))
    for name, rows in tables.items():
        df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
        df = df.with_columns(pl.lit("s").alias("study"), pl.lit("localise").alias("stage"),
                             pl.lit("t0").alias("trial_id"))
        con.register("df", df.to_arrow())
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM df')
        con.unregister("df")
    con.close()
    return path


def _mcog(task, technique, seed, value, model="m", pair=""):
    return {"task": task, "model": model, "seed": seed, "pair": pair, "technique": technique,
            "mcog": value}


def _layer_rows(task, technique, seed, scores, model="m", pair=""):
    """As raymem.stages.localise.layer_rows: layers 1..L."""
    return [{"task": task, "model": model, "seed": seed, "pair": pair, "technique": technique,
             "layer": i + 1, "score": float(s)} for i, s in enumerate(scores)]


def _same(a, b, tol=1e-9):
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


# -- mcog_by_task ----------------------------------------------------------------------------

L = 4
RNG = np.random.default_rng(11)
# task -> technique -> seed -> layer scores; the centroids of A at seed 2 saw no crossings:
# all-zero scores, M-CoG NaN
SCORES = {task: {tech: {seed: RNG.random(L) * RNG.integers(1, 5) for seed in (1, 2, 3)}
                 for tech in ("centroids", "gradients", "swapping")} for task in ("A", "B")}
SCORES["A"]["centroids"][2] = np.zeros(L)


@pytest.fixture(scope="module")
def mcog_db(tmp_path_factory):
    rows = [_mcog(task, tech, seed, m_cog(s)) for task, techs in SCORES.items()
            for tech, seeds in techs.items() for seed, s in seeds.items()]
    # the control setup: same task, model and seeds, every M-CoG at layer 1 -- must be left out
    rows += [_mcog(task, tech, seed, 1.0, pair="1-2") for task in SCORES
             for tech in ("centroids", "gradients", "swapping") for seed in (1, 2, 3, 4)]
    return make_db(tmp_path_factory.mktemp("mcog") / "r.duckdb", mcog=rows)


def test_mcog_by_task_means_over_seeds_and_techniques(mcog_db):
    df = query("mcog_by_task", mcog_db)
    assert df.columns == ["task", "model", "technique", "n_seeds", "mcog", "mcog_sd"]
    # per task: techniques alphabetically, then 'mean'
    assert df.select("task", "technique").rows() == [
        (t, x) for t in ("A", "B") for x in ("centroids", "gradients", "swapping", "mean")]
    assert (df["model"] == "m").all()  # control pairs left out
    got = {(r["task"], r["technique"]): r for r in df.iter_rows(named=True)}
    for task, techs in SCORES.items():
        centres = {tech: np.array([m_cog(techs[tech][seed]) for seed in (1, 2, 3)]) for tech in techs}
        for tech, values in centres.items():
            row, kept = got[task, tech], values[~np.isnan(values)]
            # a seed that placed nothing is left out of its technique's mean, and counted out
            assert row["n_seeds"] == len(kept) and row["mcog"] == round(kept.mean(), 3)
            assert row["mcog_sd"] == round(kept.std(ddof=1), 3)
        # 'mean': over the paper's four techniques of each seed (centroids not among them)
        per_seed = np.mean([centres["gradients"], centres["swapping"]], axis=0)
        assert got[task, "mean"]["mcog"] == round(per_seed.mean(), 3)
        assert got[task, "mean"]["mcog_sd"] == round(per_seed.std(ddof=1), 3)
        assert 1 <= got[task, "mean"]["mcog"] <= L
    assert got["A", "centroids"]["n_seeds"] == 2  # seed 2 saw no crossings
    # centroids' M-CoG does not move the mean
    with_centroids = np.nanmean([[m_cog(SCORES["B"][t][s]) for t in SCORES["B"]] for s in (1, 2, 3)], axis=1)
    assert got["B", "mean"]["mcog"] != round(with_centroids.mean(), 3)


def test_mcog_by_task_single_seed_has_no_spread(tmp_path):
    db = make_db(tmp_path / "r.duckdb",
                 mcog=[_mcog("T", "gradients", 1, 2.5), _mcog("T", "probing", 1, 3.5)])
    df = query("mcog_by_task", db)
    assert df.select("technique", "n_seeds", "mcog").rows() == [
        ("gradients", 1, 2.5), ("probing", 1, 3.5), ("mean", 1, 3.0)]
    assert df["mcog_sd"].null_count() == 3


# -- layer_profile ---------------------------------------------------------------------------

def test_layer_profile_normalises_each_seed_before_averaging(tmp_path):
    rng = np.random.default_rng(5)
    probing = {seed: rng.random(5) * seed for seed in (1, 2, 3)}
    rows = (_layer_rows("A", "swapping", 1, [1, 1, 1, 1]) + _layer_rows("A", "swapping", 2, [0, 20, 10, 10])
            + _layer_rows("A", "centroids", 1, [0, 0, 0, 0])  # no crossings: places nothing
            + _layer_rows("A", "centroids", 2, [0, 0, 0.5, 0.5])
            + [r for seed, s in probing.items() for r in _layer_rows("B", "probing", seed, s)]
            # the control setup: must be left out
            + _layer_rows("A", "swapping", 1, [9, 0, 0, 0], pair="1-2")
            + _layer_rows("A", "swapping", 3, [9, 0, 0, 0], pair="3-4"))
    df = query("layer_profile", make_db(tmp_path / "r.duckdb", layer_scores=rows))
    assert df.columns == ["task", "model", "technique", "layer", "score", "score_sd", "n_seeds"]
    assert df.select("task", "technique").unique(maintain_order=True).rows() == [
        ("A", "centroids"), ("A", "swapping"), ("B", "probing")]
    prof = {(r["task"], r["technique"]): [] for r in df.iter_rows(named=True)}
    for r in df.iter_rows(named=True):
        prof[r["task"], r["technique"]].append((r["layer"], r["score"], r["n_seeds"]))
    # shares of seed 1 (total 4) and seed 2 (total 40), averaged: not the share of the summed
    # scores ([1, 21, 11, 11] / 44) nor the mean raw score
    assert prof["A", "swapping"] == [(1, 0.125, 2), (2, 0.375, 2), (3, 0.25, 2), (4, 0.25, 2)]
    # an all-zero seed has no shares: the profile is that of seed 2 alone, and says so
    assert prof["A", "centroids"] == [(1, 0.0, 1), (2, 0.0, 1), (3, 0.5, 1), (4, 0.5, 1)]
    expected = np.mean([s / s.sum() for s in probing.values()], axis=0)
    assert [x[0] for x in prof["B", "probing"]] == [1, 2, 3, 4, 5]
    assert [x[1] for x in prof["B", "probing"]] == pytest.approx(expected, abs=5.1e-5)
    assert [x[2] for x in prof["B", "probing"]] == [3] * 5
    spread = np.std([s / s.sum() for s in probing.values()], axis=0, ddof=1)  # over seeds, for the band
    assert df.filter(pl.col("task") == "B")["score_sd"].to_list() == pytest.approx(spread, abs=5.1e-5)
    assert df.filter(pl.col("technique") == "centroids")["score_sd"].null_count() == 4  # one seed: none
    for key, layers in prof.items():
        assert sum(x[1] for x in layers) == pytest.approx(1.0, abs=5e-4)


def test_layer_profile_technique_that_places_nothing(tmp_path):
    rows = _layer_rows("A", "centroids", 1, [0, 0, 0]) + _layer_rows("A", "centroids", 2, [0, 0, 0])
    df = query("layer_profile", make_db(tmp_path / "r.duckdb", layer_scores=rows))
    assert df["layer"].to_list() == [1, 2, 3]
    assert df["score"].null_count() == 3 and df["n_seeds"].to_list() == [0, 0, 0]


# -- technique_agreement ---------------------------------------------------------------------

# model -> technique -> task -> M-CoG at seeds 1 and 2. Ties on purpose (gradients: T1, T4
# at 3.0, the mean of T2 too; centroids: T2, T3), and one technique that placed nothing on
# one task (NaN: centroids of T5 on model m; NULL: swapping of T4 on model m2).
AGREE = {
    "m": {"swapping": {"T1": (2.0, 2.2), "T2": (3.0, 3.4), "T3": (5.5, 5.9), "T4": (4.0, 4.4),
                       "T5": (1.0, 1.0), "T6": (1.5, 1.7)},
          "gradients": {"T1": (3.0, 3.0), "T2": (2.5, 3.5), "T3": (4.0, 6.0), "T4": (3.0, 3.0),
                        "T5": (5.0, 5.2), "T6": (2.0, 2.4)},
          "centroids": {"T1": (1.0, 1.0), "T2": (4.0, 4.0), "T3": (4.0, 4.0), "T4": (2.0, 2.0),
                        "T5": (NAN, NAN), "T6": (3.0, 3.0)}},
    "m2": {"swapping": {"T1": (1.0, 1.0), "T2": (2.0, 2.0), "T3": (3.0, 3.0), "T4": (None, None)},
           "probing": {"T1": (1.5, 1.5), "T2": (1.0, 1.0), "T3": (3.0, 3.0), "T4": (2.0, 2.0)}},
}


def _task_mcog(values):
    values = [np.nan if v is None else v for v in values]
    return np.nan if all(np.isnan(values)) else float(np.nanmean(values))


@pytest.fixture(scope="module")
def agreement_db(tmp_path_factory):
    rows = [_mcog(task, tech, seed, v, model=model) for model, techs in AGREE.items()
            for tech, tasks in techs.items() for task, values in tasks.items()
            for seed, v in zip((1, 2), values)]
    # the control setup: centroids run the other way round there -- must be left out
    rows += [_mcog(f"T{i}", "centroids", 1, float(10 - i), pair="1-2") for i in range(1, 7)]
    return make_db(tmp_path_factory.mktemp("agree") / "r.duckdb", mcog=rows)


def test_technique_agreement_matches_scipy(agreement_db):
    df = query("technique_agreement", agreement_db)
    assert df.columns == ["model", "technique_a", "technique_b", "n_tasks", "spearman", "pearson",
                          "pearson_low", "pearson_high"]
    assert df.select("model", "technique_a", "technique_b").rows() == [
        ("m", "centroids", "gradients"), ("m", "centroids", "swapping"),
        ("m", "gradients", "swapping"), ("m2", "probing", "swapping"),
        ("ALL", "centroids", "gradients"), ("ALL", "centroids", "swapping"),
        ("ALL", "gradients", "swapping"), ("ALL", "probing", "swapping")]
    df = df.filter(pl.col("model") != "ALL")
    for row in df.iter_rows(named=True):
        a, b = AGREE[row["model"]][row["technique_a"]], AGREE[row["model"]][row["technique_b"]]
        tasks = [t for t in sorted(a) if t in b and not np.isnan(_task_mcog(a[t]))
                 and not np.isnan(_task_mcog(b[t]))]
        x, y = [_task_mcog(a[t]) for t in tasks], [_task_mcog(b[t]) for t in tasks]
        assert row["n_tasks"] == len(tasks)
        assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=5.1e-4)
    got = {(r["model"], r["technique_a"], r["technique_b"]): (r["n_tasks"], r["spearman"])
           for r in df.iter_rows(named=True)}
    # centroids placed nothing on T5: 5 tasks, ranked among themselves
    assert got["m", "centroids", "gradients"][0] == got["m", "centroids", "swapping"][0] == 5
    assert got["m", "gradients", "swapping"][0] == 6
    # by hand: probing ranks T2 < T1 < T3, swapping T1 < T2 < T3 -> 1 - 6*2/(3*8) = 0.5
    assert got["m2", "probing", "swapping"] == (3, 0.5)


def test_technique_agreement_ties_use_average_ranks(tmp_path):
    a = [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    b = [2.0, 1.0, 1.0, 4.0, 5.0, 4.0]
    rows = [_mcog(f"T{i}", t, 1, v) for i in range(6) for t, v in (("a", a[i]), ("b", b[i]))]
    row = query("technique_agreement", make_db(tmp_path / "r.duckdb", mcog=rows)).row(0, named=True)
    expected = stats.spearmanr(a, b).statistic
    assert row["spearman"] == round(expected, 3)
    plain = np.corrcoef(stats.rankdata(a, method="min"), stats.rankdata(b, method="min"))[0, 1]
    assert round(plain, 3) != round(expected, 3)


# -- depth_vs_generalisation ----------------------------------------------------------------

# task -> technique -> M-CoG at seeds 1, 2; gradients placed nothing at seed 1 of B (NaN)
DEPTH = {"A": {"gradients": (2.0, 2.5), "swapping": (3.0, 3.5)},
         "B": {"gradients": (NAN, 4.0), "swapping": (2.0, 6.0)},
         "C": {"gradients": (1.0, 1.5), "swapping": (1.0, 2.0)},
         "D": {"gradients": (5.0, 5.0), "swapping": (4.0, 4.5)}}
# task -> [(example, noisy, mem, gen)]; mem None: every subset model trained on the example
CF = {"A": [("a1", False, 0.1, 0.8), ("a2", False, 0.3, 0.6), ("a3", True, 0.9, 0.05)],
      "B": [("b1", False, 0.2, 0.7), ("b2", False, None, 0.5), ("b3", False, 0.4, 0.4),
            ("b4", True, 0.7, 0.1)],
      "C": [("c1", False, 0.5, 0.3), ("c2", True, 0.8, 0.0)],
      "D": [("d1", False, 0.05, 0.9), ("d2", False, 0.15, 0.95)]}


@pytest.fixture(scope="module")
def depth_db(tmp_path_factory):
    mcog = [_mcog(task, tech, seed, v) for task, techs in DEPTH.items()
            for tech, values in techs.items() for seed, v in zip((1, 2), values)]
    mcog += [_mcog(task, "swapping", 1, 9.0, pair="3-4") for task in DEPTH]  # control setup
    counterfactual, examples = [], []
    for task, rows in CF.items():
        for eid, noisy, mem, gen in rows:
            counterfactual.append({"task": task, "model": "m", "example_id": eid, "mem": mem,
                                   "gen": gen, "n_in": 4, "n_out": 4})
            examples.append({"task": task, "model": "m", "split": "train", "example_id": eid,
                             "noisy": noisy, "planted_count": 0})
        # the same examples fine-tuned from another model without localisation results
        counterfactual.append({"task": task, "model": "m2", "example_id": rows[0][0], "mem": 0.0,
                               "gen": 0.0, "n_in": 4, "n_out": 4})
        examples.append({"task": task, "model": "m2", "split": "train", "example_id": rows[0][0],
                         "noisy": False, "planted_count": 0})
        examples.append({"task": task, "model": "m", "split": "test", "example_id": f"{task}-test",
                         "noisy": False, "planted_count": 0})
    return make_db(tmp_path_factory.mktemp("depth") / "r.duckdb", mcog=mcog,
                   counterfactual=counterfactual, examples=examples)


def test_depth_vs_generalisation(depth_db):
    df = query("depth_vs_generalisation", depth_db)
    assert df.columns == ["task", "model", "mcog", "mean_gen", "mean_mem"]
    assert (df["model"] == "m").all()
    expected = {}
    for task, techs in DEPTH.items():
        per_seed = np.nanmean(np.array(list(techs.values())), axis=0)  # over techniques, per seed
        clean = [(mem, gen) for _, noisy, mem, gen in CF[task] if not noisy]
        expected[task] = (round(per_seed.mean(), 3),
                          round(np.mean([g for _, g in clean]), 4),
                          round(np.mean([m for m, _ in clean if m is not None]), 4))
    got = {r["task"]: (r["mcog"], r["mean_gen"], r["mean_mem"]) for r in df.iter_rows(named=True)}
    assert got == expected
    # seed 1: 2 (gradients NaN), seed 2: (4 + 6) / 2 -> 3.5, not the pooled (4 + 2 + 6) / 3;
    # noisy b4 and b2's missing mem left out
    assert got["B"] == (3.5, 0.5333, 0.3)
    assert df["task"].to_list() == ["C", "A", "B", "D"]  # by depth
    rho = stats.spearmanr([v[0] for v in expected.values()], [v[1] for v in expected.values()])
    assert stats.spearmanr(df["mcog"], df["mean_gen"]).statistic == pytest.approx(rho.statistic)


def test_depth_is_the_mean_row_of_mcog_by_task(depth_db):
    depth = query("depth_vs_generalisation", depth_db)
    mean = query("mcog_by_task", depth_db).filter(pl.col("technique") == "mean")
    assert dict(depth.select("task", "mcog").rows()) == dict(mean.select("task", "mcog").rows())


# -- control_accuracy ------------------------------------------------------------------------

def _control_row(model, n_layers, technique, planted, scores, task="T", seed=1):
    """As raymem.stages.control.accuracy_rows (scores without ties), plus the keys summarise adds."""
    order = np.argsort(-np.asarray(scores, float), kind="stable") + 1
    in_top_two = len(set(order[:2].tolist()) & set(planted))
    return {"technique": technique, "planted_start": planted[0], "planted_end": planted[1],
            "top_layers": f"{order[0]},{order[1]}", "hit_at_1": bool(order[0] in planted),
            "hit_at_2": in_top_two / 2, "pair_on_top": in_top_two == 2,
            "chance_at_1": 2 / n_layers, "chance_at_2": 2 / n_layers,
            "chance_pair_on_top": 1 / math.comb(n_layers, 2),
            "task": task, "model": model, "seed": seed, "pair": f"{planted[0]}-{planted[1]}"}


def test_control_accuracy(tmp_path):
    rows = []
    # model m, 4 layers, pairs {1,2} {2,3} {3,4}, 2 seeds, 2 tasks
    top = {  # technique -> the planted pair -> layer scores
        "swapping": {(1, 2): [4, 3, 1, 0], (2, 3): [0, 3, 4, 1], (3, 4): [0, 1, 3, 4]},  # all hit@2
        "gradients": {(1, 2): [4, 0, 3, 1], (2, 3): [0, 3, 4, 1], (3, 4): [4, 3, 0, 1]},
        "probing": {(1, 2): [3, 4, 0, 0], (2, 3): [0, 4, 0, 3], (3, 4): [0, 3, 4, 0]},  # all hit@1
    }
    for task in ("T", "U"):
        for seed in (1, 2):
            for tech, pairs in top.items():
                rows += [_control_row("m", 4, tech, p, s, task, seed) for p, s in pairs.items()]
    # model m2, 6 layers: one run per technique
    rows += [_control_row("m2", 6, "swapping", (3, 4), [0, 0, 0, 2, 1, 0]),
             _control_row("m2", 6, "probing", (3, 4), [0, 0, 2, 1, 0, 0])]
    df = query("control_accuracy", make_db(tmp_path / "r.duckdb", control_accuracy=rows))
    assert df.columns == ["model", "technique", "n_runs", "accuracy_at_1", "accuracy_at_2",
                          "chance_at_1", "chance_at_2", "times_chance_at_2", "pair_on_top",
                          "chance_pair_on_top", "at_1_low", "at_1_high", "at_2_low", "at_2_high",
                          "normalised_at_1", "normalised_at_2", "published_at_2", "published_chance_at_2",
                          "published_normalised_at_2"]
    got = {(r["model"], r["technique"]): r for r in df.iter_rows(named=True)}
    # best at accuracy@2 first, ties by name
    assert list(got) == [("m", "swapping"), ("m", "probing"), ("m", "gradients"),
                         ("m2", "probing"), ("m2", "swapping")]
    frame = pl.DataFrame(rows)
    for (model, tech), r in got.items():
        runs = frame.filter((pl.col("model") == model) & (pl.col("technique") == tech))
        n_layers = {"m": 4, "m2": 6}[model]
        assert r["n_runs"] == runs.height
        assert r["accuracy_at_1"] == round(runs["hit_at_1"].mean(), 3)
        assert r["accuracy_at_2"] == round(runs["hit_at_2"].mean(), 3)
        assert r["chance_at_1"] == r["chance_at_2"] == round(2 / n_layers, 3)
        assert r["times_chance_at_2"] == round(runs["hit_at_2"].mean() * n_layers / 2, 2)
        assert r["pair_on_top"] == round(runs["pair_on_top"].mean(), 3)
        assert r["chance_pair_on_top"] == round(1 / math.comb(n_layers, 2), 3)
    # top two for pairs 1-2 / 2-3 / 3-4: gradients 1,3 / 3,2 / 1,2 -> shares 0.5, 1, 0;
    # probing 2,1 / 2,4 / 3,2 -> shares 1, 0.5, 0.5
    assert [(got["m", t]["n_runs"], got["m", t]["accuracy_at_1"], got["m", t]["accuracy_at_2"],
             got["m", t]["pair_on_top"]) for t in ("swapping", "gradients", "probing")] == [
        (12, 1.0, 1.0, 1.0), (12, 0.667, 0.5, 0.333), (12, 1.0, 0.667, 0.333)]
    assert (got["m", "swapping"]["chance_at_2"], got["m", "swapping"]["times_chance_at_2"],
            got["m", "swapping"]["chance_pair_on_top"]) == (0.5, 2.0, 0.167)
    assert (got["m2", "probing"]["accuracy_at_2"], got["m2", "probing"]["times_chance_at_2"],
            got["m2", "swapping"]["accuracy_at_2"]) == (1.0, 3.0, 0.5)
    assert got["m2", "swapping"]["accuracy_at_1"] == 1.0  # top layer 4 is in the pair, layer 5 is not


# -- window_heatmap --------------------------------------------------------------------------

def _windows(n_layers):
    return [(s, e) for s in range(1, n_layers + 1) for e in range(s, n_layers + 1)]


@pytest.fixture(scope="module")
def window_frames():
    """window_scores as the two techniques write it: both with clean_acc (swapping: the clean
    training examples under the swap; retraining: held-out clean examples), retraining with
    normalised_acc (NULL for swapping in the ingested table)."""
    rng = np.random.default_rng(2)
    n_layers, frames = 3, []
    for seed in (1, 2, 3):
        acc = {w: float(rng.random()) for w in _windows(n_layers)}
        frames.append(pl.DataFrame({
            "window_start": [w[0] for w in acc], "window_end": [w[1] for w in acc],
            "noisy_acc": list(acc.values()), "clean_acc": [float(rng.random()) for _ in acc],
            "error": [1 - a for a in acc.values()]}).with_columns(
            pl.lit("A").alias("task"), pl.lit("m").alias("model"), pl.lit(seed).alias("seed"),
            pl.lit("").alias("pair"), pl.lit("swapping").alias("technique")))
        acc = {w: float(rng.random()) * 0.5 for w in _windows(n_layers)}
        acc_all = acc[1, n_layers]
        frames.append(pl.DataFrame({
            "window_start": [w[0] for w in acc], "window_end": [w[1] for w in acc],
            "noisy_acc": list(acc.values()), "clean_acc": [float(rng.random()) for _ in acc],
            "normalised_acc": [(a - acc_all) / (1 - acc_all) for a in acc.values()],
            "error": [1 - (a - acc_all) / (1 - acc_all) for a in acc.values()]}).with_columns(
            pl.lit("A").alias("task"), pl.lit("m").alias("model"), pl.lit(seed).alias("seed"),
            pl.lit("").alias("pair"), pl.lit("retraining").alias("technique")))
    real = pl.concat(frames, how="diagonal_relaxed")
    control = real.filter(pl.col("seed") == 1).with_columns(
        pl.lit("1-2").alias("pair"), pl.lit(0.0).alias("error"), pl.lit(1.0).alias("noisy_acc"))
    return real, pl.concat([real, control], how="diagonal_relaxed")


def test_window_heatmap(tmp_path, window_frames):
    real, table = window_frames
    df = query("window_heatmap", make_db(tmp_path / "r.duckdb", window_scores=table))
    assert df.columns == ["task", "model", "technique", "window_start", "window_size", "error",
                          "noisy_acc", "clean_acc", "n_seeds"]
    # the axes: every (start, size) of a 3-layer model once per technique, sizes then starts
    cells = [(s, e - s + 1) for s, e in _windows(3)]
    order = sorted(cells, key=lambda c: (c[1], c[0]))
    assert df.select("technique", "window_start", "window_size").rows() == [
        (t, s, size) for t in ("retraining", "swapping") for s, size in order]
    assert order[:3] == [(1, 1), (2, 1), (3, 1)] and order[-1] == (1, 3)
    assert (df["n_seeds"] == 3).all()  # the control setup's rows left out
    for r in df.iter_rows(named=True):
        runs = real.filter((pl.col("technique") == r["technique"])
                           & (pl.col("window_start") == r["window_start"])
                           & (pl.col("window_end") == r["window_start"] + r["window_size"] - 1))
        assert runs.height == 3
        assert r["error"] == pytest.approx(runs["error"].mean(), abs=5.1e-5)
        assert r["noisy_acc"] == pytest.approx(runs["noisy_acc"].mean(), abs=5.1e-5)
        assert r["clean_acc"] == pytest.approx(runs["clean_acc"].mean(), abs=5.1e-5)
    # retraining all layers is the reference: its error is 1 at every seed
    full = df.filter((pl.col("technique") == "retraining") & (pl.col("window_size") == 3))
    assert full["error"].to_list() == [1.0]


def test_control_accuracy_has_wilson_intervals(tmp_path):
    from scipy.stats import binomtest

    # 3 runs of one technique: the top layer in the pair twice; top-two shares 1, 0.5, 0
    rows = [_control_row("m", 4, "probing", (1, 2), [4, 3, 0, 0]),
            _control_row("m", 4, "probing", (2, 3), [0, 4, 0, 3]),
            _control_row("m", 4, "probing", (3, 4), [4, 3, 0, 0])]
    (r,) = query("control_accuracy", make_db(tmp_path / "r.duckdb", control_accuracy=rows)).iter_rows(named=True)
    assert (r["accuracy_at_1"], r["accuracy_at_2"]) == (0.667, 0.5)
    at_1 = binomtest(2, 3).proportion_ci(0.95, method="wilson")  # top layer in the pair in runs 1 and 2
    # @2 counts runs too, not the 6 top-two places as independent: the interval of a share of 1.5 in 3
    places = binomtest(3, 6).proportion_ci(0.95, method="wilson")
    z = stats.norm.ppf(0.975)
    centre, half = (0.5 + z * z / 6) / (1 + z * z / 3), z / (1 + z * z / 3) * np.sqrt(0.25 / 3 + z * z / 36)
    assert (r["at_1_low"], r["at_1_high"]) == (round(at_1.low, 3), round(at_1.high, 3))
    assert (r["at_2_low"], r["at_2_high"]) == (round(centre - half, 3), round(centre + half, 3))
    assert r["at_2_high"] - r["at_2_low"] > places.high - places.low + 0.1  # wider than six places would give
    assert r["at_2_low"] < 0.5 < r["at_2_high"]  # three runs cannot tell this from chance


def test_control_accuracy_is_chance_normalised_beside_the_published_values(tmp_path):
    # a 4-layer model (chance 1/2) at accuracy@2 0.75 against the published 12-layer values (chance 1/6)
    rows = [_control_row("m", 4, "probing", (1, 2), [4, 3, 0, 0]),
            _control_row("m", 4, "probing", (2, 3), [0, 4, 3, 0])]
    rows[1]["hit_at_2"] = 0.5
    (r,) = query("control_accuracy", make_db(tmp_path / "r.duckdb", control_accuracy=rows)).iter_rows(named=True)
    assert r["accuracy_at_2"] == 0.75 and r["chance_at_2"] == 0.5
    assert r["normalised_at_2"] == 0.5  # (0.75 - 0.5) / (1 - 0.5)
    assert (r["published_at_2"], r["published_chance_at_2"]) == (0.49, 0.167)
    assert r["published_normalised_at_2"] == round((0.49 - 1 / 6) / (5 / 6), 3)  # 0.388: below ours, though 0.49 < 0.75 raw


def test_model_agreement_matches_scipy(tmp_path):
    # per model, task -> (technique -> M-CoG at seed 1); centroids must not count, NaN is left out
    mcogs = {"m": {"T1": {"swapping": 1.0, "probing": 2.0}, "T2": {"swapping": 3.0, "probing": 3.0},
                   "T3": {"swapping": 2.0, "probing": 4.0, "centroids": 9.0}, "T4": {"swapping": 4.0}},
             "n": {"T1": {"retraining": 1.5}, "T2": {"retraining": 2.0}, "T3": {"retraining": 3.5},
                   "T4": {"retraining": 2.5, "gradients": NAN}},
             "o": {"T1": {"swapping": 5.0}, "T2": {"swapping": 1.0}}}
    rows = [_mcog(task, tech, 1, v, model=model) for model, tasks in mcogs.items()
            for task, techs in tasks.items() for tech, v in techs.items()]
    df = query("model_agreement", make_db(tmp_path / "r.duckdb", mcog=rows))
    assert df.columns == ["model_a", "model_b", "n_points", "spearman", "spearman_low", "spearman_high",
                          "n_tasks", "spearman_mean_mcog", "spearman_mean_mcog_low", "spearman_mean_mcog_high"]

    def mean(techs):
        return np.nanmean([v for t, v in techs.items() if t != "centroids"])
    got = {(r["model_a"], r["model_b"]): r for r in df.iter_rows(named=True)}
    assert list(got) == [("m", "n"), ("m", "o"), ("n", "o")]
    for (a, b), r in got.items():
        tasks = sorted(set(mcogs[a]) & set(mcogs[b]))
        assert r["n_tasks"] == len(tasks)
        expected = stats.spearmanr([mean(mcogs[a][t]) for t in tasks], [mean(mcogs[b][t]) for t in tasks]).statistic
        assert r["spearman_mean_mcog"] == pytest.approx(expected, abs=5.1e-4)
    # by hand: m's means 1.5, 3, 3 (centroids left out), 4 rank 1, 2.5, 2.5, 4; n's 1.5, 2, 3.5,
    # 2.5 (the NaN left out) rank 1, 2, 4, 3: Pearson of the ranks 3 / sqrt(4.5 * 5)
    assert got["m", "n"]["spearman_mean_mcog"] == pytest.approx(3 / np.sqrt(22.5), abs=5.1e-4)


def test_generalisation_correlation_matches_scipy(tmp_path):
    # 4 tasks of model m: clean examples' gen, M-CoG of two techniques (and centroids, not
    # counted), pooled centroid events (crossing missing on T4: left out)
    gen = {"T1": [0.9, 0.7], "T2": [0.5, 0.5], "T3": [0.2, 0.4], "T4": [0.6, 0.8]}
    mcogs = {"T1": (3.0, 3.5), "T2": (2.0, 2.5), "T3": (1.0, 1.0), "T4": (2.5, 4.0)}
    crossing = {"T1": 3, "T2": 1, "T3": 2, "T4": None}
    initiation = {"T1": 4, "T2": 3, "T3": 1, "T4": 2}
    # the noisy models' evaluation labels and correctness, 2 seeds (the clean model's not counted)
    labels = {"T1": [0, 0, 0, 1], "T2": [0, 1, 1, 2], "T3": [0, 1, 0, 1], "T4": [1, 1, 1, 1]}
    correct = {"T1": ([1, 1, 0, 1], [1, 1, 1, 1]), "T2": ([1, 0, 1, 0], [0, 0, 1, 0]),
               "T3": ([1, 1, 1, 0], [1, 0, 1, 1]), "T4": ([1, 1, 0, 0], [1, 0, 0, 0])}
    predictions = [{"task": t, "model": "m", "seed": s + 1, "variant": v, "checkpoint": c, "split": split,
                    "example_id": f"{t}e{i}", "label": y, "correct": bool(correct[t][s][i]) if v == "noisy" else True}
                   for t in labels for s in range(2) for v in ("noisy", "clean") for c in ("final", "memorised")
                   for split in ("test", "train") for i, y in enumerate(labels[t])
                   if (c, split) == ("final", "test") or v == "noisy"]
    for row in predictions:  # other checkpoints and the training split: all wrong, never counted
        row["correct"] = row["correct"] and (row["checkpoint"], row["split"]) == ("final", "test")
    examples, counterfactual, mcog, events = [], [], [], []
    for task, values in gen.items():
        for i, g in enumerate(values + [0.0]):  # the last one noisy: not in the score
            examples.append({"task": task, "model": "m", "example_id": f"{task}{i}", "noisy": i == len(values)})
            counterfactual.append({"task": task, "model": "m", "example_id": f"{task}{i}", "gen": g, "mem": 0.1})
        mcog += [_mcog(task, "swapping", 1, mcogs[task][0]), _mcog(task, "probing", 1, mcogs[task][1]),
                 _mcog(task, "centroids", 1, 9.0)]
        for event, layers in (("crossing", crossing), ("initiation", initiation)):
            events.append({"task": task, "model": "m", "seed": 1, "pair": "", "technique": "centroids",
                           "class_from": None, "class_to": None, "event": event, "layer": layers[task]})
    schema = {"class_from": pl.Int64, "class_to": pl.Int64, "layer": pl.Int64}
    db = make_db(tmp_path / "r.duckdb", examples=examples, counterfactual=counterfactual, mcog=mcog,
                 events=pl.DataFrame(events, schema_overrides=schema), predictions=predictions)
    df = query("generalisation_correlation", db)
    assert df.columns == ["model", "measure", "n_tasks", "spearman_with_gen", "spearman_with_gen_low",
                          "spearman_with_gen_high", "spearman_with_norm_accuracy"]
    # one model: the pooled 'ALL' rows are its own
    pooled = df.filter(pl.col("model") == "ALL").drop("model")
    assert pooled.equals(df.filter(pl.col("model") == "m").drop("model"))
    df = df.filter(pl.col("model") == "m")
    got = {r["measure"]: (r["n_tasks"], r["spearman_with_gen"]) for r in df.iter_rows(named=True)}
    mean_gen = {t: np.mean(v) for t, v in gen.items()}
    chance = {t: sum((np.array(y) == c).mean() ** 2 for c in set(y)) for t, y in labels.items()}
    norm = {t: (np.mean(correct[t]) - chance[t]) / (1 - chance[t]) if chance[t] < 1 else None for t in labels}
    got_norm = {r["measure"]: r["spearman_with_norm_accuracy"] for r in df.iter_rows(named=True)}
    for measure, values in (("mcog", {t: np.mean(v) for t, v in mcogs.items()}), ("crossing", crossing),
                            ("initiation", initiation)):
        tasks = [t for t in sorted(values) if values[t] is not None]
        expected = stats.spearmanr([values[t] for t in tasks], [mean_gen[t] for t in tasks]).statistic
        assert got[measure] == (len(tasks), pytest.approx(expected, abs=5.1e-4)), measure
        tasks = [t for t in tasks if norm[t] is not None]  # T4: one class, so no chance to beat
        expected = stats.spearmanr([values[t] for t in tasks], [norm[t] for t in tasks]).statistic
        assert got_norm[measure] == pytest.approx(expected, abs=5.1e-4), measure
    # its bootstrap intervals (raymem/intervals.py) start from the same correlations
    from raymem.intervals import create_intervals_table

    con = duckdb.connect(str(db))
    create_intervals_table(con)
    boot = dict(((key, n), round(estimate, 3)) for key, n, estimate in con.execute(
        "SELECT key, n_units, estimate FROM intervals WHERE analysis = 'generalisation_correlation'").fetchall())
    con.close()
    for r in df.iter_rows(named=True):
        assert boot[f"{r['measure']} / gen", r["n_tasks"]] == r["spearman_with_gen"]


def test_event_agreement_and_events_by_task(tmp_path):
    # 4 tasks x 2 seeds; T4's crossing never happens; a control pair's events are not counted
    layers = {"crossing": {"T1": (3, 3), "T2": (1, 2), "T3": (2, 2), "T4": (None, None)},
              "initiation": {"T1": (4, 4), "T2": (2, 3), "T3": (1, 1), "T4": (2, 2)},
              "probe_memorisation": {"T1": (4, 3), "T2": (1, 1), "T3": (2, 3), "T4": (3, 3)},
              "probe_initiation": {"T1": (1, 1), "T2": (3, 3), "T3": (1, 2), "T4": (2, 1)}}
    events = [{"task": t, "model": "m", "seed": s + 1, "pair": pair, "class_from": None, "class_to": None,
               "technique": "probing" if e.startswith("probe") else "centroids", "event": e,
               "layer": v[s] if pair == "" else 9}
              for e, per_task in layers.items() for t, v in per_task.items() for s in range(2) for pair in ("", "1-2")]
    events.append({"task": "T1", "model": "m", "seed": 1, "pair": "", "class_from": 0, "class_to": 1,
                   "technique": "centroids", "event": "crossing", "layer": 9})  # per class pair: not pooled
    schema = {"class_from": pl.Int64, "class_to": pl.Int64, "layer": pl.Int64}
    db = make_db(tmp_path / "r.duckdb", events=pl.DataFrame(events, schema_overrides=schema))
    mean = {e: {t: np.mean(v) for t, v in per_task.items() if v[0] is not None} for e, per_task in layers.items()}
    got = {r["events"]: r for r in query("event_agreement", db).iter_rows(named=True)}
    for probe, centroid in (("probe_memorisation", "crossing"), ("probe_initiation", "initiation")):
        tasks = sorted(set(mean[probe]) & set(mean[centroid]))
        expected = stats.spearmanr([mean[probe][t] for t in tasks], [mean[centroid][t] for t in tasks]).statistic
        row = got[f"{probe} vs {centroid}"]
        assert row["n_task_models"] == len(tasks) and row["spearman"] == pytest.approx(expected, abs=5.1e-4)
    by_task = {(r["task"], r["event"]): r for r in query("events_by_task", db).iter_rows(named=True)}
    assert by_task["T2", "crossing"]["mean_layer"] == 1.5 and by_task["T2", "crossing"]["n_seeds"] == 2
    assert by_task["T4", "crossing"]["mean_layer"] is None and by_task["T4", "crossing"]["n_never"] == 2
    assert by_task["T1", "crossing"]["mean_layer"] == 3.0  # the per-class-pair row is not pooled in
    assert by_task["T1", "probe_memorisation"]["technique"] == "probing"


def test_layer_agreement_is_pearson_over_layers_per_model_and_pooled(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for model in ("m1", "m2"):
        for task in ("T1", "T2"):
            base = rng.dirichlet(np.ones(4))
            for technique, noise in (("swapping", 0.0), ("probing", 0.2), ("centroids", 0.5)):
                scores = np.abs(base + rng.normal(0, noise, 4))
                rows += _layer_rows(task, technique, 1, scores / scores.sum(), model=model)
        rows += _layer_rows("T1", "swapping", 1, np.full(4, 9.0), model=model, pair="1-2")  # control: left out
    db = make_db(tmp_path / "r.duckdb", layer_scores=rows)
    got = {(r["model"], r["technique_a"], r["technique_b"]): (r["n_layers"], r["pearson"])
           for r in query("layer_agreement", db).iter_rows(named=True)}
    frame = pl.DataFrame(rows).filter(pl.col("pair") == "")
    for model in ("m1", "m2", "ALL"):
        chosen = frame if model == "ALL" else frame.filter(pl.col("model") == model)
        score = {t: chosen.filter(pl.col("technique") == t).sort("model", "task", "layer")["score"].to_numpy()
                 for t in ("swapping", "probing", "centroids")}
        for a, b in (("centroids", "probing"), ("centroids", "swapping"), ("probing", "swapping")):
            expected = stats.pearsonr(score[a], score[b]).statistic
            assert got[model, a, b] == (len(score[a]), pytest.approx(expected, abs=5.1e-4)), (model, a, b)
    # every correlation with its Fisher-z interval
    for r in query("layer_agreement", db).iter_rows(named=True):
        z, se = np.arctanh(r["pearson"]), 1 / np.sqrt(r["n_layers"] - 3)
        assert r["pearson_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=2e-3)
        assert r["pearson_high"] == pytest.approx(np.tanh(z + 1.959964 * se), abs=2e-3)


def test_model_agreement_pools_technique_by_task_mcogs_as_the_original(tmp_path):
    # summarising_visualisations.ipynb: per pair of models, Spearman over the concatenated
    # (technique, task) M-CoGs of the four techniques; here 2 techniques x 4 tasks, 2 seeds each
    rng = np.random.default_rng(3)
    values = {(m, tech, task, seed): float(rng.uniform(1, 6)) for m in ("m", "n")
              for tech in ("swapping", "probing") for task in ("T1", "T2", "T3", "T4") for seed in (1, 2)}
    rows = [_mcog(task, tech, seed, v, model=m) for (m, tech, task, seed), v in values.items()]
    rows.append(_mcog("T1", "centroids", 1, 9.0, model="m"))  # not among the four
    (r,) = query("model_agreement", make_db(tmp_path / "r.duckdb", mcog=rows)).iter_rows(named=True)
    keys = [(tech, task) for tech in ("swapping", "probing") for task in ("T1", "T2", "T3", "T4")]
    x = [np.mean([values["m", *k, s] for s in (1, 2)]) for k in keys]
    y = [np.mean([values["n", *k, s] for s in (1, 2)]) for k in keys]
    pooled = stats.spearmanr(x, y).statistic
    assert r["n_points"] == 8 and r["spearman"] == pytest.approx(pooled, abs=5.1e-4)
    z, se = np.arctanh(pooled), np.sqrt(1.06 / 5)
    assert r["spearman_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=5.1e-4)
    assert r["spearman_high"] == pytest.approx(np.tanh(z + 1.959964 * se), abs=5.1e-4)
    means = lambda m: [np.mean([values[m, tech, task, s] for tech in ("swapping", "probing") for s in (1, 2)])  # noqa: E731
                       for task in ("T1", "T2", "T3", "T4")]
    assert r["n_tasks"] == 4
    assert r["spearman_mean_mcog"] == pytest.approx(stats.spearmanr(means("m"), means("n")).statistic, abs=5.1e-4)
    assert r["spearman_mean_mcog_low"] < r["spearman_mean_mcog"] < r["spearman_mean_mcog_high"]  # 4 tasks: wide


def test_technique_agreement_pools_pearson_over_models_as_the_original(tmp_path):
    # summarising_visualisations.ipynb: Pearson over every (model, task) M-CoG pair of two techniques
    rng = np.random.default_rng(8)
    values = {(m, t, task): float(rng.uniform(1, 6)) for m in ("m1", "m2") for t in ("probing", "swapping")
              for task in ("T1", "T2", "T3")}
    rows = [_mcog(task, t, 1, v, model=m) for (m, t, task), v in values.items()]
    got = {r["model"]: r for r in query("technique_agreement", make_db(tmp_path / "r.duckdb", mcog=rows))
           .iter_rows(named=True)}
    points = [(m, task) for m in ("m1", "m2") for task in ("T1", "T2", "T3")]
    x, y = [values[m, "probing", t] for m, t in points], [values[m, "swapping", t] for m, t in points]
    pooled = got["ALL"]
    assert pooled["n_tasks"] == 6 and pooled["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=5.1e-4)
    assert pooled["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=5.1e-4)
    z, se = np.arctanh(stats.pearsonr(x, y).statistic), 1 / np.sqrt(3)
    assert pooled["pearson_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=5.1e-4)
    assert pooled["pearson_high"] == pytest.approx(np.tanh(z + 1.959964 * se), abs=5.1e-4)
    assert got["m1"]["n_tasks"] == 3 and got["m1"]["pearson_low"] is None  # 3 points: no interval


def test_generalisation_correlation_pools_the_models_tasks_in_an_all_row(tmp_path):
    # two models, 4 tasks each: 'ALL' ranks the 8 (model, task) points together
    rng = np.random.default_rng(11)
    examples, counterfactual, mcog, points = [], [], [], {}
    for model in ("m1", "m2"):
        for task in ("T1", "T2", "T3", "T4"):
            gen, depth = float(rng.uniform()), float(rng.uniform(1, 4))
            points[model, task] = (depth, gen)
            examples.append({"task": task, "model": model, "example_id": f"{task}0", "noisy": False})
            counterfactual.append({"task": task, "model": model, "example_id": f"{task}0", "gen": gen, "mem": 0.1})
            mcog.append(_mcog(task, "swapping", 1, depth, model=model))
    events = pl.DataFrame({"task": ["T1"], "model": ["m1"], "seed": [1], "pair": [""], "technique": ["centroids"],
                           "class_from": [None], "class_to": [None], "event": ["crossing"], "layer": [1]},
                          schema_overrides={"class_from": pl.Int64, "class_to": pl.Int64, "layer": pl.Int64})
    predictions = [{"task": t, "model": m, "seed": 1, "variant": "noisy", "checkpoint": "final", "split": "test",
                    "example_id": f"{t}0", "label": 0, "correct": True} for m, t in points]
    db = make_db(tmp_path / "r.duckdb", examples=examples, counterfactual=counterfactual, mcog=mcog, events=events,
                 predictions=predictions)
    rows = {(r["model"], r["measure"]): r for r in query("generalisation_correlation", db).iter_rows(named=True)}
    pooled = rows["ALL", "mcog"]
    x, y = zip(*points.values())
    rho = stats.spearmanr(x, y).statistic
    assert pooled["n_tasks"] == 8 and pooled["spearman_with_gen"] == pytest.approx(rho, abs=5.1e-4)
    z, se = np.arctanh(rho), np.sqrt(1.06 / 5)
    assert pooled["spearman_with_gen_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=5.1e-4)
    assert rows["m1", "mcog"]["n_tasks"] == 4


def test_mcog_of_mean_profile_is_the_originals_mcog_of_the_seed_averaged_scores(tmp_path):
    # two seeds whose totals differ: the M-CoG of the mean profile weighs the larger one more
    seeds = {"swapping": {1: [0.9, 0.1, 0.0], 2: [0.0, 0.2, 0.2]},
             "probing": {1: [0.0, 0.5, 0.5], 2: [0.3, 0.3, 0.0]},
             "centroids": {1: [0.0, 0.0, 1.0], 2: [0.0, 0.0, 1.0]}}
    rows = [r for tech, by_seed in seeds.items() for seed, s in by_seed.items()
            for r in _layer_rows("T", tech, seed, s)]
    rows += _layer_rows("T", "swapping", 1, [0.0, 0.0, 9.0], pair="1-2")  # control: left out
    got = {r["technique"]: r for r in query("mcog_of_mean_profile", make_db(tmp_path / "r.duckdb",
                                                                          layer_scores=rows)).iter_rows(named=True)}
    centre = {t: m_cog(np.mean([s[1], s[2]], axis=0)) for t, s in seeds.items()}
    for technique in seeds:
        assert got[technique]["mcog"] == round(centre[technique], 3) and got[technique]["n_seeds"] == 2
    assert got["mean"]["mcog"] == pytest.approx((centre["swapping"] + centre["probing"]) / 2, abs=6e-4)  # not centroids
    per_seed = np.mean([m_cog(seeds["swapping"][1]), m_cog(seeds["swapping"][2])])
    assert round(per_seed, 3) != got["swapping"]["mcog"]  # mcog_by_task's mean of per-seed M-CoGs differs
