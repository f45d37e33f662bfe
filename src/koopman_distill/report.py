"""``kdm report PATH``: one self-contained HTML page of a run, an evaluation or a bench.

The page reads only what the directory holds: the command lines that made it
(``commands.jsonl``, which the CLI appends to), the results (``eval.json``, ``bench.json`` /
``bench.md``, ``analysis/analysis.json``: every number as a table), the training curves of
every run in it (drawn from ``log.jsonl``), every PNG in the tree and each run's
``config.json``. Pictures are embedded as base64 ``data:`` URIs and the style is inline, so the
file opens anywhere without a network or JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import KDMError
from .io import atomic_write, read_json

COMMANDS = "commands.jsonl"  # one JSON row per command that wrote into a directory
KINDS = (("bench.json", "bench"), ("run.json", "run"), ("eval.json", "eval"))
SKIP_DIRS = {"checkpoints", "pairs", "tensorboard"}  # nothing to show, or too much
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_LIST = 12  # list entries shown in a table cell before it is cut
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;
color:#1d1d1f}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.4em}
.meta{color:#666}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px;display:block;
overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f6}td:first-child,th:first-child{text-align:left}
caption{text-align:left;font-weight:600;padding:2px 0}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:12px}
code{background:#f2f2f4;padding:0 3px}
figure{display:inline-block;margin:.5em 1em 1em 0;vertical-align:top}
figure img{max-width:min(100%,640px);border:1px solid #eee}figcaption{color:#555;font-size:12px}
.curve img{max-width:380px}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
"""


def report_kind(path: str | Path) -> str:
    """``run``, ``eval`` or ``bench``: what ``path`` holds (checked without reading it)."""
    path = Path(path)
    if not path.is_dir():
        raise KDMError(f"{path} is not a directory; give a run, eval or bench directory")
    for name, kind in KINDS:
        if (path / name).is_file():
            return kind
    raise KDMError(f"{path} is not a run, eval or bench directory (it holds no run.json, "
                   "eval.json or bench.json); give one of those")


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run, eval or bench directory ``path`` to ``out`` (default
    ``path/report.html``, replaced if it exists) and return where it went."""
    path = Path(path)
    kind = report_kind(path)
    out = Path(out) if out is not None else path / "report.html"
    page = _page(path, kind)
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


# -- the page ------------------------------------------------------------------------------------
def _page(root: Path, kind: str) -> str:
    shown: set[Path] = set()  # PNGs embedded already (each once)
    runs = _runs(root)
    sections = [("commands", "Commands", _commands(root)),
                ("results", "Results", _results(root, kind)),
                ("training", "Training curves", _training(root, runs, shown)),
                ("plots", "Plots and samples", _gallery(root, shown)),
                ("analysis", "Analysis", _analyses(root)),
                ("config", "Config", _configs(root, runs, kind))]
    sections = [s for s in sections if s[2]]
    title = f"kdm report: {kind} {root.resolve()}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{i}">{_esc(t)}</a>' for i, t, _ in sections)
    body = "".join(f'<section id="{i}"><h2>{_esc(t)}</h2>{b}</section>' for i, t, b in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="koopman-distill {_esc(__version__)}">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{_esc(title)}</h1><p class=\"meta\">written {stamp} by koopman-distill "
            f"{_esc(__version__)}</p><nav>{nav}</nav>{body}</body></html>\n")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _walk(root: Path) -> Iterator[Path]:
    """``root`` and the directories under it, sorted, leaving out :data:`SKIP_DIRS`."""
    yield root
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if d.name not in SKIP_DIRS and not d.name.startswith("."):
            yield from _walk(d)


def _rel(root: Path, p: Path) -> str:
    """``p`` relative to ``root``, named by ``root``'s own name (absolute when outside it)."""
    try:
        return str(Path(root.resolve().name) / p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def _runs(root: Path) -> list[Path]:
    """The run directories in the tree (``root`` itself for a run; a bench's stages)."""
    return [d for d in _walk(root) if (d / "run.json").is_file()]


# -- commands ------------------------------------------------------------------------------------
def _commands(root: Path) -> str:
    rows = []
    for d in _walk(root):
        f = d / COMMANDS
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn line of a killed write
            if not isinstance(row, dict) or not isinstance(row.get("argv"), list):
                continue
            rows.append((_rel(root, d), shlex.join(map(str, row["argv"])),
                         row.get("cwd", "-"), row.get("time", "-"), row.get("status", "-")))
    if not rows:
        return ("<p>No command line recorded here (made with the Python API, or by a kdm "
                "from before commands were recorded).</p>")
    return _table("commands", ("written in", "command", "working directory", "finished",
                               "status"), rows, left=True)


# -- results -------------------------------------------------------------------------------------
def _results(root: Path, kind: str) -> str:
    parts = []
    if kind == "bench":
        md = root / "bench.md"
        if md.is_file():
            parts.append(_markdown(md.read_text(errors="replace"), "bench"))
        bench = read_json(root / "bench.json", "bench result")
        parts.append(_numbers(bench, "bench.json", skip=("plot",)))
    if kind == "run":
        parts.append(_numbers(read_json(root / "run.json", "run metadata"), "run.json"))
    for d in _walk(root):
        if (d / "eval.json").is_file():
            parts.append(_evaluation(root, d))
    return "".join(parts)


def _evaluation(root: Path, d: Path) -> str:
    from .demo import results_table

    result = read_json(d / "eval.json", "evaluation")
    name = _rel(root, d)
    try:
        table = _markdown(results_table(result), f"eval {name}")
    except (KeyError, TypeError, ValueError, AttributeError, KDMError) as e:
        raise KDMError(f"{d / 'eval.json'} is not an evaluation koopman-distill wrote "
                       f"({type(e).__name__}: {e}); rerun `kdm eval`") from None
    return (f"<h3>evaluation: {_esc(name)}</h3>{table}"
            + _numbers(result, f"eval {name}/eval.json", skip=("plots",)))


def _analyses(root: Path) -> str:
    parts = []
    for d in _walk(root):
        if (d / "analysis.json").is_file():
            a = read_json(d / "analysis.json", "analysis")
            parts.append(f"<h3>{_esc(_rel(root, d))}</h3>"
                         + _json_tables(a, f"analysis {_rel(root, d)}", skip=("plots",)))
    return "".join(parts)


def _numbers(obj: Any, name: str, skip: tuple[str, ...] = ()) -> str:
    """:func:`_json_tables` of a result, folded away under its name."""
    return (f"<details><summary>every number: {_esc(name)}</summary>"
            f"{_json_tables(obj, name, skip)}</details>")


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _cell(v: Any) -> str:
    """A value as table text: numbers to 4 significant digits, NaN and None as ``-``, long
    lists cut."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > MAX_LIST:
        return json.dumps(v[:MAX_LIST])[:-1] + f", ... ({len(v)} values)]"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _json_tables(obj: Any, name: str, skip: tuple[str, ...] = (), depth: int = 0) -> str:
    """Every number of a JSON object as tables: its scalars (and short lists) as one
    key/value table, a list of objects as one table with a row each, and each nested object
    likewise under its own caption."""
    if not isinstance(obj, Mapping):
        return _table(name, ("value",), [(_cell(obj),)])
    flat = [(k, _cell(v)) for k, v in obj.items()
            if k not in skip and (_scalar(v) or (isinstance(v, list)
                                                 and all(_scalar(x) for x in v)))]
    parts = [_table(name, ("key", "value"), flat)] if flat else []
    for k, v in obj.items():
        if k in skip:
            continue
        sub = f"{name}: {k}"
        if isinstance(v, Mapping) and depth < 4:
            parts.append(_json_tables(v, sub, depth=depth + 1))
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            cols = list(dict.fromkeys(c for x in v for c, y in x.items() if _scalar(y)))
            parts.append(_table(sub, cols, [[_cell(x.get(c)) for c in cols] for x in v]))
        elif isinstance(v, Mapping) or (isinstance(v, list)
                                        and not all(_scalar(x) for x in v)):
            parts.append(f"<details><summary>{_esc(sub)}</summary><pre>"
                         f"{_esc(json.dumps(v, indent=1))}</pre></details>")
    return "".join(parts)


def _table(name: str, header: Any, rows: Any, left: bool = False) -> str:
    style = ' style="text-align:left"' if left else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{style}>{_esc(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return (f'<table data-table="{_esc(name)}"><caption>{_esc(name)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


_CODE = re.compile(r"`([^`]*)`")


def _inline(text: str) -> str:
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", _esc(text))


def _markdown(text: str, name: str) -> str:
    """The Markdown this package writes (``##`` headings, paragraphs, ``- `` lists and pipe
    tables) as HTML; a table is named ``name``."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            rows = [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(_table(name, block[0], rows))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        if line.startswith("#"):
            out.append(f"<h3>{_inline(line.lstrip('#').strip())}</h3>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "".join(out)


# -- pictures ------------------------------------------------------------------------------------
def _figure(data: bytes, caption: str, kind: str = "plot") -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure class="{kind}"><img src="{uri}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _png(p: Path) -> bytes | None:
    """The bytes of the PNG file ``p``; None when it is not one (or cannot be read)."""
    try:
        data = p.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_MAGIC) else None


def _training(root: Path, runs: list[Path], shown: set[Path]) -> str:
    """Each run's loss curves (drawn now from its whole ``log.jsonl``, so an evaluation's
    older ``loss.png`` is left out), the last logged row of each, and each run's evaluations
    during training."""
    from .analysis import plots
    from .training.trainer import read_log

    figures, notes, last, evals = [], [], {}, []
    for run in runs:
        log, name = run / "log.jsonl", _rel(root, run)
        rows = read_log(log, skip_damaged=True) if log.is_file() else []
        steps = [r for r in rows if "lr" in r]  # training rows, not evaluations
        if not steps:
            notes.append(f"<p>{_esc(name)}: no training rows logged yet.</p>")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                png = plots.loss_curves(steps, Path(tmp) / "loss.png", title=name).read_bytes()
                figures.append(_figure(png, f"{name}/log.jsonl", "curve"))
                shown.add((run / "eval" / "loss.png").resolve())
            except KDMError as e:  # e.g. a model that logs no loss-like key
                notes.append(f"<p>{_esc(name)}: {_esc(e)}</p>")
        row = {k: v for k, v in steps[-1].items() if _scalar(v)}
        if isinstance(row.get("time"), (int, float)) and row["time"] > 0:
            row["steps_per_s"] = row["step"] / row["time"]
        last[name] = row
        rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            evals.append(_table(f"training {name}: evaluations", cols,
                                [[_cell(r.get(c)) for c in cols] for r in rows]))
    cols = list(dict.fromkeys(k for r in last.values() for k in r))
    table = _table("training: last logged row", ["run", *cols],
                   [[n, *(_cell(r.get(c)) for c in cols)] for n, r in last.items()])
    return ("".join(figures) + "".join(notes) + (table if last else "")
            + (f"<details><summary>evaluations during training</summary>{''.join(evals)}"
               "</details>" if evals else ""))


def _gallery(root: Path, shown: set[Path]) -> str:
    """Every PNG in the tree not shown yet, and those the results name elsewhere, under the
    directory that holds them."""
    files = [p for d in _walk(root) for p in sorted(d.glob("*.png"))]
    for d in _walk(root):
        for name in ("eval.json", "analysis.json", "bench.json"):
            if (d / name).is_file():
                res = read_json(d / name)
                named = res.get("plots", {}) if isinstance(res, dict) else {}
                named = named if isinstance(named, dict) else {}
                if isinstance(res, dict) and isinstance(res.get("plot"), str):
                    named = {**named, "plot": res["plot"]}
                files += [Path(v) for v in named.values() if isinstance(v, str)]
    parts, last_dir = [], None
    for p in files:
        key = p.resolve()
        if key in shown or p.suffix != ".png" or not p.is_file():
            continue
        shown.add(key)
        data, rel = _png(p), _rel(root, p)
        if p.parent != last_dir:
            parts.append(f"<h3>{_esc(_rel(root, p.parent))}</h3>")
            last_dir = p.parent
        parts.append(_figure(data, rel) if data is not None
                     else f"<p>{_esc(rel)}: not a PNG file; left out</p>")
    return "".join(parts)


# -- config --------------------------------------------------------------------------------------
def _configs(root: Path, runs: list[Path], kind: str) -> str:
    found = [r / "config.json" for r in runs if (r / "config.json").is_file()]
    if kind == "eval":  # the evaluated run's
        result = read_json(root / "eval.json", "evaluation")
        run = result.get("run") if isinstance(result, dict) else None
        if isinstance(run, str) and (Path(run) / "config.json").is_file():
            found.append(Path(run) / "config.json")
    parts = []
    for f in found:
        text = json.dumps(read_json(f, "config"), indent=2)
        parts.append(f"<details><summary>{_esc(_rel(root, f))}</summary><pre>{_esc(text)}"
                     "</pre></details>")
    return "".join(parts)
