"""Every results table in docs/benchmarks.md equals the committed JSON it was made from.

A table is tied to its JSON by an HTML comment right above it (blank lines may separate them):

    <!-- table: results/digits-diffusers-2026-12-02.json
    rows: teacher | kdm | kd
    cells: - | nfe | fd | kid | paired_mse | samples_per_s
    -->

``rows`` names the JSON objects behind the table's rows, in order: either one path to a list
(or an object: its values in order), as in a ``kdm bench`` JSON's ``rows: rows``, or one path
per table row separated by ``|``. ``cells`` is a template row, one entry per column, each read
from the row's object. Where the rows share no shape, give one ``row:`` line per table row
instead, its entries read from the top of the JSON.

An entry is ``-`` (a label column: free text, but never a bare number), a path,
``PATH / PATH`` (a ratio, e.g. a speed-up), or ``ENTRY ± ENTRY`` (a value and its spread,
e.g. a mean over seeds and its standard deviation, shown as ``12.3 ± 0.4``). A path's parts
are separated by dots: object keys (a key may hold dots or spaces; ``*`` matches within one
key, which must then be the only match), list indices, and a leading ``$.`` that starts from
the top of the JSON. A number in a cell must equal the JSON's value rounded as displayed:
within half a unit of its last digit (``1,106`` for 1105.64, ``0.9587``, ``2.0e-8``,
``18.6x``, ``95.9%`` for 0.959; ``**`` and backticks are ignored). ``-`` in a mapped cell says
the JSON has no value there (missing, null or NaN). A JSON string must equal the cell's
text, a boolean reads ``yes`` or ``no``.

Every table that holds a bare number in a cell is a results table and needs a marker, and
every file under docs/results is named somewhere in the page.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = DOCS / "benchmarks.md"

NUMBER = re.compile(r"""(?P<sign>[-+]?)
    (?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?
    (?:[eE](?P<exp>[-+]?\d+))?
    (?P<unit>x|%)?""", re.X)
MARKER = re.compile(r"<!--\s*table:(.*?)-->", re.S)


class DocTableError(AssertionError):
    """A table of the page that is not its JSON."""


@dataclass
class Table:
    line: int  # 1-based line of its header row
    header: list[str]
    body: list[list[str]]
    marker: str | None = None  # the comment's text after "table:"
    spec: dict[str, list[str]] = field(default_factory=dict)


# -- reading the page ---------------------------------------------------------------------------
def split_row(line: str) -> list[str]:
    """A markdown table row's cells (outer pipes dropped, ``\\|`` kept as text)."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def parse_marker(text: str) -> tuple[str, dict[str, list[str]]]:
    """The JSON path of a marker and its spec (``rows``, ``cells`` and each ``row``)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise DocTableError("a table marker names no JSON")
    spec: dict[str, list[str]] = {}
    for ln in lines[1:]:
        key, sep, rest = ln.partition(":")
        if not sep or key.strip() not in ("rows", "cells", "row"):
            raise DocTableError(f"table marker line {ln!r}: expected rows:, cells: or row:")
        spec.setdefault(key.strip(), []).append(rest.strip())
    return lines[0], spec


def tables(text: str) -> list[Table]:
    """Every markdown table of ``text`` (outside code fences), with the marker above it."""
    lines, found, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("```"):
            fenced = not fenced
        elif (not fenced and s.startswith("|") and i + 1 < len(lines)
              and re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", lines[i + 1].strip())):
            table = Table(i + 1, split_row(s), [])
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                table.body.append(split_row(lines[j]))
                j += 1
            above = "\n".join(lines[:i]).rstrip()
            if above.endswith("-->"):
                start = above.rfind("<!--")
                m = MARKER.fullmatch(above[start:])
                if m:
                    table.marker, table.spec = parse_marker(m.group(1))
            found.append(table)
            i = j
            continue
        i += 1
    return found


# -- reading the JSON ---------------------------------------------------------------------------
def resolve(data: Any, path: str, top: Any) -> Any:
    """The value at ``path`` (dot-separated) under ``data``, or under ``top`` with ``$.``."""
    if path == "$":
        return top
    if path.startswith("$."):
        data, path = top, path[2:]
    parts, node, i = path.split("."), data, 0
    while i < len(parts):
        if isinstance(node, list):
            try:
                node, i = node[int(parts[i])], i + 1
            except (ValueError, IndexError):
                raise DocTableError(f"{path!r}: no item {parts[i]!r} in a list of "
                                    f"{len(node)}") from None
            continue
        if not isinstance(node, dict):
            raise DocTableError(f"{path!r}: {'.'.join(parts[:i])!r} is a {type(node).__name__}")
        for j in range(len(parts), i, -1):  # the longest key first: keys may hold dots
            key = ".".join(parts[i:j])
            hits = fnmatch.filter(node, key) if "*" in key else [key] * (key in node)
            if len(hits) > 1:
                raise DocTableError(f"{path!r}: {key!r} matches {hits}")
            if hits:
                node, i = node[hits[0]], j
                break
        else:
            raise DocTableError(f"{path!r}: no key {parts[i]!r} (keys: {sorted(node)})")
    return node


def value(entry: str, row: Any, top: Any) -> Any:
    """A template entry's value: a path, or the ratio of two."""
    num, sep, den = entry.partition(" / ")
    if not sep:
        try:
            return resolve(row, entry, top)
        except DocTableError as e:
            if "no key" in str(e) and "." not in entry:
                return None  # a field this row does not have: shown as -
            raise
    a, b = resolve(row, num.strip(), top), resolve(row, den.strip(), top)
    return None if a is None or b is None else a / b


def missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# -- comparing ----------------------------------------------------------------------------------
def plain(cell: str) -> str:
    return cell.replace("**", "").replace("`", "").replace("\u2212", "-").strip()


def check_cell(cell: str, v: Any) -> str | None:
    """Why ``cell`` does not show ``v``, or None when it does."""
    text = plain(cell)
    if isinstance(v, bool):
        return None if text == ("yes" if v else "no") else f"shows {text!r}, JSON has {v}"
    if isinstance(v, str):
        return None if text == v else f"shows {text!r}, JSON has {v!r}"
    if text == "-":
        return None if missing(v) else f"shows -, JSON has {v!r}"
    if missing(v):
        return f"shows {text!r}, JSON has no value"
    if not isinstance(v, (int, float)):
        return f"JSON value is a {type(v).__name__}, not a number"
    m = NUMBER.fullmatch(text)
    if not m:
        return f"{text!r} is not one number"
    shown = float(text.rstrip("x%").replace(",", ""))
    frac, exp = m.group("frac") or "", int(m.group("exp") or 0)
    half = 0.5 * 10.0 ** (exp - len(frac))  # half a unit of the last digit shown
    expected = v * (100 if m.group("unit") == "%" else 1)
    if abs(expected - shown) <= half * (1 + 1e-9):
        return None
    return f"shows {text}, JSON has {v!r}"


def check_table(table: Table, data: Any) -> list[str]:
    """Every disagreement of ``table`` with its JSON ``data``."""
    spec, n_cols = table.spec, len(table.header)
    if "row" in spec:
        if "rows" in spec or "cells" in spec:
            raise DocTableError("give either row: lines or rows: with cells:, not both")
        objects, templates = [data] * len(spec["row"]), spec["row"]
    else:
        if len(spec.get("rows", [])) != 1 or len(spec.get("cells", [])) != 1:
            raise DocTableError("the marker needs one rows: and one cells: line (or row: lines)")
        paths = [p.strip() for p in spec["rows"][0].split("|")]
        if len(paths) == 1:
            objects = resolve(data, paths[0], data)
            objects = list(objects.values()) if isinstance(objects, dict) else objects
            if not isinstance(objects, list):
                raise DocTableError(f"rows: {paths[0]!r} is neither a list nor an object")
        else:
            objects = [resolve(data, p, data) for p in paths]
        templates = spec["cells"] * len(objects)
    if len(objects) != len(table.body):
        raise DocTableError(f"the marker gives {len(objects)} rows, the table has "
                            f"{len(table.body)}")
    problems = []
    for r, (cells, obj, template) in enumerate(zip(table.body, objects, templates, strict=True), 1):
        entries = [e.strip() for e in template.split("|")]
        if len(entries) != n_cols or len(cells) != n_cols:
            raise DocTableError(f"row {r}: {len(cells)} cells and {len(entries)} template "
                                f"entries for {n_cols} columns")
        for head, cell, entry in zip(table.header, cells, entries, strict=True):
            if entry == "-":
                if NUMBER.fullmatch(plain(cell)):
                    problems.append(f"row {r}, {head!r}: a bare number in a label column")
                continue
            parts = entry.split(" ± ")
            shown = cell.split("±") if len(parts) > 1 else [cell]
            if len(shown) != len(parts):
                problems.append(f"row {r}, {head!r} ({entry}): shows {plain(cell)!r}, not "
                                "VALUE ± SPREAD")
                continue
            for c, e in zip(shown, parts, strict=True):
                why = check_cell(c, value(e.strip(), obj, data))
                if why:
                    problems.append(f"row {r}, {head!r} ({entry}): {why}")
    return problems


def has_number(table: Table) -> bool:
    return any(NUMBER.fullmatch(plain(c)) for row in table.body for c in row)


def check_page(text: str, root: Path) -> list[str]:
    """Every problem of the page ``text`` whose markers name JSON files under ``root``."""
    problems = []
    for t in tables(text):
        where = f"table at line {t.line} ({' | '.join(t.header)[:60]})"
        if t.marker is None:
            if has_number(t):
                problems.append(f"{where}: numbers with no <!-- table: results/....json --> "
                                "marker above it")
            continue
        path = root / t.marker
        if not path.is_file():
            problems.append(f"{where}: {t.marker} does not exist")
            continue
        try:
            problems += [f"{where}: {p}" for p in check_table(t, json.loads(path.read_text()))]
        except DocTableError as e:
            problems.append(f"{where}: {e}")
    return problems


# -- the page -----------------------------------------------------------------------------------
def test_every_table_in_benchmarks_md_equals_its_json():
    problems = check_page(PAGE.read_text(), DOCS)
    assert not problems, "\n".join(problems)


def test_the_page_has_tied_tables():
    tied = [t for t in tables(PAGE.read_text()) if t.marker]
    assert len(tied) >= 5
    assert all(t.marker.startswith("results/") for t in tied)


def test_every_results_file_is_named_in_the_page():
    text = PAGE.read_text()
    for path in sorted((DOCS / "results").glob("*.json")):
        assert f"results/{path.name}" in text, f"{path.name} is not named in benchmarks.md"


def test_the_placeholder_sections_are_there():
    text = PAGE.read_text()
    assert "\n## CPU threads on a busy machine\n" in text
    assert "\n## The demo's wall time\n" in text


# -- the checker itself: it fails where it should -----------------------------------------------
RESULT = {"date": "2026-12-02",
          "rows": [{"name": "teacher (Heun x25)", "nfe": 50, "inside": 0.96174,
                    "samples_per_s": 1105.64, "err": 2.04e-8, "ok": True},
                   {"name": "KDM (1 step)", "nfe": 1, "inside": 0.95871, "samples_per_s": 8457.6,
                    "err": None, "ok": False}],
          "per_seed": {"KDM (1 step)": {"fd": {"mean": 12.34, "std": 0.456}}},
          "speed": {"0.1": 3.0, "teacher (heun x18, NFE 35)": 46.27,
                    "KDM, PyTorch fp32": 858.75}}
TABLE = """intro

<!-- table: results/r.json
rows: rows
cells: name | nfe | inside | samples_per_s | err | - | ok
-->

| method | NFE | inside | samples/s | err | note | bitwise |
|---|---:|---:|---:|---:|---|---|
| teacher (Heun x25) | 50 | **0.9617** | 1,106 | 2.0e-8 | one | yes |
| KDM (1 step) | 1 | 0.9587 | 8,458 | - | two | no |
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text(json.dumps(RESULT))
    return tmp_path


BY_ROW = """<!-- table: results/r.json
row: - | speed.teacher* | speed.KDM, PyTorch fp32 / speed.teacher* | rows.1.inside
-->
| | teacher samples/s | KDM vs teacher | KDM inside |
|---|---:|---:|---:|
| speed | 46 | 18.6x | 95.9% |
"""


SPREAD = """<!-- table: results/r.json
row: - | per_seed.KDM (1 step).fd.mean ± per_seed.KDM (1 step).fd.std
-->
| | FD |
|---|---:|
| KDM | 12.3 ± 0.46 |
"""


def test_a_table_that_equals_its_json_passes(root):
    assert check_page(TABLE, root) == []
    assert check_page(BY_ROW, root) == []
    assert check_page(BY_ROW.replace("18.6x", "18.5x"), root)
    assert check_page(SPREAD, root) == []
    for wrong, says in (("12.3 ± 0.47", "shows 0.47"), ("12.4 ± 0.46", "shows 12.4"),
                        ("| 12.3 |", "not VALUE ± SPREAD")):
        problems = check_page(SPREAD.replace("| 12.3 ± 0.46 |", wrong if "|" in wrong
                                             else f"| {wrong} |"), root)
        assert problems and says in "\n".join(problems), problems


@pytest.mark.parametrize("old, new, says", [
    ("0.9587", "0.9588", "shows 0.9588"),
    ("1,106", "1,105", "shows 1,105"),  # 1105.64 rounds to 1,106
    ("2.0e-8", "2.1e-8", "shows 2.1e-8"),
    ("| 50 |", "| 51 |", "shows 51"),
    ("| - | two", "| 0 | two", "JSON has no value"),
    ("| yes |", "| no |", "JSON has True"),
    ("teacher (Heun x25) |", "teacher (Heun x50) |", "JSON has 'teacher (Heun x25)'"),
    ("| one |", "| 7 |", "a bare number in a label column"),
    ("| two |", "| two | 3 |", "cells"),
    ("rows: rows", "rows: rows.0 | rows.1 | rows.1", "the marker gives 3 rows"),
    ("rows: rows", "rows: nowhere", "no key 'nowhere'"),
    ("results/r.json", "results/gone.json", "does not exist"),
    ("<!-- table: results/r.json", "<!-- not a marker:", "no <!-- table"),
])
def test_a_table_that_differs_from_its_json_fails(root, old, new, says):
    text = TABLE.replace(old, new, 1)
    assert text != TABLE
    problems = check_page(text, root)
    assert problems and says in "\n".join(problems), problems


def test_an_unmarked_table_of_text_is_no_results_table(root):
    assert check_page("| a | b |\n|---|---|\n| x1 | y |\n", root) == []
    assert check_page("| a | b |\n|---|---|\n| x | 0.5 |\n", root)


def test_rounding_as_displayed():
    assert check_cell("18.6x", 858.75 / 46.27) is None  # 18.56
    assert check_cell("95.9%", 0.9587) is None
    assert check_cell("-0.00040", -0.000401) is None
    assert check_cell("1.52e-03", 0.0015167) is None
    assert check_cell("0.6e-3", 0.00063) is None
    assert check_cell("2.0e-8", 2.06e-8) is not None
    assert check_cell("0.9587", 0.95875001) is not None
    assert check_cell("136,000", 135485.0) is not None  # trailing zeros are digits shown


def test_paths_ratios_and_keys_with_dots():
    assert resolve(RESULT, "speed.0.1", RESULT) == 3.0
    assert resolve(RESULT, "speed.teacher*", RESULT) == 46.27
    assert resolve(RESULT["rows"][1], "$.rows.0.nfe", RESULT) == 50
    ratio = value("speed.KDM, PyTorch fp32 / speed.teacher*", RESULT, RESULT)
    assert ratio == pytest.approx(858.75 / 46.27)
    with pytest.raises(DocTableError, match="matches"):
        resolve(RESULT, "speed.*", RESULT)
