"""Importers of the authors' data: order detection, trajectory .npy, per-example .npz folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from koopman_distill.errors import KDMError
from koopman_distill.pairs import detect_order, import_npz_folder, import_trajectory

N = 2000


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) uniform on the 8 occupied unit squares of a 4x4 board on [-2, 2]^2, / 0.45."""
    cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    pick = cells[rng.integers(0, len(cells), n)]
    return ((pick - 2 + rng.uniform(size=(n, 2))) / 0.45).astype(np.float32)


def trajectory(steps: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, N, 2) straight paths from noise (t=0) to checkerboard samples (t=T-1)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((N, 2)).astype(np.float32)
    clean = checkerboard(N, rng)
    t = np.linspace(0, 1, steps, dtype=np.float32)[:, None, None]
    traj = (1 - t) * noise + t * clean
    traj[0], traj[-1] = noise, clean  # exact ends
    return traj, noise, clean


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("flip", [False, True])
def test_import_trajectory_detects_order(tmp_path: Path, flip: bool) -> None:
    traj, noise, clean = trajectory()
    if flip:
        traj = traj[::-1].copy()
    assert detect_order(traj[0], traj[-1]) == ("clean-first" if flip else "noise-first")
    np.save(tmp_path / "traj.npy", traj)
    store = import_trajectory(tmp_path / "traj.npy", tmp_path / "out", shard_size=600,
                              progress=False)
    assert len(store) == N and store.shape == (2,) and not store.has_labels
    assert [s["count"] for s in store.manifest["shards"]] == [600, 600, 600, 200]
    data = store.load()
    np.testing.assert_array_equal(data["noise"], noise)
    np.testing.assert_array_equal(data["clean"], clean)
    src = store.manifest["source"]
    assert src["order"] == ("clean-first" if flip else "noise-first")
    assert src["order_reason"].startswith("detected from 2000 examples: the "
                                          f"{'last' if flip else 'first'} end looks like")
    assert store.sigma_max == 1.0 and abs(src["sigma_max_measured"] - 1.0) < 0.05
    assert src["steps"] == 5 and src["kind"] == "trajectory-npy"
    # same import again: the complete store is returned as is
    again = import_trajectory(tmp_path / "traj.npy", tmp_path / "out", shard_size=600,
                              progress=False)
    assert again.manifest == store.manifest


def test_given_order_and_sigma(tmp_path: Path) -> None:
    traj, noise, clean = trajectory()
    np.save(tmp_path / "traj.npy", traj)
    store = import_trajectory(tmp_path / "traj.npy", tmp_path / "out", order="noise-first",
                              sigma_max=1.5, progress=False)
    src = store.manifest["source"]
    assert src["order_reason"] == "given by the caller" and store.sigma_max == 1.5
    assert src["sigma_max_from"] == "given by the caller"
    np.testing.assert_array_equal(store.load()["noise"], noise)
    with pytest.raises(KDMError, match="order must be one of auto, noise-first, clean-first"):
        import_trajectory(tmp_path / "traj.npy", tmp_path / "o2", order="first")


def test_ambiguous_order_errors() -> None:
    rng = np.random.default_rng(1)
    both = rng.standard_normal((N, 2)), 1.5 * rng.standard_normal((N, 2))
    with pytest.raises(KDMError) as e:
        detect_order(*both)
    msg = one_line(e)
    assert msg.startswith("cannot tell which end is noise (both look like zero-mean Gaussian")
    assert msg.endswith("pass --order noise-first or clean-first")
    with pytest.raises(KDMError, match=r"\(neither look like"):
        detect_order(checkerboard(N, rng), rng.uniform(-1, 1, (N, 2)))
    # EDM scale: both ends pass the Gaussian test, but the far smaller one is the clean end
    assert detect_order(0.3 * rng.standard_normal((N, 2)), 80 * rng.standard_normal((N, 2))) \
        == "clean-first"


def test_trajectory_validation(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def err(arr: np.ndarray | None, name: str = "t.npy") -> str:
        if arr is not None:
            np.save(tmp_path / name, arr) if name.endswith(".npy") else \
                (tmp_path / name).write_bytes(b"x")
        with pytest.raises(KDMError) as e:
            import_trajectory(tmp_path / name, out, progress=False)
        return one_line(e)

    assert "has shape (5, 2) (ndim 2); expected ndim 3" in err(np.zeros((5, 2), np.float32))
    assert "need T >= 2" in err(np.zeros((1, 5, 2), np.float32))
    assert "holds int64 values; expected floating point" in err(np.zeros((2, 5, 2), np.int64))
    assert "trajectory file not found" in err(None, "missing.npy")
    assert "is not a .npy file" in err(np.zeros(1), "t.txt")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    assert "cannot read" in err(None, "bad.npy")
    traj, _, _ = trajectory()
    traj[0, 5, 1] = np.nan
    traj[3, 7, 0] = np.inf
    traj[3, 7, 1] = np.nan
    msg = err(traj)
    assert "has 3 non-finite values (NaN/inf), first at (t, n) [(0, 5), (3, 7)]" in msg
    assert not out.exists()  # nothing written


def save_folder(folder: Path, n: int = 12, *, key: str = "arr_0", noise_first: bool = True,
                label: str | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n files ex-XX.npz with 3x8x8 images in [-1, 1] and EDM-scale noise (std 80)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    noise = (80 * rng.standard_normal((n, 3, 8, 8))).astype(np.float32)
    clean = rng.uniform(-1, 1, (n, 3, 8, 8)).astype(np.float32)
    for i in range(n):
        ends = [noise[i], clean[i]] if noise_first else [clean[i], noise[i]]
        arrays = {}
        if key == "arr_0":
            mid = 0.5 * (ends[0] + ends[1])
            arrays["arr_0"] = np.stack([ends[0], mid, mid, ends[1]])
        else:
            arrays["endpoints"] = np.stack(ends)
        if label == "onehot":
            arrays["label"] = np.eye(10, dtype=np.float32)[i % 10]
        elif label == "int":
            arrays["label"] = np.int64(i % 4)
        np.savez(folder / f"ex-{i:03d}.npz", **arrays)
    return noise, clean


def test_npz_folder_trajectories(tmp_path: Path) -> None:
    noise, clean = save_folder(tmp_path / "f")
    (tmp_path / "f" / ".DS_Store").write_bytes(b"hidden files are skipped")
    store = import_npz_folder(tmp_path / "f", tmp_path / "out", shard_size=5, progress=False)
    assert len(store) == 12 and store.shape == (3, 8, 8) and not store.has_labels
    assert [s["count"] for s in store.manifest["shards"]] == [5, 5, 2]
    data = store.load()
    np.testing.assert_array_equal(data["noise"], noise)
    np.testing.assert_array_equal(data["clean"], clean)
    src = store.manifest["source"]
    assert (src["order"], src["key"], src["steps"], src["files"]) == ("noise-first", "arr_0", 4, 12)
    assert src["first_file"] == "ex-000.npz" and src["last_file"] == "ex-011.npz"
    measured = float(np.std(noise, dtype=np.float64))  # the noise end's std, 2 digits: 80
    assert src["sigma_max_measured"] == pytest.approx(measured, abs=1e-6)
    assert store.sigma_max == float(f"{measured:.2g}") == 80.0


@pytest.mark.parametrize("label", ["onehot", "int"])
def test_npz_folder_endpoints_with_labels(tmp_path: Path, label: str) -> None:
    noise, clean = save_folder(tmp_path / "f", key="endpoints", noise_first=False, label=label)
    store = import_npz_folder(tmp_path / "f", tmp_path / "out", num_classes=10, progress=False)
    data = store.load()
    assert store.manifest["source"]["order"] == "clean-first"
    np.testing.assert_array_equal(data["noise"], noise)
    np.testing.assert_array_equal(data["clean"], clean)
    expected = np.arange(12) % (10 if label == "onehot" else 4)
    assert data["label"].dtype == np.int64
    np.testing.assert_array_equal(data["label"], expected)
    assert store.manifest["source"]["num_classes"] == 10
    assert store.manifest["source"]["labels"] == ("one-hot" if label == "onehot" else "class id")


def test_npz_folder_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def err(folder: Path, **kw) -> str:
        with pytest.raises(KDMError) as e:
            import_npz_folder(folder, out, progress=False, **kw)
        return one_line(e)

    save_folder(tmp_path / "stray")
    (tmp_path / "stray" / "notes.txt").write_text("x")
    assert "holds 'notes.txt', which is not an .npz file (1 such entries)" in \
        err(tmp_path / "stray")

    save_folder(tmp_path / "shape")
    np.savez(tmp_path / "shape" / "ex-005.npz", arr_0=np.zeros((4, 3, 8, 9), np.float32))
    msg = err(tmp_path / "shape")
    assert "ex-005.npz differs from ex-000.npz (arr_0 shape (4, 3, 8, 9) vs (4, 3, 8, 8))" in msg

    save_folder(tmp_path / "keys")
    np.savez(tmp_path / "keys" / "ex-007.npz", endpoints=np.zeros((2, 3, 8, 8), np.float32))
    assert "ex-007.npz differs from ex-000.npz (keys ['endpoints'] vs ['arr_0'])" in \
        err(tmp_path / "keys")

    save_folder(tmp_path / "onehot", key="endpoints", label="onehot")
    np.savez(tmp_path / "onehot" / "ex-003.npz", endpoints=np.zeros((2, 3, 8, 8), np.float32),
             label=np.full(10, 0.1, np.float32))
    assert "ex-003.npz: label [0.1" in err(tmp_path / "onehot")
    assert "one-hot label has length 10 but num_classes is 5" in \
        err(tmp_path / "onehot", num_classes=5)

    save_folder(tmp_path / "ids", key="endpoints", label="int")
    assert "class id 3 is outside [0, 3)" in err(tmp_path / "ids", num_classes=3)

    save_folder(tmp_path / "other", key="endpoints")
    np.savez(tmp_path / "other" / "ex-000.npz", x=np.zeros(3))
    assert "ex-000.npz has keys ['x']; expected 'arr_0'" in err(tmp_path / "other")
    assert "holds no .npz files" in err(_empty(tmp_path / "empty"))
    assert "npz folder not found" in err(tmp_path / "nowhere")
    assert not out.exists()  # every check above runs before anything is written


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def test_npz_nonfinite_data(tmp_path: Path) -> None:
    save_folder(tmp_path / "f", n=300)  # more files than the 256 sampled for detection
    for name in ("ex-007.npz", "ex-296.npz"):  # ex-296 is not sampled: found while writing
        traj = np.load(tmp_path / "f" / name)["arr_0"]
        traj[-1, 0, 1, 2] = np.nan
        traj[0, 1, 0, 0] = np.inf
        np.savez(tmp_path / "f" / name, arr_0=traj)
    with pytest.raises(KDMError) as e:
        import_npz_folder(tmp_path / "f", tmp_path / "out", progress=False)
    assert "ex-007.npz has 2 non-finite values (NaN/inf) in its noise/clean ends" in one_line(e)
    assert not (tmp_path / "out").exists()
    (tmp_path / "f" / "ex-007.npz").unlink()
    with pytest.raises(KDMError, match="ex-296.npz has 2 non-finite"):
        import_npz_folder(tmp_path / "f", tmp_path / "out", shard_size=100, progress=False)
    partial = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not partial["complete"] and [s["count"] for s in partial["shards"]] == [100, 100]
