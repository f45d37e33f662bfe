"""Pair store: closed-form teacher round trip, batching, resume, validation and corruption."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from koopman_distill.errors import KDMError
from koopman_distill.pairs import FORMAT_VERSION, PairStore, write_arrays, write_pairs
from koopman_distill.pairs.store import shard_seed
from koopman_distill.training import Batches

A = torch.tensor([[1.5, 0.5], [-0.3, 2.0]])
B = torch.tensor([0.1, -0.2])
SIGMA = 2.0


def teacher(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    """Closed-form 'teacher': x_T = sigma * eps, x_0 = x_T @ A + b; label = [x_T[:, 0] > 0]."""
    noise = SIGMA * torch.randn(n, 2, generator=g)
    return {"noise": noise, "clean": noise @ A + B, "label": (noise[:, 0] > 0).long()}


def make(out: Path, n: int = 25, shard_size: int = 10, seed: int = 7, generate=teacher,
         **kw) -> PairStore:
    args = dict(sigma_max=SIGMA, shape=(2,), teacher={"kind": "affine", "A": A.tolist()},
                sampler={"method": "exact", "steps": 1}, nfe=1, config={"x": 1}, progress=False)
    args.update(kw)
    return write_pairs(out, generate, n, shard_size, seed, **args)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_round_trip_matches_closed_form(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    m = store.manifest
    assert (m["format"], m["version"], m["complete"], m["count"]) == ("kdm-pairs", 1, True, 25)
    assert m["order"] == ["noise", "clean"] and m["shape"] == [2] and store.shape == (2,)
    assert m["dtypes"] == {"noise": "float32", "clean": "float32", "label": "int64"}
    assert [s["count"] for s in m["shards"]] == [10, 10, 5]
    assert m["shards"][2]["files"] == {"noise": "noise-00002.npy", "clean": "clean-00002.npy",
                                       "label": "label-00002.npy"}
    assert len(store) == 25 and store.sigma_max == SIGMA and store.has_labels
    assert m["seed"] == 7 and m["nfe"] == 1 and m["source"] == {"kind": "generated"}

    data = store.load()
    assert data["noise"].shape == (25, 2) and data["label"].dtype == np.int64
    # shard i's noise is exactly the documented generator's draw
    for i, (lo, hi) in enumerate([(0, 10), (10, 20), (20, 25)]):
        g = torch.Generator().manual_seed(shard_seed(7, i))
        expected = (SIGMA * torch.randn(hi - lo, 2, generator=g)).numpy()
        np.testing.assert_array_equal(data["noise"][lo:hi], expected)
    clean = data["noise"].astype(np.float64) @ A.double().numpy() + B.double().numpy()
    np.testing.assert_allclose(data["clean"], clean, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data["label"], data["noise"][:, 0] > 0)
    assert isinstance(store.shard_arrays(1)["clean"], np.memmap)

    idx = [24, 3, 3, 17, 0]
    picked = store.load(idx)
    for k in data:
        np.testing.assert_array_equal(picked[k], data[k][idx])
    assert shard_seed(7, 2) == 7 * 1_000_003 + 2
    assert len(pickle.loads(pickle.dumps(store))) == 25


def _index_of(store: PairStore):
    table = {tuple(r): i for i, r in enumerate(store.load()["noise"].tolist())}
    return lambda b: [table[tuple(r)] for r in b["noise"].tolist()]


@pytest.mark.parametrize("budget", [0, None])  # streamed by index, or read into memory
def test_batches_cover_epoch_and_split_ranks(tmp_path: Path, budget) -> None:
    store = make(tmp_path / "s")
    index = _index_of(store)

    def epochs(batch_size, rank=0, world_size=1, steps=12):
        data = Batches(store, batch_size, 1, rank, world_size, memory_budget=budget)
        assert (data.tensors is None) == (budget == 0)
        return [index(next(data)) for _ in range(steps)]

    full = epochs(4)  # 6 full batches an epoch, the short 7th dropped
    first, second = sum(full[:6], []), sum(full[6:], [])
    assert len(set(first)) == 24 and len(set(second)) == 24 and first != second
    # the permutation is torch.randperm(N) seeded with seed * 1_000_003 + epoch
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(1 * 1_000_003 + 1))
    assert second == perm[:24].tolist()
    # rank r of 3 takes rows 3r:3r+3 of each global batch of 9
    ranks = [epochs(3, r, 3, 4) for r in range(3)]
    whole = epochs(9, steps=4)
    assert all(sum((ranks[r][i] for r in range(3)), []) == whole[i] for i in range(4))
    batch = next(Batches(store, 5, memory_budget=budget))
    assert set(batch) == {"noise", "clean", "label"} and batch["clean"].shape == (5, 2)
    assert batch["clean"].dtype == torch.float32 and batch["label"].dtype == torch.int64


def test_batches_resume_exactly(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    data = Batches(store, 4, seed=3, memory_budget=0)
    for _ in range(5):
        next(data)
    state = data.state_dict()
    assert state == {"epoch": 0, "offset": 20}
    after = [next(data) for _ in range(4)]  # crosses into epoch 1
    again = Batches(store, 4, seed=3)
    again.load_state_dict(state)
    for a, b in zip(after, [next(again) for _ in range(4)], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(KDMError, match="batch size 9 is larger than the 8 examples per "
                                       "process"):
        Batches(store, 9, world_size=3)


def test_resume_is_bitwise_identical(tmp_path: Path) -> None:
    calls: list[int] = []
    fail = {"armed": True}

    def flaky(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        calls.append(n)
        if len(calls) == 3 and fail["armed"]:  # dies while generating shard 2
            fail["armed"] = False
            raise RuntimeError("killed")
        return teacher(g, n)

    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(RuntimeError, match="killed"):
        make(a, n=35, generate=flaky)
    m = json.loads((a / "manifest.json").read_text())
    assert not m["complete"] and [s["index"] for s in m["shards"]] == [0, 1]
    with pytest.raises(KDMError) as e:
        PairStore(a)
    assert "is incomplete (2 of 4 shards)" in one_line(e)
    # debris of the interrupted write: a temp file and a half-written, unlisted shard
    (a / ".noise-00002.npy.x1y2z3.tmp").write_bytes(b"junk")
    (a / "noise-00002.npy").write_bytes(b"partial")

    calls.clear()
    store = make(a, n=35, generate=flaky)
    assert calls == [10, 5]  # only shards 2 and 3 were generated
    assert not list(a.glob(".*.tmp"))
    reference = make(b, n=35)
    assert store.manifest == reference.manifest
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 13
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert store.verify() == []

    def never(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        raise AssertionError("a complete store must not regenerate")

    assert make(a, n=35, generate=never).manifest == reference.manifest


def test_other_settings_and_foreign_dirs_refused(tmp_path: Path) -> None:
    make(tmp_path / "s")
    with pytest.raises(KDMError) as e:
        make(tmp_path / "s", seed=8)
    msg = one_line(e)
    assert "already holds a pair store with other settings (seed 7 vs 8)" in msg
    assert "use another --out or delete it" in msg
    with pytest.raises(KDMError, match="teacher"):
        make(tmp_path / "s", teacher={"kind": "other"})
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(KDMError, match="is not a pair store .it holds 'notes.txt'"):
        make(tmp_path / "d")
    with pytest.raises(KDMError, match="n must be a positive integer"):
        make(tmp_path / "z", n=0)


def test_manifest_validation(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    path = store.path / "manifest.json"
    good = json.loads(path.read_text())

    def reopen(m: object) -> str:
        path.write_text(json.dumps(m) if not isinstance(m, str) else m)
        with pytest.raises(KDMError) as e:
            PairStore(store.path)
        return one_line(e)

    assert "format version 2 > 1); upgrade the package" in reopen({**good, "version": 2})
    assert FORMAT_VERSION == 1
    assert "not valid JSON" in reopen('{"format": "kdm-pa')
    assert "is not a pair store manifest" in reopen({**good, "format": "other"})
    assert "missing keys ['sigma_max']" in reopen(
        {k: v for k, v in good.items() if k != "sigma_max"})
    assert "pair order" in reopen({**good, "order": ["clean", "noise"]})
    path.unlink()
    with pytest.raises(KDMError, match="no manifest.json"):
        PairStore(store.path)
    with pytest.raises(KDMError, match="pair store not found"):
        PairStore(tmp_path / "missing")


def test_verify_and_truncation(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    f = store.path / "clean-00001.npy"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    problems = store.verify()
    assert len(problems) == 1 and problems[0].startswith("clean-00001.npy: sha256")
    t = store.path / "noise-00002.npy"
    t.write_bytes(t.read_bytes()[:-8])
    (store.path / "label-00000.npy").unlink()
    assert len(store.verify()) == 3 and "label-00000.npy: missing" in store.verify()
    fresh = PairStore(store.path)
    with pytest.raises(KDMError) as e:
        fresh.shard_arrays(2)
    assert "noise-00002.npy is unreadable or truncated" in one_line(e)
    with pytest.raises(KDMError, match="label-00000.npy is missing"):
        fresh.shard_arrays(0)


def test_wrong_shape_file(tmp_path: Path) -> None:
    store = make(tmp_path / "s")
    np.save(store.path / "clean-00002.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(KDMError) as e:
        PairStore(store.path).load([21])
    assert ("clean-00002.npy holds float32 (4, 2) but the manifest says float32 (5, 2)"
            in one_line(e))
    PairStore(store.path).load([3])  # other shards are unaffected


def test_nonfinite_rejected_and_detected(tmp_path: Path) -> None:
    def nan_teacher(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        out = teacher(g, n)
        if n == 7:  # the last shard (n=17, shard_size=10)
            out["clean"][[2, 4], 1] = float("nan")
            out["noise"][0, 0] = float("inf")
        return out

    with pytest.raises(KDMError) as e:
        make(tmp_path / "a", n=17, generate=nan_teacher)
    msg = one_line(e)
    assert "teacher output for shard 1 has 3 non-finite values" in msg
    assert "(noise: 1, clean: 2)" in msg
    assert [s["index"] for s in json.loads((tmp_path / "a/manifest.json").read_text())
            ["shards"]] == [0]

    store = make(tmp_path / "b", n=25)
    store.check_finite()
    bad = np.load(store.path / "noise-00001.npy")
    bad[[3, 8], 0] = np.nan
    bad[8, 1] = np.inf
    np.save(store.path / "noise-00001.npy", bad)
    with pytest.raises(KDMError) as e:
        PairStore(store.path).check_finite()
    assert ("has 3 non-finite values (NaN/inf) in noise shard 1 at example indices [13, 18]"
            in one_line(e))


def test_write_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((7, 3, 4, 4))
    clean = np.tanh(noise)
    label = np.arange(7) % 3
    meta = dict(shard_size=3, sigma_max=1.0, teacher={"kind": "t"}, sampler={"m": "x"}, nfe=None,
                source={"kind": "test"})
    store = write_arrays(tmp_path / "s", noise, clean, label, **meta)
    assert store.shape == (3, 4, 4) and [s["count"] for s in store.manifest["shards"]] == [3, 3, 1]
    data = store.load()
    np.testing.assert_array_equal(data["noise"], noise.astype(np.float32))
    np.testing.assert_array_equal(data["clean"], clean.astype(np.float32))
    np.testing.assert_array_equal(data["label"], label)
    again = write_arrays(tmp_path / "s", noise, clean, label, **meta)
    assert again.manifest == store.manifest
    with pytest.raises(KDMError, match="other settings"):
        write_arrays(tmp_path / "s", noise, clean, label, **{**meta, "source": {"kind": "y"}})
    with pytest.raises(KDMError, match=r"label has shape \(7, 2\)"):
        write_arrays(tmp_path / "t", noise, clean, np.zeros((7, 2)), **meta)
    with pytest.raises(KDMError, match="must share one shape"):
        write_arrays(tmp_path / "t", noise, clean[:5], **meta)
