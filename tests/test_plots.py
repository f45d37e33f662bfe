"""Figures: valid PNG files written atomically."""

import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from koopman_distill.analysis import plots
from koopman_distill.data.checkerboard import sample_checkerboard
from koopman_distill.errors import KDMError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, expected_dir):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 100
    assert [p.name for p in expected_dir.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def board():
    return sample_checkerboard(2000, torch.Generator().manual_seed(0)).numpy()


def test_scatter_compare(tmp_path, board):
    rng = np.random.default_rng(0)
    captions = []
    out = plots.scatter_compare({"teacher (NFE 100)": board,
                                 "KDM (1 step)": board + 0.3 * rng.standard_normal(board.shape)},
                                tmp_path / "scatter.png", title="checkerboard",
                                background=plots.draw_board,
                                caption=lambda p: captions.append(len(p)) or "x")
    assert out == tmp_path / "scatter.png"
    _check_png(out, tmp_path)
    img = matplotlib.image.imread(out)
    assert img.shape[1] > 1.5 * img.shape[0]  # two panels side by side
    assert captions == [2000, 2000]
    # any point cloud, even a collapsed one, gets limits of its own and no board
    generic = plots.scatter_compare({"moons": 10 + rng.standard_normal((300, 2)),
                                     "one point": np.full((50, 2), 3.0)}, tmp_path / "g.png",
                                    axis_labels=("principal axis 1", "principal axis 2"))
    _check_png(generic, tmp_path)


def test_noise_structure_two_rows(tmp_path, board):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(board.shape)
    kdm = board.copy()
    kdm[:50] = 0.0  # centre of the board: an empty cell, so 50 outliers
    out = plots.noise_structure({"teacher": (noise, board), "KDM": (noise, kdm)},
                                tmp_path / "sub" / "noise.png")
    _check_png(out, tmp_path / "sub")
    with pytest.raises(KDMError, match="paired row by row"):
        plots.noise_structure({"KDM": (noise[:10], kdm)}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_far_misses_marks_noise_whose_sample_lands_a_mode_away(tmp_path, board):
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(board.shape)
    student = board.copy()
    student[:40] = -student[:40]  # 40 samples in the mirror-image square
    out = plots.far_misses({"KDM (1 step)": (noise, board, student)}, tmp_path / "far.png",
                           background=500)
    _check_png(out, tmp_path)
    with pytest.raises(KDMError, match="must be paired"):
        plots.far_misses({"KDM": (noise, board, student[:10])}, tmp_path / "bad.png")
    with pytest.raises(KDMError, match="triple"):
        plots.far_misses({"KDM": (noise, board)}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_spectrum(tmp_path):
    rng = np.random.default_rng(2)
    k = 0.3 * rng.standard_normal((64, 64)) / 8
    out = plots.spectrum({"K": np.linalg.eigvals(k),
                          "unstable": torch.tensor([1.2 + 0.1j, 0.5 - 0.5j, -0.9 + 0j])},
                         tmp_path / "spectrum.png")
    _check_png(out, tmp_path)
    with pytest.raises(KDMError, match="1-D"):
        plots.spectrum({"K": k}, tmp_path / "bad.png")
    with pytest.raises(KDMError, match="NaN"):
        plots.spectrum({"K": np.array([np.nan, 1.0])}, tmp_path / "bad.png")


def test_loss_curves(tmp_path):
    rows = [{"step": s, "loss": 1.0 / (s + 1), "latent": 0.5 / (s + 1), "rec": 0.1,
             "push": 0.2 / (s + 1), "lr": 3e-4, "time": 0.01 * s} for s in range(0, 200, 10)]
    rows.append({"step": 200, "eval_sw": 0.05})  # rows without loss keys are skipped
    rows[3]["loss"] = 0.0  # non-positive values cannot be drawn on a log axis
    out = plots.loss_curves(rows, tmp_path / "loss.png")
    _check_png(out, tmp_path)
    _check_png(plots.loss_curves(rows, tmp_path / "lr.png", keys=["lr"]), tmp_path)
    with pytest.raises(KDMError, match="not found"):
        plots.loss_curves(rows, tmp_path / "bad.png", keys=["nope"])
    with pytest.raises(KDMError, match="'step'"):
        plots.loss_curves([{"loss": 1.0}], tmp_path / "bad.png")


def test_failing_write_leaves_no_partial_file(tmp_path, board, monkeypatch):
    out = tmp_path / "scatter.png"
    out.write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE + b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(KDMError, match="disk full; nothing was changed"):
        plots.scatter_compare({"x": board}, out)
    assert out.read_bytes() == b"old"  # the previous file is untouched
    with pytest.raises(KDMError):
        plots.spectrum({"K": np.array([0.5j])}, tmp_path / "new.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scatter.png"]


def test_plots_leave_pyplot_and_backend_alone(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from koopman_distill.analysis import plots\n"
        f"plots.scatter_compare({{'x': np.zeros((5, 2))}}, {str(tmp_path / 'a.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    _check_png(tmp_path / "a.png", tmp_path)
