"""`kdm report`: one self-contained HTML page, rendered in headless Chromium."""

import base64
import io
import json
import shutil
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import kdm
from PIL import Image

from koopman_distill.analysis import plots
from koopman_distill.report import PNG_MAGIC, SKIP_DIRS

CHROMIUM = shutil.which("chromium")
EVAL = ["--set", "eval.n=200", "--set", "eval.projections=8", "--set", "eval.energy_n=100"]


class Page(HTMLParser):
    """The images (src), named tables, scripts and outside references of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tables, self.widths, self.scripts, self.links = [], [], [], 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
            if "data-width" in a:
                self.widths.append(int(a["data-width"]))
        if tag == "table":
            self.tables.append(a.get("data-table"))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:image/png;base64,", "#")):
                self.links.append(a[key])


def pngs(root: Path) -> Counter:
    """Every PNG file's bytes under ``root`` (outside the directories a report leaves out)."""
    return Counter(p.read_bytes() for p in root.rglob("*.png")
                   if not SKIP_DIRS & set(p.relative_to(root).parts))


def decoded(src: str) -> bytes:
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # a whole, decodable PNG
    return data


def rendered(page: Path, tmp: Path) -> Page:
    """The page as headless Chromium loaded it: a copy of it with a script that marks each
    image with the width Chromium decoded (0 for an image that failed to load)."""
    probe = tmp / "probe.html"
    mark = ("<script>addEventListener('load', () => { for (const i of document.images) "
            "i.setAttribute('data-width', i.naturalWidth) })</script></body>")
    probe.write_text(page.read_text().replace("</body>", mark))
    out = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox",
                          f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return Page(out.stdout)


@pytest.fixture(scope="module")
def evaluated_run(tiny, tmp_path_factory) -> Path:
    """A copy of the tiny KDM run, evaluated through the CLI, with an analysis beside it."""
    run = tmp_path_factory.mktemp("report") / "kdm"
    shutil.copytree(tiny["kdm"], run)
    assert kdm("eval", run, *EVAL) == 0
    (run / "analysis").mkdir()
    strips = plots.quality_vs_nfe({"KDM": [(1, 0.5)]}, "x", run / "analysis" / "strips.png")
    (run / "analysis" / "analysis.json").write_text(json.dumps({
        "run": str(run), "settings": {"n": 64, "neighbours": 5},
        "proximity": {"latent": {"same_square": 0.8}, "noise": {"same_square": 0.4},
                      "random": {"same_square": 0.125}, "rank_correlation": 0.6},
        "outliers": {"count": 3, "indices": [4, 8, 15]}, "spectrum": {"radius": 0.97},
        "plots": {"strips": str(strips)}}))
    return run


def test_report_of_a_run_has_every_table_and_picture(evaluated_run, tmp_path):
    run = evaluated_run
    assert kdm("report", run) == 0
    page = Page((run / "report.html").read_text())
    assert page.scripts == 0 and page.links == []  # self-contained: no script, no network
    embedded = [decoded(src) for src in page.images]
    # every PNG in the run (the evaluation's loss.png is redrawn from log.jsonl), once
    on_disk = pngs(run) - Counter([(run / "eval" / "loss.png").read_bytes()])
    assert not on_disk - Counter(embedded)
    assert len(embedded) == on_disk.total() + 1
    for table in ("commands", "run.json", "eval kdm/eval", "eval kdm/eval/eval.json",
                  "training: last logged row", "analysis kdm/analysis: proximity: latent",
                  "analysis kdm/analysis"):
        assert table in page.tables, (table, page.tables)
    text = (run / "report.html").read_text()
    assert "kdm eval " in text and "kdm train " in text
    assert json.loads((run / "config.json").read_text())["preset"] in text


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_report_loads_every_image_in_headless_chromium(evaluated_run, tmp_path):
    out = tmp_path / "page.html"
    assert kdm("report", evaluated_run, "--out", out) == 0
    t = time.perf_counter()
    shown = rendered(out, tmp_path)
    took = time.perf_counter() - t
    written = Page(out.read_text())
    assert len(shown.images) == len(written.images) >= 6
    assert len(shown.widths) == len(shown.images) and min(shown.widths) > 0, shown.widths
    assert shown.tables == written.tables and "training: last logged row" in shown.tables
    assert took < 30, took


def test_report_of_a_bench_shows_its_table_stages_and_plot(tiny, tmp_path):
    bench = tmp_path / "bench"
    shutil.copytree(tiny["kdm"], bench / "kdm")
    plot = plots.quality_vs_nfe({"KDM": [(1, 0.2)], "teacher": [(1, 0.9), (4, 0.1)]}, "W1",
                                bench / "quality_vs_nfe.png")
    rows = [{"method": "kdm", "name": "KDM (1 step)", "nfe": 1, "sliced_wasserstein": 0.2,
             "train_seconds": float("nan")}]
    (bench / "bench.json").write_text(json.dumps({"rows": rows, "suite": "checkerboard",
                                                  "checks": {"speed_target_met": True},
                                                  "plot": str(plot)}))
    (bench / "bench.md").write_text("## bench <checkerboard>\n\nPreset `tiny`.\n\n"
                                    "| method | NFE |\n|---|---|\n| KDM (1 step) | 1 |\n\n"
                                    "- speed: met\n")
    assert kdm("report", bench, "--out", tmp_path / "b.html") == 0
    text = (tmp_path / "b.html").read_text()
    page = Page(text)
    assert {"bench", "bench.json: rows", "bench.json: checks",
            "training: last logged row"} <= set(page.tables)
    assert plot.read_bytes() in [decoded(s) for s in page.images]
    assert "bench &lt;checkerboard&gt;" in text and "<code>tiny</code>" in text
    assert not (bench / "report.html").exists()


def test_report_refuses_a_directory_that_is_none_of_them(tiny, tmp_path, capsys):
    assert kdm("report", tiny["pairs"]) == 2
    err = capsys.readouterr().err
    assert "is not a run, eval or bench directory" in err and len(err.splitlines()) == 1
    assert not (tiny["pairs"] / "report.html").exists()
    assert kdm("report", tiny["kdm"], "--out", tmp_path / "r.txt") == 2
    assert "must end in .html" in capsys.readouterr().err
