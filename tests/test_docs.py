"""The documentation: the site builds strictly (a broken link or anchor fails), the README
stays a front door whose links resolve, and the query reference is generated and complete."""

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from raymem.errors import ConfigError
from raymem.queries import columns, list_queries, query, reference

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_site_builds_strictly_and_offline(tmp_path):
    config = (REPO / "mkdocs.yml").read_text()
    assert re.search(r"^\s+font: false", config, re.M)  # no Google Fonts fetched
    assert "social" not in config and "privacy" not in config  # plugins that need the network
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "index.html").is_file() and (site / "fidelity" / "index.html").is_file()
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_readme_is_a_short_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 210
    assert "make demo" in text and "make test" in text


def test_every_relative_link_in_the_readme_exists():
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", t)]
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert missing == []


def test_every_page_in_the_nav_exists_and_every_page_is_reachable():
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = [next(iter(entry.values())) for entry in config["nav"]]
    assert all((REPO / "docs" / page).is_file() for page in pages)
    assert {"study-reference.md", "fidelity.md", "queries.md"} <= set(pages)


def test_committed_query_reference_is_the_generated_one():
    # regenerate with: raymem query --reference > docs/queries.md
    assert (REPO / "docs" / "queries.md").read_text() == reference()


def test_every_query_file_has_its_section_in_the_reference():
    page = (REPO / "docs" / "queries.md").read_text()
    sections = re.findall(r"^## (\w+)$", page, re.M)
    assert sections == [name for name, _ in list_queries()]
    assert sections == sorted(p.stem for p in (REPO / "queries").glob("*.sql"))


def test_columns_are_what_the_query_returns(tmp_path):
    db = tmp_path / "r.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE checks (task VARCHAR, model VARCHAR, seed INTEGER, check_name VARCHAR, "
                "value DOUBLE, threshold DOUBLE, status VARCHAR, message VARCHAR, extra VARCHAR)")
    con.execute("CREATE TABLE intervals (analysis VARCHAR, task VARCHAR, model VARCHAR, key VARCHAR, "
                "estimate DOUBLE, low DOUBLE, high DOUBLE, resampled VARCHAR, n_units INTEGER)")
    con.close()
    for name in ("checks", "intervals"):
        assert columns(name) == query(name, db).columns
    # qualified columns and aliases, from a query that joins
    assert columns("memorisation_fit") == ["task", "model", "variant", "checkpoint", "epoch", "noisy",
                                           "n_examples", "train_accuracy"]


def test_an_unnamed_output_column_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad.sql").write_text("-- A question.\nSELECT task, COUNT(*) FROM checks GROUP BY task;\n")
    monkeypatch.setenv("RAYMEM_QUERIES", str(tmp_path))
    with pytest.raises(ConfigError, match="query bad: an output column without a name"):
        columns("bad")


def test_query_reference_command_prints_the_page(capsys):
    from raymem.cli import main

    assert main(["query", "--reference"]) == 0
    assert capsys.readouterr().out == reference()
