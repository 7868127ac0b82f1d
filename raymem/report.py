"""`raymem report`: one self-contained HTML file of a study's results, and its charts as PNGs.

The page holds the headline tables the study prints, the checks, and every chart the
database has tables for, each beside the SQL it came from (queries/NAME.sql). Charts are
PNGs inlined as data URIs and the page runs no script, so it opens offline, from a file,
and asks the network for nothing.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import polars as pl

from raymem.errors import ConfigError
from raymem.headlines import check_location, headline_frames

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.3em 0 1.5em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
img{max-width:100%}.warn{color:#a40}"""


def html_table(df: pl.DataFrame) -> str:
    """A frame as an HTML table: floats to 3 decimals, numbers right-aligned, text escaped."""
    numeric = {c for c, t in df.schema.items() if t.is_numeric()}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.iter_rows():
        cells = []
        for column, value in zip(df.columns, row):
            text = "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            cell = '<td class="num">' if column in numeric else "<td>"
            cells.append(f"{cell}{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _query_source(name: str) -> str:
    from raymem.queries import queries_dir

    sql = (queries_dir() / f"{name}.sql").read_text()
    return (f"<details><summary>query: <code>raymem query {name}</code></summary>"
            f"<pre>{html.escape(sql)}</pre></details>")


def _headline_sections(db_path: Path, bin_width: float) -> list[str]:
    return [f"<h3>{html.escape(title)}</h3>{html_table(df)}{_query_source(name)}"
            for name, title, df in headline_frames(db_path, bin_width)]


def _checks_section(db_path: Path) -> str:
    from raymem.queries import query

    try:
        checks = query("checks", db_path)
    except ConfigError:
        return ""
    warnings = checks.filter(pl.col("status") == "warn")
    items = "".join(f"<li class=\"warn\">{html.escape(r['check_name'])} [{html.escape(check_location(r))}]: "
                    f"{html.escape(str(r['message']))}</li>" for r in warnings.iter_rows(named=True))
    return (f"<h2>Checks</h2><p>{checks.height - warnings.height} passed, {warnings.height} warning(s)</p>"
            f"<ul>{items}</ul>{html_table(checks)}{_query_source('checks')}")


def write_report(db_path: str | Path, out_dir: str | Path, title: str = "", bin_width: float = 0.1) -> Path:
    """Write out_dir/report.html and out_dir/NAME.png per chart; return the HTML's path."""
    from raymem.charts import CHARTS, available_charts, build_chart

    db_path, out = Path(db_path), Path(out_dir)
    if not db_path.exists():
        raise ConfigError(f"--db: no results database at {db_path}; run a study first (raymem study ...)")
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title or db_path.parent.name)}</h1>",
             f"<p>Results database: <code>{html.escape(str(db_path))}</code></p>", "<h2>Headline tables</h2>",
             *_headline_sections(db_path, bin_width), _checks_section(db_path), "<h2>Charts</h2>"]
    for name in available_charts(db_path):
        png = out / f"{name}.png"
        if not png.exists() or png.stat().st_mtime < db_path.stat().st_mtime:  # else drawn from this database
            build_chart(name, db_path).save(str(png), scale_factor=1.5)
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(name)}</h3><img alt=\"{name}\" src=\"data:image/png;base64,{data}\">"
                     f"{_query_source(CHARTS[name][2])}")
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>raymem report: {html.escape(title or db_path.parent.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(path)  # a reader never sees half a report
    return path
