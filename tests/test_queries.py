"""Named SQL questions (queries/*.sql) against a tiny hand-made results database."""

import math
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from raymem import queries
from raymem.errors import ConfigError
from raymem.queries import list_queries, load_query, query

QUERIES = Path(__file__).resolve().parent.parent / "queries"


def make_db(path, precog=None, predictions=None, examples=None):
    """A results database with the columns the SQL uses (plus a provenance column)."""
    con = duckdb.connect(str(path))
    for name, rows in (("precog", precog), ("predictions", predictions), ("examples", examples)):
        if rows is not None:
            df = pl.DataFrame(rows).with_columns(pl.lit("s").alias("study"))
            con.register("df", df.to_arrow())
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM df")
            con.unregister("df")
    con.close()
    return path


def _pred(task, eid, seed, correct, variant="clean", checkpoint="final", split="test",
          model="m"):
    return {"task": task, "model": model, "example_id": eid, "seed": seed, "variant": variant,
            "checkpoint": checkpoint, "split": split, "correct": correct, "epoch": 3}


def _noise_rows(task, eid, correct):
    """Rows every PreCog query must ignore: other variant, checkpoint, or the train split."""
    return [_pred(task, eid, 1, not correct, variant="noisy"),
            _pred(task, eid, 1, not correct, checkpoint="memorised"),
            _pred(task, eid, 1, not correct, split="train")]


# -- listing and parameters ----------------------------------------------------------------

def test_list_queries_returns_every_file_with_its_first_line():
    listed = dict(list_queries())
    files = sorted(QUERIES.glob("*.sql"))
    assert sorted(listed) == [p.stem for p in files]
    assert len(files) >= 5
    for p in files:
        first = p.read_text().splitlines()[0]
        assert first.startswith("-- ")
        assert listed[p.stem] == first[3:].strip() != ""
    assert listed["precog_accuracy_by_bin"].startswith("Accuracy of the fine-tuned clean model")


def test_params_header_gives_defaults():
    sql, params = load_query("precog_accuracy_by_bin")
    assert {k: p.default for k, p in params.items()} == {"bin_width": 0.1}
    assert params["bin_width"].interval() == "(0, 1]"
    assert "$bin_width" in sql
    assert {k: p.default for k, p in load_query("precog_distribution")[1].items()} == {"bin_width": 0.1}
    assert load_query("precog_planted")[1] == {}
    assert load_query("precog_correlation")[1] == {}


def test_params_header_parsing(tmp_path, monkeypatch):
    (tmp_path / "q.sql").write_text("-- Says what.\n-- params: a=1, b=x, c=2.5 [0, 10)\nSELECT 1\n")
    monkeypatch.setenv("RAYMEM_QUERIES", str(tmp_path))
    assert list_queries() == [("q", "Says what.")]
    params = load_query("q")[1]
    assert {k: p.default for k, p in params.items()} == {"a": 1.0, "b": "x", "c": 2.5}
    assert params["c"].interval() == "[0, 10)" and params["a"].interval() == "(-inf, inf)"


def test_unknown_query_and_parameter(tmp_path):
    db = make_db(tmp_path / "r.duckdb", precog=[{"task": "t", "model": "m", "example_id": "e",
                                                  "k": 1, "score": 0.5, "pll": -1.0}])
    with pytest.raises(ConfigError, match="unknown query 'nope'.*precog_accuracy_by_bin"):
        query("nope", db)
    with pytest.raises(ConfigError, match="unknown query 'precog_plantd' \\(did you mean 'precog_planted'\\?\\)"):
        query("precog_plantd", db)
    with pytest.raises(ConfigError, match="unknown query"):
        query("../queries/precog_planted", db)
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['bin_widht'\] \(did you mean 'bin_width'\?\).*bin_width"):
        query("precog_accuracy_by_bin", db, bin_widht=0.2)
    with pytest.raises(ConfigError, match=r"unknown parameter.*takes none"):
        query("precog_planted", db, k=1)
    with pytest.raises(ConfigError, match="no results database"):
        query("precog_planted", tmp_path / "missing.duckdb")


@pytest.mark.parametrize("value", ["abc", "0", 0, "-0.1", "1.1", "nan"])
def test_parameters_are_typed_and_range_checked(tmp_path, value):
    db = make_db(tmp_path / "r.duckdb", precog=[{"task": "t", "model": "m", "example_id": "e",
                                                  "k": 1, "score": 0.5, "pll": -1.0}])
    expected = f"query precog_distribution: bin_width must be a number in (0, 1], got {value!r}"
    with pytest.raises(ConfigError) as error:
        query("precog_distribution", db, bin_width=value)
    assert str(error.value) == expected
    # the upper bound is allowed: the query gets past its parameters to the database
    with pytest.raises(ConfigError, match="no 'examples' table"):
        query("precog_distribution", db, bin_width="1")


def test_a_table_the_study_did_not_produce_is_named_with_its_setting(tmp_path):
    db = make_db(tmp_path / "r.duckdb", precog=[{"task": "t", "model": "m", "example_id": "e",
                                                  "k": 1, "score": 0.5, "pll": -1.0}])
    with pytest.raises(ConfigError, match=r"query counterfactual_auroc: this study's database has no "
                                          r"'counterfactual' table.*add `counterfactual: \{enabled: true\}`"):
        query("counterfactual_auroc", db)


def test_database_is_opened_read_only(tmp_path, monkeypatch):
    db = make_db(tmp_path / "r.duckdb", precog=[{"task": "t", "model": "m", "example_id": "e",
                                                  "k": 1, "score": 0.5, "pll": -1.0}])
    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / "sneaky.sql").write_text("-- Tries to write.\nCREATE TABLE hacked AS SELECT 1 AS x;\n")
    (qdir / "wipe.sql").write_text("-- Tries to delete.\nDELETE FROM precog;\n")
    monkeypatch.setenv("RAYMEM_QUERIES", str(qdir))
    with pytest.raises(ConfigError, match="sneaky.*read-only"):
        query("sneaky", db)
    with pytest.raises(ConfigError, match="wipe"):
        query("wipe", db)
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    n = con.execute("SELECT COUNT(*) FROM precog").fetchone()[0]
    con.close()
    assert tables == {"precog"} and n == 1


def test_sql_error_is_a_config_error(tmp_path):
    db = make_db(tmp_path / "r.duckdb", precog=[{"task": "t", "model": "m", "example_id": "e",
                                                  "k": 1, "score": 0.5, "pll": -1.0}])
    with pytest.raises(ConfigError, match="query precog_accuracy_by_bin: .*predictions"):
        query("precog_accuracy_by_bin", db)  # no predictions table yet


# -- precog_accuracy_by_bin ------------------------------------------------------------------

# task -> [(example, score at k=1, score at k=50, correct at seed 1, correct at seed 2)]
BINS = {
    "A": [("a1", 0.05, 0.45, True, True), ("a2", 0.08, 0.45, True, True),
          ("a3", 0.55, 0.85, True, False), ("a4", 1.00, 1.00, False, False),
          ("a5", 0.95, 1.00, True, True)],
    "B": [("b1", 0.02, 0.25, False, False), ("b2", 0.58, 0.75, True, True),
          ("b3", 0.51, 0.75, False, True)],
}


@pytest.fixture(scope="module")
def bins_db(tmp_path_factory):
    precog, preds = [], []
    for task, rows in BINS.items():
        for eid, s1, s50, c1, c2 in rows:
            precog += [{"task": task, "model": "m", "example_id": eid, "k": 1, "score": s1,
                        "pll": -1.0},
                       {"task": task, "model": "m", "example_id": eid, "k": 50, "score": s50,
                        "pll": -1.0}]
            preds += [_pred(task, eid, 1, c1), _pred(task, eid, 2, c2), *_noise_rows(task, eid, c1)]
    return make_db(tmp_path_factory.mktemp("bins") / "r.duckdb", precog, preds)


def _expected_bins(width):
    """The same numbers, computed in Python: {(task, k, bin_start): (acc, n_ex, n_pred)}."""
    n_bins = math.ceil(1 / width)
    cells = {}
    for task, rows in BINS.items():
        for eid, s1, s50, c1, c2 in rows:
            for k, score in ((1, s1), (50, s50)):
                b = round(min(math.floor(score / width), n_bins - 1) * width, 6)
                for t in (task, "ALL"):
                    cell = cells.setdefault((t, k, b), ([], set()))
                    cell[0].extend([c1, c2])
                    cell[1].add((task, eid))
    return {key: (round(sum(c) / len(c), 4), len(ids), len(c)) for key, (c, ids) in cells.items()}


@pytest.mark.parametrize("width", [0.1, 0.25, 0.5])
def test_accuracy_by_bin(bins_db, width):
    params = {} if width == 0.1 else {"bin_width": width}
    df = query("precog_accuracy_by_bin", bins_db, **params)
    assert df.columns == ["task", "model", "k", "bin_start", "bin_end", "accuracy",
                          "n_examples", "n_predictions"]
    got = {(r["task"], r["k"], r["bin_start"]): (r["accuracy"], r["n_examples"], r["n_predictions"])
           for r in df.iter_rows(named=True)}
    assert got == _expected_bins(width)
    assert (df["model"] == "m").all()
    assert ((df["bin_end"] - df["bin_start"] - width).abs() < 1e-9).all()
    assert df["task"].to_list()[-1] == "ALL"  # pooled rows last


def test_accuracy_by_bin_hand_values(bins_db):
    df = query("precog_accuracy_by_bin", bins_db).filter(pl.col("k") == 1)
    row = {(r["task"], r["bin_start"]): r for r in df.iter_rows(named=True)}
    # Bin [0, 0.1): A has 2 examples x 2 seeds all correct, B 1 example x 2 seeds all wrong.
    assert row["A", 0.0]["accuracy"] == 1.0 and row["B", 0.0]["accuracy"] == 0.0
    # Pooled rows weight by counts: 4/6, not the mean of the task accuracies (0.5).
    assert row["ALL", 0.0]["accuracy"] == 0.6667
    assert (row["ALL", 0.0]["n_examples"], row["ALL", 0.0]["n_predictions"]) == (3, 6)
    # A score of exactly 1 falls in the last bin, with 0.95.
    assert (row["A", 0.9]["n_examples"], row["A", 0.9]["accuracy"], row["A", 0.9]["bin_end"]) == \
        (2, 0.5, 1.0)
    # [0.5, 0.6): a3 (1 of 2), b2 (2 of 2), b3 (1 of 2) -> pooled 4/6.
    assert row["ALL", 0.5]["accuracy"] == 0.6667 and row["B", 0.5]["accuracy"] == 0.75
    assert not any(t == "B" and b == 0.9 for t, b in row)  # no empty bins


def test_accuracy_by_bin_scores_on_a_bin_edge(tmp_path):
    scores = {"e3": 0.3, "e6": 0.6, "e7": 0.7, "e5": 0.5}
    db = make_db(tmp_path / "r.duckdb",
                 [{"task": "T", "model": "m", "example_id": e, "k": 1, "score": s, "pll": -1.0}
                  for e, s in scores.items()],
                 [_pred("T", e, 1, True) for e in scores])
    df = query("precog_accuracy_by_bin", db).filter(pl.col("task") == "T")
    assert sorted(df["bin_start"].to_list()) == [0.3, 0.5, 0.6, 0.7]


# -- precog_correlation ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def corr_data():
    rng = np.random.default_rng(0)
    data = {}
    for task in ("T1", "T2"):
        ids = [f"{task}-{i}" for i in range(40)]
        score = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=40)  # many ties
        correct = {seed: (rng.random(40) < 0.3 + 0.5 * score) for seed in (1, 2, 3)}
        data[task] = (ids, score, correct)
    return data


@pytest.fixture(scope="module")
def corr_db(tmp_path_factory, corr_data):
    precog, preds = [], []
    for task, (ids, score, correct) in corr_data.items():
        for i, eid in enumerate(ids):
            precog.append({"task": task, "model": "m", "example_id": eid, "k": 1,
                           "score": float(score[i]), "pll": -1.0})
            preds += [_pred(task, eid, seed, bool(correct[seed][i])) for seed in correct]
            preds += _noise_rows(task, eid, bool(correct[1][i]))
    return make_db(tmp_path_factory.mktemp("corr") / "r.duckdb", precog, preds)


def test_correlation_matches_scipy(corr_db, corr_data):
    df = query("precog_correlation", corr_db)
    assert df["task"].to_list() == ["T1", "T2"]
    for row, (task, (ids, score, correct)) in zip(df.iter_rows(named=True), corr_data.items()):
        x = np.concatenate([score] * 3)  # one pair per (example, seed)
        y = np.concatenate([correct[s] for s in (1, 2, 3)]).astype(float)
        assert row["n"] == 120
        assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=5.1e-5)
        assert row["point_biserial"] == pytest.approx(stats.pointbiserialr(y, x).statistic,
                                                      abs=5.1e-5)
        assert row["accuracy"] == pytest.approx(y.mean(), abs=5.1e-5)
        assert row["spearman"] != pytest.approx(row["point_biserial"], abs=1e-4)


def test_spearman_ties_use_average_ranks(tmp_path):
    # Small enough to check by hand: scores with ties, correctness 0/1.
    score = [0.1, 0.1, 0.5, 0.5, 0.5, 0.9]
    correct = [False, True, False, True, True, True]
    db = make_db(tmp_path / "r.duckdb",
                 [{"task": "T", "model": "m", "example_id": f"e{i}", "k": 1, "score": s,
                   "pll": -1.0} for i, s in enumerate(score)],
                 [_pred("T", f"e{i}", 1, c) for i, c in enumerate(correct)])
    row = query("precog_correlation", db).row(0, named=True)
    expected = stats.spearmanr(score, correct).statistic
    assert row["spearman"] == round(expected, 4)
    # Plain (non-averaged) ranks would give a different value here.
    plain = np.corrcoef(stats.rankdata(score, method="min"),
                        stats.rankdata(correct, method="min"))[0, 1]
    assert round(plain, 4) != round(expected, 4)


# -- precog_planted / precog_distribution -------------------------------------------------------

PLANTED = {  # example: (planted_count, score k=1, pll)
    "p0a": (0, 0.12, -3.0), "p0b": (0, 0.34, -2.0), "p0c": (0, 0.26, -1.0),
    "p4a": (4, 0.92, -0.5), "p4b": (4, 0.74, -0.3),
    "p16": (16, 1.0, -0.1),
}


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory):
    precog, examples = [], []
    for task in ("A", "B"):
        for eid, (count, score, pll) in PLANTED.items():
            if task == "B" and count == 16:
                continue  # task B lacks the 16-times example
            precog.append({"task": task, "model": "m", "example_id": eid, "k": 1,
                           "score": score, "pll": pll})
            precog.append({"task": task, "model": "m", "example_id": eid, "k": 50,
                           "score": 1.0, "pll": pll})
            examples.append({"task": task, "model": "m", "example_id": eid, "split": "test",
                             "planted_count": count, "noisy": False})
    return make_db(tmp_path_factory.mktemp("planted") / "r.duckdb", precog, None, examples)


def test_precog_planted(planted_db):
    df = query("precog_planted", planted_db)
    assert df.columns == ["task", "model", "k", "planted_count", "n_examples", "mean_precog",
                          "median_precog", "mean_pll"]
    a1 = {r["planted_count"]: r for r in df.filter((pl.col("task") == "A") & (pl.col("k") == 1))
          .iter_rows(named=True)}
    assert sorted(a1) == [0, 4, 16]
    assert (a1[0]["n_examples"], a1[0]["mean_precog"], a1[0]["median_precog"], a1[0]["mean_pll"]) \
        == (3, 0.24, 0.26, -2.0)
    assert (a1[4]["n_examples"], a1[4]["mean_precog"], a1[4]["median_precog"], a1[4]["mean_pll"]) \
        == (2, 0.83, 0.83, -0.4)
    assert (a1[16]["n_examples"], a1[16]["mean_precog"], a1[16]["mean_pll"]) == (1, 1.0, -0.1)
    b = df.filter(pl.col("task") == "B")
    assert sorted(set(b["planted_count"])) == [0, 4]
    assert df.filter(pl.col("k") == 50)["mean_precog"].to_list() == [1.0] * 5
    assert df.height == 10  # (A: 3 counts + B: 2 counts) x 2 k


def test_precog_distribution_counts_shared_examples_once(planted_db):
    df = query("precog_distribution", planted_db).filter(pl.col("k") == 1)
    got = {(r["planted_count"], r["bin_start"]): (r["n_examples"], r["share"])
           for r in df.iter_rows(named=True)}
    # Tasks A and B share examples: each counts once.
    assert got == {(0, 0.1): (1, 0.3333), (0, 0.2): (1, 0.3333), (0, 0.3): (1, 0.3333),
                   (4, 0.7): (1, 0.5), (4, 0.9): (1, 0.5), (16, 0.9): (1, 1.0)}
    for _, group in df.group_by("planted_count"):
        assert group["n_examples"].sum() == {0: 3, 4: 2, 16: 1}[group["planted_count"][0]]


def test_memorisation_fit(tmp_path):
    examples = [{"task": "T", "model": "m", "example_id": e, "split": "train", "noisy": noisy,
                 "planted_count": 0} for e, noisy in (("n1", True), ("n2", True), ("c1", False),
                                                       ("c2", False), ("c3", False))]
    correct = {"n1": True, "n2": False, "c1": True, "c2": True, "c3": False}
    preds = [_pred("T", e, seed, c, variant="noisy", checkpoint="memorised", split="train")
             for e, c in correct.items() for seed in (1, 2)]
    preds += [_pred("T", e, 1, True, variant="noisy", checkpoint="final", split="train")
              for e in correct]
    preds += [_pred("T", e, 1, False, variant="noisy", checkpoint="final", split="test")
              for e in correct]
    db = make_db(tmp_path / "r.duckdb", None, preds, examples)
    df = query("memorisation_fit", db)
    got = {(r["checkpoint"], r["noisy"]): (r["n_examples"], r["train_accuracy"])
           for r in df.iter_rows(named=True)}
    assert got == {("memorised", True): (2, 0.5), ("memorised", False): (3, 0.6667),
                   ("final", True): (2, 1.0), ("final", False): (3, 1.0)}


def test_counterfactual_auroc_matches_scipy_by_annotator_agreement(tmp_path):
    rng = np.random.default_rng(3)
    n = 60
    noisy = rng.random(n) < 0.3
    # ties on purpose (mem rounded), one example without mem, a third without a confidence
    mem = np.round(np.where(noisy, rng.normal(0.6, 0.3, n), rng.normal(0.3, 0.3, n)), 1)
    confidence = np.where(rng.random(n) < 0.5, 1.0, 0.6)
    confidence = [None if i % 3 == 0 else float(c) for i, c in enumerate(confidence)]
    examples = [{"task": "T", "model": "m", "example_id": f"e{i}", "split": "train", "noisy": bool(noisy[i]),
                 "annotator_confidence": confidence[i]} for i in range(n)]
    examples.append({"task": "T", "model": "m", "example_id": "t0", "split": "test", "noisy": True,
                     "annotator_confidence": 1.0})
    rows = [{"task": "T", "model": "m", "example_id": f"e{i}", "mem": None if i == 5 else float(mem[i]),
             "gen": 0.5} for i in range(n)] + [{"task": "T", "model": "m", "example_id": "t0", "mem": 9.0,
                                                "gen": 0.5}]
    db = make_db(tmp_path / "r.duckdb", examples=examples)
    con = duckdb.connect(str(db))
    con.register("df", pl.DataFrame(rows).to_arrow())
    con.execute("CREATE TABLE counterfactual AS SELECT * FROM df")
    con.close()
    got = {r["annotators"]: r for r in query("counterfactual_auroc", db).iter_rows(named=True)}
    assert list(got) == ["all", "unanimous", "split"]
    keep = np.arange(n) != 5
    groups = {"all": keep, "unanimous": keep & np.array([c == 1.0 for c in confidence]),
              "split": keep & np.array([c == 0.6 for c in confidence])}
    for name, chosen in groups.items():
        pos, neg = mem[chosen & noisy], mem[chosen & ~noisy]
        expected = stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
        assert got[name]["n_noisy"] == len(pos) and got[name]["n_clean"] == len(neg)
        assert got[name]["auroc_mem"] == pytest.approx(expected, abs=1e-4)
        assert got[name]["mean_mem_noisy"] == pytest.approx(pos.mean(), abs=1e-4)
    # the same examples binned (0.25 wide): each group's shares are its own histogram
    binned = query("counterfactual_distribution", db, bin_width=0.25)
    for label, flag in (("noisy", noisy), ("clean", ~noisy)):
        values = mem[keep & flag]
        edges = np.arange(-1, 1.25, 0.25)
        counts = np.histogram(np.clip(values, -1, 1), bins=edges)[0]  # numpy closes the last bin too
        got_bins = binned.filter(pl.col("label") == label)
        assert got_bins["n_examples"].sum() == len(values)
        assert dict(zip(got_bins["bin_start"], got_bins["n_examples"])) == {
            float(e): int(c) for e, c in zip(edges[:-1], counts) if c}
        assert got_bins["share"].sum() == pytest.approx(1.0, abs=1e-3)


def test_queries_dir_default_is_the_repo_queries_folder(monkeypatch):
    monkeypatch.delenv("RAYMEM_QUERIES", raising=False)
    assert queries.queries_dir().resolve() == QUERIES


def test_query_command_writes_csv_json_and_parquet(tmp_path, monkeypatch, capsys):
    import polars as pl

    from raymem.cli import main

    db = make_db(tmp_path / "r.duckdb", precog=[{"task": "t", "model": "m", "example_id": "e",
                                                  "k": 1, "score": 0.5, "pll": -1.0}])
    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / "scores.sql").write_text("-- Scores.\n-- params: k=1 [1, 100]\n"
                                     "SELECT task, k, score FROM precog WHERE k = $k\n")
    monkeypatch.setenv("RAYMEM_QUERIES", str(qdir))
    assert main(["query", "scores", "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "task,k,score\nt,1,0.5\n"
    assert main(["query", "scores", "--db", str(db), "--format", "json"]) == 0
    assert capsys.readouterr().out.strip() == '[{"task":"t","k":1,"score":0.5}]'
    out = tmp_path / "scores.parquet"
    assert main(["query", "scores", "--db", str(db), "--format", "parquet", "--out", str(out)]) == 0
    assert pl.read_parquet(out).to_dicts() == [{"task": "t", "k": 1, "score": 0.5}]
    assert main(["query", "scores", "--db", str(db), "--format", "parquet"]) == 2  # needs --out
    assert "--format parquet: give a file with --out FILE" in capsys.readouterr().err
    assert main(["query", "scores", "--db", str(db), "--param", "k=0"]) == 2
    assert "scores: k must be a number in [1, 100], got '0'" in capsys.readouterr().err


def test_headline_tables_read_in_80_columns():
    from raymem.headlines import headline_table

    df = pl.DataFrame({"task": ["tweet_sentiment", "tweet_polarity"], "model": ["raymem-mini"] * 2,
                       "variant": ["noisy"] * 2, "checkpoint": ["final"] * 2, "epoch": [20, 20],
                       "n_examples": [59, 40], "train_accuracy": [0.96610169, 0.9]})
    text = headline_table("Fit of the noisy-label models (train split)", df)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # the columns with one value moved into the title; values whole, floats at 3 decimals
    assert "model raymem-mini" in text and "checkpoint final" in text
    assert "| tweet_sentiment |" in text and "| 0.966 " in text
    assert headline_table("One row", df.head(1)).count("raymem-mini") == 1  # one row: nothing moves


def test_the_planted_chart_orders_its_facets_and_legend_numerically(monkeypatch):
    import raymem.charts

    frame = pl.DataFrame({"k": [1] * 4, "planted_count": [16, 0, 4, 1], "bin_start": [0.1] * 4,
                          "share": [0.25] * 4, "n_examples": [5] * 4})
    monkeypatch.setattr(raymem.charts, "query", lambda name, db: frame)
    spec = raymem.charts.precog_planted("unused.duckdb").to_dict()
    assert spec["facet"]["column"]["sort"] == ["0", "1", "4", "16"]  # not "16" before "4"
    assert spec["spec"]["encoding"]["color"]["sort"] == ["0", "1", "4", "16"]


def test_the_accuracy_by_bin_chart_has_wilson_error_bars(monkeypatch):
    from scipy.stats import binomtest

    import raymem.charts

    frame = pl.DataFrame({"task": ["t", "t"], "model": ["m", "m"], "k": [1, 1], "bin_start": [0.0, 0.1],
                          "bin_end": [0.1, 0.2], "accuracy": [0.75, 0.5], "n_examples": [8, 2]})
    monkeypatch.setattr(raymem.charts, "query", lambda name, db: frame)
    spec = raymem.charts.precog_accuracy_by_bin("unused.duckdb").to_dict()
    layers = spec["spec"]["layer"]
    assert [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in layers] == [
        "line", "errorbar"]  # no text labels: they overlapped
    data = list(spec["datasets"].values())[0]
    for row, (k, n) in zip(data, [(6, 8), (1, 2)]):
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (row["low"], row["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_the_mcog_chart_spreads_one_sd_over_seeds(monkeypatch):
    import raymem.charts

    frame = pl.DataFrame({"task": ["t", "t"], "model": ["m", "m"], "technique": ["swapping", "mean"],
                          "mcog": [2.0, 2.5], "mcog_sd": [0.5, None], "n_seeds": [3, 3]})
    monkeypatch.setattr(raymem.charts, "query", lambda name, db: frame)
    spec = raymem.charts.mcog("unused.duckdb").to_dict()
    assert [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
            for layer in spec["layer"]] == ["point", "rule"]
    data = list(spec["datasets"].values())[0]
    assert [(r["low"], r["high"]) for r in data] == [(1.5, 2.5), (None, None)]


def test_the_control_chart_shows_intervals_chance_and_the_published_values(monkeypatch):
    import raymem.charts

    # a 4-layer model: chance 1/2, where the published values are of 12-layer models (chance 1/6)
    frame = pl.DataFrame({"model": ["m", "m"], "technique": ["swapping", "centroids"], "n_runs": [3, 3],
                          "accuracy_at_2": [1.0, 0.5], "chance_at_2": [0.5, 0.5],
                          "at_2_low": [0.61, 0.19], "at_2_high": [1.0, 0.81],
                          "normalised_at_2": [1.0, 0.0], "published_at_2": [0.98, None],
                          "published_normalised_at_2": [0.976, None]})
    monkeypatch.setattr(raymem.charts, "query", lambda name, db: frame)
    spec = raymem.charts.control("unused.duckdb").to_dict()
    layers = spec["spec"]["layer"]
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in layers]
    assert marks == ["bar", "errorbar", "tick", "rule"]
    data = list(spec["datasets"].values())[0]
    # both on the chance-normalised axis: ours and the published tick; centroids was not scored in the paper
    assert layers[0]["encoding"]["y"]["field"] == "normalised_at_2"
    assert layers[2]["encoding"]["y"]["field"] == "published_normalised_at_2"
    assert [(r["technique"], r["published_normalised_at_2"]) for r in data] == [("swapping", 0.976), ("centroids", None)]
    assert [(round(r["normalised_low"], 2), round(r["normalised_high"], 2)) for r in data] == [(0.22, 1.0), (-0.62, 0.62)]
    assert layers[3]["encoding"]["y"]["field"] == "chance_normalised"
    assert "12-layer models, chance 1/6" in str(spec["title"])


def test_the_localisation_chart_bands_one_sd_over_seeds(monkeypatch):
    import raymem.charts

    frame = pl.DataFrame({"task": ["t", "t"], "model": ["m", "m"], "technique": ["swapping", "swapping"],
                          "layer": [1, 2], "score": [0.25, 0.75], "score_sd": [0.05, None], "n_seeds": [3, 1]})
    monkeypatch.setattr(raymem.charts, "query", lambda name, db: frame)
    spec = raymem.charts.localisation("unused.duckdb").to_dict()
    assert [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
            for layer in spec["spec"]["layer"]] == ["line", "errorband"]
    data = list(spec["datasets"].values())[0]
    assert [(r["low"], r["high"]) for r in data] == [(pytest.approx(0.2), pytest.approx(0.3)), (None, None)]


EVIL = "</script><script>alert(1)</script>"


def _chart_with_names(monkeypatch, out_dir, task: str, model: str = "m") -> str:
    import raymem.charts

    frame = pl.DataFrame({"task": [task, task], "model": [model, model], "k": [1, 1], "bin_start": [0.0, 0.1],
                          "bin_end": [0.1, 0.2], "accuracy": [0.75, 0.5], "n_examples": [8, 2]})
    monkeypatch.setattr(raymem.charts, "query", lambda name, db: frame)
    _, page = raymem.charts.save_chart("precog_accuracy_by_bin", "unused.duckdb", out_dir)
    return page.read_text()


def test_a_name_that_closes_the_script_stays_data_in_the_chart_html(monkeypatch, tmp_path):
    import json

    plain = _chart_with_names(monkeypatch, tmp_path / "plain", "tweets")
    page = _chart_with_names(monkeypatch, tmp_path / "evil", EVIL, model=f"a&b {EVIL}")
    assert EVIL not in page and "</script><script>" not in page
    assert page.lower().count("<script") == plain.lower().count("<script")  # no script of its own
    # the embedded spec is still JSON, and holds the names as they are
    spec, _ = json.JSONDecoder().raw_decode(page[page.rindex("const spec = ") + len("const spec = "):])
    rows = list(spec["datasets"].values())[0]
    assert {r["task"] for r in rows} == {EVIL} and {r["model"] for r in rows} == {f"a&b {EVIL}"}


def test_a_name_that_closes_the_script_renders_inert_in_a_browser(monkeypatch, tmp_path):
    from browser import chromium
    from playwright.sync_api import sync_playwright

    executable = chromium()
    path = tmp_path / "chart.html"
    path.write_text(_chart_with_names(monkeypatch, tmp_path / "evil", EVIL))
    dialogs, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: dialogs.append(d.message) or d.dismiss())
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_selector("canvas, svg", timeout=10_000)  # the chart drew
        finally:
            browser.close()
    assert dialogs == [] and errors == []  # no alert ran, and the spec still parsed


def test_a_user_task_name_is_letters_digits_and_punctuation_only():
    from raymem.tasks import task_spec

    task = {"name": EVIL, "files": {"train": "x.csv"}, "text_fields": ["t"], "label_field": "l",
            "label_names": ["a", "b"]}
    with pytest.raises(ConfigError, match=r"tasks\[\]\.name: '</script>.*': a task name is letters, digits"):
        task_spec(task)
    assert task_spec({**task, "name": "my-task_2.v1"}).name == "my-task_2.v1"


def test_report_tables_escape_task_texts_with_html_in_them():
    from raymem.report import html_table

    text = f'<img src=x onerror="alert(1)"> & {EVIL}'
    table = html_table(pl.DataFrame({"task": [EVIL], "text": [text], "score": [0.5]}))
    assert "<script>" not in table and "<img" not in table
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in table and "&amp;" in table
