"""Reference statistics from files: `kdm fid-stats` and `eval.reference_stats`."""

import numpy as np
import pytest
from conftest import kdm, kdm_run, read_json

from koopman_distill.errors import KDMError
from koopman_distill.metrics.images import frechet_distance
from koopman_distill.metrics.reference_stats import read_stats, write_stats


@pytest.fixture(scope="module")
def run(digits8):
    return digits8


def test_fid_stats_read_back_give_the_fd_of_the_images(run) -> None:
    r = kdm_run("fid-stats", "digits8", "--out", run / "ref.npz")
    assert r.returncode == 0, r.stderr
    assert "mu and sigma of classifier features (128-d)" in r.stdout
    assert kdm("eval", run / "k", "--out", run / "direct", "--no-plots") == 0
    assert kdm("eval", run / "k", "--out", run / "stats", "--no-plots", "--set",
               f"eval.reference_stats={run / 'ref.npz'}") == 0
    direct, stats = read_json(run / "direct/eval.json"), read_json(run / "stats/eval.json")
    for who in ("student", "teacher"):
        assert stats[who]["fd"] == pytest.approx(direct[who]["fd"], rel=1e-6, abs=1e-9)
        assert "kid" in direct[who] and "kid" not in stats[who]  # KID needs features
    ref = stats["settings"]["reference_stats"]
    assert ref["dim"] == 128 and len(ref["sha256"]) == 64 and ref["stats"].endswith("ref.npz")


def test_edm_and_pytorch_fid_layouts_are_read(tmp_path) -> None:
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(300, 16)), rng.normal(0.3, 1.2, size=(300, 16))
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    want = frechet_distance(mu1, s1, mu2, s2)
    np.savez(tmp_path / "edm.npz", mu=mu2, sigma=s2)  # EDM's fid.py ref
    # pytorch-fid's --save-stats: np.mean of float32 features stays float32
    np.savez_compressed(tmp_path / "pfid.npz", mu=mu2.astype(np.float32), sigma=s2)
    write_stats(tmp_path / "ours.npz", mu2, s2)
    for name, tol in (("edm", 1e-12), ("pfid", 1e-6), ("ours", 1e-12)):
        mu, sigma, info = read_stats(tmp_path / f"{name}.npz", 16)
        assert mu.dtype == np.float64 and info["dim"] == 16
        assert frechet_distance(mu1, s1, mu, sigma) == pytest.approx(want, rel=tol)


@pytest.mark.parametrize("arrays, expect", [
    ({"m": np.zeros(4), "s": np.eye(4)}, "holds m, s; reference statistics need mu and sigma"),
    ({"mu": np.zeros(8), "sigma": np.eye(8)}, "holds 8-dimensional statistics but the "
     "extractor gives 4-dimensional features"),
    ({"mu": np.zeros(4), "sigma": np.eye(3)}, "must be (d,) and (d, d)"),
    ({"mu": np.full(4, np.nan), "sigma": np.eye(4)}, "NaN/inf"),
])
def test_bad_stats_files_are_one_line_errors(tmp_path, arrays, expect) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(KDMError, match=None) as e:
        read_stats(tmp_path / "bad.npz", 4)
    assert expect in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(KDMError, match="cannot read"):
        read_stats(tmp_path / "x.npz", 4)


def test_eval_with_a_stats_file_of_the_wrong_dimension_writes_nothing(run, tmp_path) -> None:
    np.savez(tmp_path / "s.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    r = kdm_run("eval", run / "k", "--out", tmp_path / "e", "--set",
                f"eval.reference_stats={tmp_path / 's.npz'}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "holds 2048-dimensional statistics but the extractor gives 128-dimensional" in r.stderr
    assert not (tmp_path / "e").exists()


def test_fid_stats_refuses_bad_sources(tmp_path) -> None:
    r = kdm_run("fid-stats", tmp_path / "nothing", "--out", tmp_path / "s.npz")
    assert r.returncode == 2 and "is neither a folder of PNGs nor a preset" in r.stderr
    (tmp_path / "empty").mkdir()
    r = kdm_run("fid-stats", tmp_path / "empty", "--out", tmp_path / "s.npz", "--set",
                "eval.extractor=effnet")
    assert r.returncode == 2 and "holds no .png files" in r.stderr
    r = kdm_run("fid-stats", "digits8", "--out", tmp_path / "s.txt")
    assert r.returncode == 2 and "must end in .npz" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
