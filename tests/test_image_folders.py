"""Image folders: `kdm sample --png-dir` writes one PNG per sample, `kdm eval --samples-dir`
scores a folder of PNGs made by anything with the same metrics as a run."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import kdm, kdm_run, read_json
from PIL import Image
from safetensors.torch import load_file, save_file

from koopman_distill.api import load_run
from koopman_distill.config import preset
from koopman_distill.data.folders import (
    png_name,
    read_png_folder,
    read_pngs,
    to_uint8,
    write_pngs,
)
from koopman_distill.domains.images import Images
from koopman_distill.evaluation.folders import folder_reference
from koopman_distill.training.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def run(digits8):
    """A class-conditional digits8 KDM and its direct evaluation."""
    assert kdm("eval", digits8 / "k", "--out", digits8 / "direct", "--no-plots") == 0
    e = preset("digits8").eval  # the evaluation's noise and labels, as PNGs and as floats
    assert kdm("sample", digits8 / "k", "--n", e.n, "--seed", e.seed, "--png-dir",
               digits8 / "png", "--out", digits8 / "s.npy") == 0
    return digits8


def test_pngs_round_trip_with_edm_rounding(tmp_path) -> None:
    x = np.array([-1.5, -1, -0.5, 0, 1 / 255, 0.5, 1, 1.5, np.nan], np.float32)
    # floor(127.5 x + 128), clipped: 127.5 (x + 1) rounded half up; NaN as -1
    assert to_uint8(x.reshape(1, 1, 1, -1)).ravel().tolist() == [0, 0, 64, 128, 128, 191, 255,
                                                                  255, 0]
    rng = np.random.default_rng(0)
    for c in (1, 3):
        images = rng.uniform(-1, 1, (5, c, 6, 6)).astype(np.float32)
        (tmp_path / str(c)).mkdir()
        write_pngs(images, tmp_path / str(c), 0, 5)
        back = read_pngs(tmp_path / str(c))
        assert back.shape == images.shape
        np.testing.assert_allclose(back, images, atol=1 / 255 + 1e-6)
        np.testing.assert_array_equal(to_uint8(back), to_uint8(images))  # stable
    assert png_name(7, 10) == "000007.png" and png_name(7, 10**7 + 1) == "00000007.png"


def test_sample_png_dir_is_the_npy_rounded_and_carries_the_labels(run) -> None:
    out = run / "s1"
    r = kdm_run("sample", run / "k", "--n", 70, "--seed", 3, "--png-dir", out / "png",
                "--out", out / "s.npy")
    assert r.returncode == 0, r.stderr
    assert "wrote 70 samples to" in r.stdout and "(one PNG each)" in r.stdout
    names = sorted(p.name for p in (out / "png").iterdir())
    assert names == [f"{i:06d}.png" for i in range(70)] + ["labels.npy"]
    samples = np.load(out / "s.npy")
    gen = load_run(run / "k")
    np.testing.assert_array_equal(np.load(out / "png" / "labels.npy"),
                                  gen.labels(70, 3).numpy())
    pixels = np.stack([np.asarray(Image.open(out / "png" / n)) for n in names[:-1]])
    assert pixels.dtype == np.uint8 and pixels.shape == (70, 8, 8)  # grey, 8 bits
    np.testing.assert_array_equal(pixels, to_uint8(samples)[..., 0])
    # --png-dir alone gives the same folder; --class writes that class for all
    assert kdm("sample", run / "k", "--n", 70, "--seed", 3, "--png-dir", out / "alone") == 0
    for n in names:
        assert (out / "alone" / n).read_bytes() == (out / "png" / n).read_bytes()
    assert kdm("sample", run / "k", "--n", 4, "--class", 2, "--png-dir", out / "c2") == 0
    assert np.load(out / "c2" / "labels.npy").tolist() == [2] * 4


def test_a_png_folder_scores_as_the_run_up_to_the_uint8_rounding(run) -> None:
    """`kdm sample --png-dir` at the evaluation's noise, scored by `kdm eval --samples-dir`,
    gives the direct evaluation's numbers up to the 8-bit rounding, and exactly the numbers
    of the rounded samples."""
    direct = read_json(run / "direct" / "eval.json")
    e = preset("digits8").eval
    r = kdm_run("eval", "--samples-dir", run / "png", "--preset", "digits8", "--out",
                run / "folder")
    assert r.returncode == 0, r.stderr
    got = read_json(run / "folder" / "eval.json")
    assert got["n"] == e.n and got["labels"] and got["reference"] == {
        "name": direct["reference"]["name"], "n": direct["reference"]["n"]}
    assert got["settings"]["extractor_settings"] == direct["settings"]["extractor_settings"]
    want = direct["student"]
    assert got["samples"]["fd"] == pytest.approx(want["fd"], rel=2e-3)
    assert got["samples"]["kid"] == pytest.approx(want["kid"], rel=5e-3)
    assert got["samples"]["class_accuracy"] == want["class_accuracy"]
    # the difference is the rounding alone: the rounded floats score the same as the folder
    cfg = preset("digits8")
    ref = folder_reference(cfg, None, (1, 8, 8))
    labels = torch.from_numpy(np.load(run / "png" / "labels.npy"))
    score = Images((1, 8, 8)).scorer(cfg, ref, labels, torch.device("cpu")).score
    rounded = (to_uint8(np.load(run / "s.npy")).transpose(0, 3, 1, 2) / 127.5 - 1)
    np.testing.assert_allclose(read_pngs(run / "png"), rounded, atol=1e-6)
    assert score(rounded.astype(np.float32), None)["fd"] == pytest.approx(
        got["samples"]["fd"], rel=1e-6)
    assert score(np.load(run / "s.npy"), None)["fd"] == pytest.approx(want["fd"], rel=1e-9)


def test_a_folder_scores_against_a_reference_folder_or_stats(run, tmp_path) -> None:
    """Against another folder (no classifier: effnet), and against `kdm fid-stats` of that
    folder: the same Fréchet distance; KID only with features."""
    png = tmp_path / "ref"
    assert kdm("sample", run / "k", "--n", 70, "--seed", 3, "--png-dir", png) == 0
    ext = ["--set", "eval.extractor=effnet", "--set", "eval.effnet_resolution=32"]
    assert kdm("fid-stats", png, "--out", tmp_path / "ref.npz", *ext) == 0
    r = kdm_run("eval", "--samples-dir", run / "png", "--reference", png, *ext)
    assert r.returncode == 0, r.stderr
    r2 = kdm_run("eval", "--samples-dir", run / "png", *ext, "--set",
                 f"eval.reference_stats={tmp_path / 'ref.npz'}", "--out", tmp_path / "e")
    assert r2.returncode == 0, r2.stderr
    a, b = json.loads(r.stdout[r.stdout.index("{"):]), read_json(tmp_path / "e" / "eval.json")
    assert a["reference"]["n"] == 70 and "class_accuracy" not in a["samples"]
    assert b["samples"]["fd"] == pytest.approx(a["samples"]["fd"], rel=1e-6)
    assert "kid" in a["samples"] and "kid" not in b["samples"]
    assert b["settings"]["reference_stats"]["sha256"]


def test_png_folder_failures_leave_nothing(run, tmp_path) -> None:
    bad = tmp_path / "nan-run"
    shutil.copytree(run / "k", bad)
    f = latest_checkpoint(bad) / "ema.safetensors"
    save_file({k: torch.full_like(v, torch.nan) for k, v in load_file(f).items()}, str(f))
    r = kdm_run("sample", bad, "--n", 5, "--png-dir", tmp_path / "new" / "png")
    assert r.returncode == 2 and "5 of 5 samples are NaN/inf" in r.stderr
    assert r.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan-run"]
    # an existing folder is replaced only with --force, and then whole
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "mine.txt").write_text("mine")
    r = kdm_run("sample", run / "k", "--n", 3, "--png-dir", tmp_path / "png")
    assert r.returncode == 2 and "already exists; add --force" in r.stderr
    assert [p.name for p in (tmp_path / "png").iterdir()] == ["mine.txt"]
    assert kdm("sample", run / "k", "--n", 3, "--png-dir", tmp_path / "png", "--force") == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "000000.png", "000001.png", "000002.png", "labels.npy"]
    r = kdm_run("sample", bad, "--n", 5, "--png-dir", tmp_path / "png", "--force")
    assert r.returncode == 2 and len(list((tmp_path / "png").iterdir())) == 4  # kept


def test_with_both_outputs_a_failed_folder_leaves_no_npy(run, tmp_path, monkeypatch) -> None:
    """--out with --png-dir: when the folder cannot be put in place, the .npy is not either."""
    import os

    rename = os.rename

    def no_png_rename(src, dst):
        if os.path.basename(dst) == "png":
            raise PermissionError(13, "Permission denied")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", no_png_rename)
    r = kdm_run("sample", run / "k", "--n", 3, "--png-dir", tmp_path / "png", "--out",
                tmp_path / "s.npy")
    monkeypatch.undo()
    assert r.returncode == 2 and "Permission denied" in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []


def test_examples_folders_are_still_resized_one_by_one(tmp_path) -> None:
    """`kdm pairs filter --exclude-like DIR` takes PNGs of any size (each brought to the
    store's side); only scored samples must share one size."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(tmp_path / "b.png")
    x = read_png_folder(tmp_path, 1, 8)
    assert x.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(x[0], -1)
    np.testing.assert_allclose(x[1], 1, atol=1e-6)
