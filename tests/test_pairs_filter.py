"""``kdm pairs filter``: kept + dropped = the parent, kept pairs bitwise the parent's, the
provenance in the manifest, each criterion on a store whose right answer is known, and a
filtered store that trains and evaluates."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import kdm, read_json

from koopman_distill.api import load_run
from koopman_distill.config import Config, apply_overrides
from koopman_distill.domains import domain_for
from koopman_distill.errors import KDMError
from koopman_distill.io import sha256_file
from koopman_distill.pairs import PairStore, filter_pairs, write_arrays, write_pairs
from koopman_distill.pairs.store import draw_noise

TEACHER = {"kind": "external", "note": "hand-built pairs"}


def _dropped(store: PairStore) -> dict:
    return read_json(store.path / "dropped.json")


def _hand_store(path, clean, label=None, config=None, num_classes=0):
    noise = np.random.default_rng(1).normal(size=clean.shape).astype(np.float32)
    teacher = {**TEACHER, **({"num_classes": num_classes} if num_classes else {})}
    return write_arrays(path, noise, clean, label, shard_size=16, sigma_max=1.0,
                        teacher=teacher, sampler={"method": "unknown"}, nfe=None,
                        source={"kind": "test"}, config=config)


def test_round_trip_on_the_tiny_store_keeps_pairs_bitwise_and_records_provenance(
        tiny, tmp_path):
    assert kdm("pairs", "filter", tiny["pairs"], "--out", tmp_path / "f", "--drop-outliers",
               "0.05", "--run", tiny["kdm"], "--drop-worst", "0.05") == 0
    parent, new = PairStore(tiny["pairs"]), PairStore(tmp_path / "f")
    dropped = _dropped(new)
    gone = np.asarray(dropped["index"])
    kept = np.setdiff1d(np.arange(len(parent)), gone)
    assert len(kept) + len(gone) == len(parent) == 512 and len(new) == len(kept)
    assert len(set(gone.tolist())) == len(gone) and list(gone) == sorted(gone)
    assert set(dropped["reason"]) == {"outlier", "error"}
    assert dropped["reason"].count("outlier") == round(0.05 * 512)  # the first criterion
    old, got = parent.load(kept), new.load()
    for name in ("noise", "clean"):
        assert got[name].dtype == old[name].dtype and np.array_equal(got[name], old[name])
    m = new.manifest
    assert m["shard_size"] == 200
    assert [s["count"] for s in m["shards"]] == [200, 200, len(kept) - 400]
    for key in ("teacher", "sampler", "nfe", "sigma_max", "config", "shape"):
        assert m[key] == parent.manifest[key], key
    src = m["source"]
    assert src["kind"] == "filtered" and src["kept"] == len(kept)
    assert src["parent"]["path"] == str(tiny["pairs"].resolve())
    assert src["parent"]["manifest_sha256"] == sha256_file(tiny["pairs"] / "manifest.json")
    assert src["parent"]["count"] == 512 and src["parent"]["seed"] == parent.manifest["seed"]
    assert src["dropped"] == {"outlier": 26, "error": len(gone) - 26}
    assert src["dropped_sha256"] == sha256_file(tmp_path / "f" / "dropped.json")
    assert src["filter"]["drop_outliers"] == 0.05 and src["filter"]["neighbours"] == 5
    assert src["filter"]["run"] == str(tiny["kdm"].resolve())
    assert new.verify(deep=True) == []
    assert not list(tmp_path.glob(".*"))  # no temporary directory left

    # trains and evaluates like its parent; eval rebuilds the teacher from the manifest
    run = tmp_path / "run"
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tmp_path / "f", "--out",
               run, "--set", "train.steps=4", "--set", "train.eval_every=0") == 0
    assert read_json(run / "run.json")["n_pairs"] == len(kept)
    assert kdm("eval", run, "--no-plots") == 0
    res = read_json(run / "eval" / "eval.json")
    assert res["teacher"]["paired_sq_error_per_sample"] == 0.0  # the teacher was rebuilt
    assert res["student"]["inside_fraction"] > 0


def test_a_planted_outlier_is_the_one_dropped(tmp_path):
    rng = np.random.default_rng(0)
    clean = (0.1 * rng.normal(size=(61, 3))).astype(np.float32)
    clean[37] = [4.0, -3.0, 2.0]
    store = _hand_store(tmp_path / "p", clean)
    by_fraction = filter_pairs(store, tmp_path / "a", drop_outliers=1 / 61, progress=False)
    assert _dropped(by_fraction)["index"] == [37]
    assert _dropped(by_fraction)["value"][0] == pytest.approx(
        np.sort(np.linalg.norm(clean - clean[37], axis=1))[1:6].mean(), rel=1e-5)
    by_score = filter_pairs(store, tmp_path / "b", max_outlier=1.0, progress=False)
    assert _dropped(by_score)["index"] == [37] and len(by_score) == 60
    assert np.array_equal(by_score.load()["clean"], np.delete(clean, 37, axis=0))


def test_max_error_drops_exactly_the_pairs_the_student_fits_worse(tiny, tmp_path):
    parent, gen = PairStore(tiny["pairs"]), load_run(tiny["kdm"])
    pairs = parent.load()
    err = ((gen.map(pairs["noise"]).astype(np.float64) - pairs["clean"]) ** 2).sum(axis=1)
    x = float(np.median(err))
    new = filter_pairs(parent, tmp_path / "f", run=tiny["kdm"], max_error=x, progress=False)
    d = _dropped(new)
    assert d["index"] == np.flatnonzero(err > x).tolist() and set(d["reason"]) == {"error"}
    np.testing.assert_allclose(d["value"], err[err > x], rtol=1e-5)
    assert new.manifest["source"]["scores"]["error"]["median"] == pytest.approx(x, rel=1e-6)


def _seeded_image_store(path, cfg):
    """30 labelled 8x8 images (labels 0..9 in turn) in a store that keeps noise seeds and
    float16 clean images, recording ``cfg``."""
    def generate(g, count):
        noise, seeds = draw_noise(g, count, (1, 8, 8), 80.0, seeded=True)
        return {"noise": noise, "clean": torch.tanh(noise / 80), "noise_seed": seeds,
                "label": torch.arange(count) % 10}

    return write_pairs(path, generate, 30, 10, 3, sigma_max=80.0, shape=(1, 8, 8),
                       teacher={**TEACHER, "num_classes": 10}, sampler={"method": "unknown"},
                       nfe=None, config=cfg.to_dict(), progress=False, clean_dtype="float16",
                       store_noise=False, labels=True)


def test_classes_by_id_and_name_keep_seeded_noise_bitwise(tmp_path):
    cfg = apply_overrides(Config(), ["data.source=fashion-mnist", "data.resolution=8",
                                     "data.conditional=true"])
    parent = _seeded_image_store(tmp_path / "p", cfg)
    new = filter_pairs(parent, tmp_path / "f", keep_classes=["sandal", "9", "Bag"],
                       drop_classes=[8], progress=False)
    assert new.manifest["source"]["filter"] == {"keep_classes": [5, 8, 9], "drop_classes": [8]}
    kept = np.flatnonzero(np.isin(np.arange(30) % 10, [5, 9]))
    assert new.seeded and new.manifest["dtypes"] == parent.manifest["dtypes"]
    old, got = parent.load(kept), new.load()
    for name in ("noise", "noise_seed", "clean", "label"):
        assert got[name].dtype == old[name].dtype and np.array_equal(got[name], old[name])
    assert _dropped(new)["reason"] == ["class"] * 24
    with pytest.raises(KDMError, match=r"unknown class 'Boot'; this store's classes are 0\.\.9 "
                                       r"or 'T-shirt/top', 'Trouser'"):
        filter_pairs(parent, tmp_path / "g", keep_classes=["Boot"], progress=False)
    with pytest.raises(KDMError, match="would keep none of the 30 pairs"):
        filter_pairs(parent, tmp_path / "g", keep_classes=[1], drop_classes=[1],
                     progress=False)
    assert not (tmp_path / "g").exists()


def test_a_near_duplicate_of_an_excluded_image_is_dropped(tmp_path):
    rng = np.random.default_rng(0)
    clean = np.tanh(rng.normal(size=(40, 1, 8, 8))).astype(np.float32)
    excluded = clean[[5, 20]].copy()
    clean[5] += 0.02 * rng.normal(size=(1, 8, 8)).astype(np.float32)  # near, not equal
    np.save(tmp_path / "ex.npy", excluded)
    (tmp_path / "png").mkdir()
    for i, img in enumerate(excluded):  # 8-bit RGB PNGs of the same images
        rgb = np.repeat(np.round((img[0, :, :, None] + 1) * 127.5).astype(np.uint8), 3, -1)
        matplotlib.image.imsave(tmp_path / "png" / f"{i}.png", rgb)
    store = _hand_store(tmp_path / "p", clean)
    np.testing.assert_allclose(domain_for(store.shape).read_examples(tmp_path / "png"),
                               excluded, atol=1.01 / 255)
    cfg = apply_overrides(Config(), ["eval.extractor=effnet", "eval.effnet_resolution=32"])
    new = filter_pairs(store, tmp_path / "f", exclude_like=tmp_path / "png", threshold=1.5,
                       cfg=cfg, progress=False)
    d = _dropped(new)
    assert d["index"] == [5, 20] and d["reason"] == ["exclude_like"] * 2
    assert d["value"][1] < 0.1 < d["value"][0] < 1.5 < new.manifest["source"]["scores"][
        "exclude_like"]["median"]
    assert new.manifest["source"]["filter"]["features"]["space"] == "effnet features"
    with pytest.raises(KDMError, match="eval.extractor=classifier is trained on the teacher's"):
        filter_pairs(store, tmp_path / "c", exclude_like=tmp_path / "ex.npy", threshold=1.5,
                     progress=False)  # a store that does not record its data


def test_damaged_provenance_is_refused(tiny, tmp_path):
    filter_pairs(tiny["pairs"], tmp_path / "f", max_outlier=0.5, progress=False)
    path = tmp_path / "f" / "manifest.json"
    m = json.loads(path.read_text())
    m["source"]["kept"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(KDMError, match="kept and dropped counts do not add up"):
        PairStore(tmp_path / "f")
