"""Pair stores, round 2: every manifest field validated, big jobs refused before they start,
progress counted in pairs, `pairs verify` as strict as training, NaN reports that name the
store, and `kdm pairs` / `kdm pairs import` options that are never silently ignored."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bad_input_cases import key_paths, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pairs import make, teacher

from koopman_distill import (
    api,  # noqa: F401 (imported before timing the CLI)
    resources,
)
from koopman_distill.cli import main
from koopman_distill.errors import KDMError
from koopman_distill.io import sha256_file
from koopman_distill.pairs import PairStore, write_arrays
from koopman_distill.pairs import store as store_module
from koopman_distill.training import Batches


def cli(*argv: object) -> tuple[int, str]:
    """Exit code and stderr of ``kdm ARGV`` run in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def error_line(code: int, stderr: str) -> str:
    """The one `kdm: error:` line of a failed command (progress bars may come before it)."""
    lines = stderr.strip().splitlines()
    assert code == 2 and lines[-1].startswith("kdm: error: "), stderr
    assert stderr.count("kdm: error") == 1 and "Traceback" not in stderr, stderr
    return lines[-1]


def refused(store: Path) -> str:
    with pytest.raises(KDMError) as e:
        PairStore(store).load([0])
    assert "\n" not in str(e.value)
    return str(e.value)


def edited(store: Path, edit) -> Path:
    m = json.loads((store / "manifest.json").read_text())
    edit(m)
    (store / "manifest.json").write_text(json.dumps(m))
    return store


# -- manifests --------------------------------------------------------------------------------
def test_deeply_nested_and_huge_number_manifests(tmp_path):
    store = make(tmp_path / "s").path
    (store / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "is not a file koopman-distill wrote (RecursionError: maximum recursion" in refused(
        store)
    (store / "manifest.json").write_text('{"format": "kdm-pairs", "count": ' + "9" * 5000 + "}")
    assert "is not a file koopman-distill wrote (ValueError: Exceeds the limit" in refused(store)


@pytest.mark.parametrize("edit,expect", [
    (lambda m: m.update(version=True), "no positive integer format version"),
    (lambda m: m.update(sigma_max=True), "sigma_max True"),
    (lambda m: m.update(sigma_max=10**400), "sigma_max 1000"),  # no float holds it
    (lambda m: m.update(seed="7"), "seed '7' is not an integer"),
    (lambda m: m.update(nfe={}), "nfe {} is not a count"),
    (lambda m: m.update(teacher=["x"]), "teacher ['x'] is not an object"),
    (lambda m: m.update(sampler="exact"), "sampler 'exact' is not an object"),
    (lambda m: m.update(source=3), "source 3 is not an object"),
    (lambda m: m.update(config=[1]), "config [1] is not an object or null"),
    (lambda m: m.update(complete="yes"), "complete 'yes' is not true or false"),
    (lambda m: m["sampler"].update(steps="1"), "sampler steps '1'"),
    (lambda m: m["teacher"].update(path=5), "teacher path 5"),
    (lambda m: m["dtypes"].update(clean=None), "dtypes"),  # np.dtype(None) is float64
    (lambda m: m["shards"][1].update(index=True), "shard index True"),
    (lambda m: m["shards"][2].update(count=5.0), "shard 2 count 5.0"),
    (lambda m: m["shards"][0]["sha256"].update(clean="z" * 64), "shard 0 sha256"),
    (lambda m: m.update(shape=[10**12, 10**12]), "are more values than any store holds"),
    (lambda m: m.update(shard_size=10**30), "shard_size at most 2**60"),
])
def test_wrong_typed_manifest_fields(tmp_path, edit, expect):
    store = edited(make(tmp_path / "s").path, edit)
    msg = refused(store)
    assert expect in msg and "the store is damaged" in msg


def test_resume_over_a_damaged_manifest(tmp_path):
    """The writer validates the manifest it resumes from as strictly as the reader."""
    store = make(tmp_path / "s").path

    def damage(m):
        m["complete"] = False
        m["shards"][0]["files"] = "noise-00000.npy"

    edited(store, damage)
    before = (store / "manifest.json").read_bytes()
    with pytest.raises(KDMError, match=r"inconsistent \(shard 0 files 'noise-00000.npy'"):
        make(store)
    assert (store / "manifest.json").read_bytes() == before


def test_other_storage_is_another_store(tmp_path):
    """A complete float32 store is not handed back for float16, nor resumed with it."""
    make(tmp_path / "s")
    with pytest.raises(KDMError, match="other settings .arrays .*'clean': 'float32'.* vs "
                                       ".*'clean': 'float16'"):
        make(tmp_path / "s", clean_dtype="float16")
    edited(tmp_path / "s", lambda m: m.update(complete=False))
    with pytest.raises(KDMError, match="other settings .arrays"):
        make(tmp_path / "s", clean_dtype="float16")


# -- big jobs ---------------------------------------------------------------------------------
def test_pairs_beyond_the_disk_fail_fast(tiny, tmp_path):
    out = tmp_path / "deep" / "store"
    start = time.perf_counter()
    line = error_line(*cli("pairs", "--teacher", tiny["teacher"], "--out", out, "--n", "1e12"))
    assert time.perf_counter() - start < 2
    assert "1000000000000 pairs needs 22.4 TB (22400000000000 bytes) on disk, " in line
    assert f"bytes) free in {tmp_path}; make fewer pairs (--n)" in line
    assert not (tmp_path / "deep").exists()


def test_disk_estimate_against_free_space(tmp_path, monkeypatch):
    """25 pairs of (2,) float32 + labels: 25 * 24 bytes of data, 3 shards of headers/entries."""
    need = store_module.store_bytes(25, 10, (2,), {"noise": "float32", "clean": "float32"}, 8)
    assert need == 25 * 24 + 3 * (2 * 128 + 1024)
    free = need + need // 20 + (16 << 20) - 1
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: SimpleNamespace(free=free))
    with pytest.raises(KDMError, match=f"25 pairs needs .* on disk, .* free in {tmp_path};"):
        make(tmp_path / "a", labels=True)
    assert not (tmp_path / "a").exists()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((25, 2))
    with pytest.raises(KDMError, match="25 pairs needs"):
        write_arrays(tmp_path / "b", x, x, np.zeros(25, int), shard_size=10, sigma_max=1.0,
                     teacher={}, sampler={}, nfe=None, source={})
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(resources.shutil, "disk_usage",
                        lambda p: SimpleNamespace(free=free + 1))
    assert len(make(tmp_path / "a", labels=True)) == 25


def test_shard_size_beyond_int64_refused(tiny, tmp_path):
    """Shard sizes that numpy cannot index with are refused before writing."""
    with pytest.raises(KDMError, match="shard size 10{30} is larger than any store"):
        make(tmp_path / "s", shard_size=10**30)
    line = error_line(*cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "t",
                           "--n", "10", "--set", "pairs.shard_size=1e300"))
    assert "is larger than any store (at most 2**60 examples); lower pairs.shard_size" in line
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_shard_beyond_memory_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 100)
    with pytest.raises(KDMError, match=r"one shard of 10 pairs of shape \(2,\) needs 320 bytes "
                                       r"of memory, 100 bytes available; lower pairs.shard_size"):
        make(tmp_path / "s", n=25, shard_size=10)
    assert not (tmp_path / "s").exists()


def test_n_takes_whole_numbers_written_as_floats(tiny, tmp_path):
    assert cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "s", "--n", "3e2")[0] == 0
    assert len(PairStore(tmp_path / "s")) == 300
    line = error_line(*cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "t",
                           "--n", "2.5"))
    assert "argument --n: invalid int value: '2.5' (give a whole number" in line
    assert not (tmp_path / "t").exists()
    # the settings kdm pairs reads still act
    assert cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "e", "--n", "1e2",
               "--set", "teacher.sampler=euler", "--set", "pairs.clean_dtype=float16",
               "--set", "pairs.batch_size=50")[0] == 0
    m = PairStore(tmp_path / "e").manifest
    assert (m["count"], m["sampler"]["method"], m["dtypes"]["clean"]) == (100, "euler", "float16")


# -- progress ---------------------------------------------------------------------------------
class Bar:
    """Records what a tqdm bar is told."""

    made: list[Bar] = []

    def __init__(self, total=None, initial=0, desc="", unit="it", disable=False) -> None:
        self.total, self.n, self.desc, self.unit, self.steps = total, initial, desc, unit, []
        Bar.made.append(self)

    def update(self, k=1) -> None:
        self.n += k
        self.steps.append(k)

    def close(self) -> None:
        pass


def test_progress_counts_pairs_within_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "tqdm", Bar)
    Bar.made.clear()

    def batched(g, n, advance):
        out = teacher(g, n)
        for k in (4, 4, n - 8):  # three batches per shard
            advance(k)
        return out

    make(tmp_path / "s", n=35, shard_size=10, generate=batched, reports_progress=True,
         progress=True)
    (bar,) = Bar.made
    assert (bar.desc, bar.unit, bar.total, bar.n) == ("pairs", "pair", 35, 35)
    assert bar.steps[:3] == [4, 4, 2] and max(bar.steps) < 10  # moves within a shard
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["complete"], m["shards"] = False, m["shards"][:2]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    Bar.made.clear()
    make(tmp_path / "s", n=35, shard_size=10, generate=batched, reports_progress=True)
    assert (Bar.made[0].total, sum(Bar.made[0].steps), Bar.made[0].n) == (35, 15, 35)


def test_kdm_pairs_moves_per_batch(tiny, tmp_path, monkeypatch):
    """Tiny preset: 512 pairs in shards of 200, batches of 128: the bar moves after every
    batch; the store is bitwise the tiny fixture's."""
    monkeypatch.setattr(store_module, "tqdm", Bar)
    Bar.made.clear()
    assert cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "s")[0] == 0
    (bar,) = Bar.made
    assert (bar.total, bar.n) == (512, 512)
    assert [k for k in bar.steps if k] == [128, 72, 128, 72, 112]
    for f in tiny["pairs"].iterdir():
        assert f.read_bytes() == (tmp_path / "s" / f.name).read_bytes(), f.name


def test_cli_bar_is_labelled_once(tiny, tmp_path):
    out = tmp_path / "pairs"  # the store's name is the bar's label: `pairs pairs:` before
    code, err = cli("pairs", "--teacher", tiny["teacher"], "--out", out)
    assert code == 0
    assert "pairs: 100%" in err and "512/512" in err and "pair/s" in err
    assert "pairs pairs" not in err


# -- verify -----------------------------------------------------------------------------------
def reseal(store: Path, name: str, arr: np.ndarray) -> None:
    np.save(store / name, arr)
    m = json.loads((store / "manifest.json").read_text())
    kind, index = name.split("-")[0], int(name.split("-")[1][:5])
    m["shards"][index]["sha256"][kind] = sha256_file(store / name)
    (store / "manifest.json").write_text(json.dumps(m))


def test_verify_checks_headers_and_values(tiny, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny["pairs"], store)
    clean = np.load(store / "clean-00001.npy")
    clean[[3, 9], 0] = np.nan
    clean[9, 1] = np.inf
    reseal(store, "clean-00001.npy", clean)
    reseal(store, "noise-00002.npy", np.zeros((4, 2), np.float32))
    line = error_line(*cli("pairs", "verify", store))
    assert "is damaged, 2 problem(s): " in line
    assert "clean-00001.npy has 3 non-finite values (NaN/inf), at example indices [203, 209]" \
        in line
    assert "noise-00002.npy holds float32 (4, 2) but the manifest says float32 (112, 2)" in line
    assert cli("train", "--preset", "checkerboard-tiny", "--pairs", store, "--out",
               tmp_path / "run")[0] == 2  # what verify refuses, training refuses too
    code, _ = cli("pairs", "verify", tiny["pairs"])
    assert code == 0


# -- NaN reports ------------------------------------------------------------------------------
def test_nan_reports_name_store_and_shard(tmp_path):
    def nan_teacher(g, n):
        out = teacher(g, n)
        if n == 5:
            out["clean"][1, 0] = float("nan")
        return out

    with pytest.raises(KDMError) as e:
        make(tmp_path / "a", n=25, generate=nan_teacher)
    assert "teacher output for shard 2 has 1 non-finite values (NaN/inf)" in str(e.value)
    assert f"nothing was written for it into pair store {tmp_path / 'a'};" in str(e.value)
    x = np.ones((7, 2))
    x[5, 1] = np.inf
    with pytest.raises(KDMError) as e:
        write_arrays(tmp_path / "b", x, x, shard_size=4, sigma_max=1.0, teacher={},
                     sampler={}, nfe=None, source={})
    assert "shard 1 has 2 non-finite values (NaN/inf) (noise: 1, clean: 1)" in str(e.value)
    assert f"into pair store {tmp_path / 'b'};" in str(e.value)


# -- options never silently ignored -----------------------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    (["--set", "train.steps=5"], "--set train.steps has no effect on `kdm pairs`, which reads "
                                 "only pairs, teacher.steps, teacher.sampler"),
    (["--set", "model.width=8"], "--set model.width has no effect"),
    (["--set", "teacher.sigma_max=2"], "--set teacher.sigma_max has no effect"),
    (["--set", "data.n=10"], "--set data.n has no effect"),
    (["--n", "300", "--set", "pairs.n=200"], "give --n or --set pairs.n, not both"),
    (["--seed", "3", "--set", "pairs.seed=4"], "give --seed or --set pairs.seed, not both"),
])
def test_pairs_refuses_settings_it_would_ignore(tiny, tmp_path, argv, expect):
    line = error_line(*cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "s",
                           *argv))
    assert expect in line
    assert not (tmp_path / "s").exists()


def test_import_arguments_checked_first(tmp_path):
    traj = np.random.default_rng(0).standard_normal((3, 50, 2)).astype(np.float32)
    np.save(tmp_path / "t.npy", traj)
    for extra, expect in ((["--shard-size", "0"], "--shard-size must be a positive integer"),
                          (["--shard-size", "-3"], "--shard-size must be a positive integer"),
                          (["--sigma-max", "nan"], "--sigma-max must be a positive number"),
                          (["--sigma-max", "-1"], "--sigma-max must be a positive number")):
        line = error_line(*cli("pairs", "import", tmp_path / "t.npy", "--out", tmp_path / "o",
                               *extra))
        assert expect in line
    os.mkfifo(tmp_path / "fifo")
    line = error_line(*cli("pairs", "import", tmp_path / "fifo", "--out", tmp_path / "o"))
    assert "is neither a file nor a directory" in line
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    line = error_line(*cli("pairs", "import", tmp_path / "t.npy", "--out", tmp_path / "o",
                           "--order", "noise-first"))
    assert "is not a pair store (it holds 'notes.txt')" in line
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["notes.txt"]


def test_batches_sized_by_the_files(tmp_path):
    """One shard claiming 10**15 examples: refused at its header, not by a huge permutation."""
    store = make(tmp_path / "s", n=25, shard_size=25).path
    edited(store, lambda m: (m.update(count=10**15, shard_size=10**15),
                             m["shards"][0].update(count=10**15)))
    with pytest.raises(KDMError, match=r"noise-00000.npy holds float32 \(25, 2\) but the "
                                       r"manifest says float32 \(1000000000000000, 2\)"):
        Batches(PairStore(store), 4)


def test_import_into_its_own_folder_refused(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.savez(folder / f"{i}.npz", endpoints=rng.standard_normal((2, 1, 2, 2)))
    line = error_line(*cli("pairs", "import", folder, "--out", folder / "store",
                           "--order", "noise-first"))
    assert f"the store {folder / 'store'} would lie inside the folder {folder}" in line
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.npz" for i in range(6)]


LEAVES = st.sampled_from([None, True, 0, -1, 7, 2.5, 10**400, "", "x", "float32", [], {},
                          [10**12, 10**12], "0" * 64]) | st.text(max_size=3)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_resume_over_mutated_manifests(tmp_path_factory, data):
    """Rerunning the writer over an incomplete store whose manifest was changed anywhere:
    it resumes or refuses in one line, and a refusal changes no file."""
    store = make(tmp_path_factory.mktemp("fuzz") / "s").path
    good = json.loads((store / "manifest.json").read_text())
    good["complete"] = False
    doc = json.loads(json.dumps(good))
    path = data.draw(st.sampled_from([p for p in key_paths(doc) if p]))
    mutate(doc, path, data.draw(st.sampled_from(["replace", "delete"])), data.draw(LEAVES))
    (store / "manifest.json").write_text(json.dumps(doc))
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    try:
        assert len(make(store)) == 25
    except KDMError as e:
        assert "\n" not in str(e)
        assert {p.name: p.read_bytes() for p in store.iterdir()} == before


def test_unwritable_out_is_one_line(tiny, tmp_path, monkeypatch):
    """A parent that cannot be created (read-only, or a file on the way): one line."""
    (tmp_path / "file").write_text("mine")
    line = error_line(*cli("pairs", "--teacher", tiny["teacher"], "--out",
                           tmp_path / "file" / "store"))
    assert f"cannot write {tmp_path / 'file' / 'store'}: " in line
    assert "nothing was written" in line

    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", read_only)
    line = error_line(*cli("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "ro"))
    assert f"cannot write {tmp_path / 'ro'}: Permission denied; nothing was written" in line


def lying_npz(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose ``endpoints`` header claims ``shape`` but holds 64 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("endpoints.npy", buf.getvalue() + b"\0" * 64)
    return path


def test_npz_headers_checked_against_their_bytes(tmp_path):
    """A header claiming petabytes is refused before numpy allocates them."""
    folder = tmp_path / "npz"
    folder.mkdir()
    for i in range(5):
        lying_npz(folder / f"{i}.npz", (2, 10**6, 10**6, 1000))
    line = error_line(*cli("pairs", "import", folder, "--out", tmp_path / "o",
                           "--order", "noise-first"))
    assert "0.npz: endpoints claims shape (2, 1000000, 1000000, 1000) of float32 but holds " \
           "only 64 bytes" in line
    assert not (tmp_path / "o").exists()


def test_unreadable_shard_is_a_problem_not_a_traceback(tmp_path, monkeypatch):
    store = make(tmp_path / "s")
    real = store_module.sha256_file

    def denied(path):
        if Path(path).name == "clean-00001.npy":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(store_module, "sha256_file", denied)
    assert store.verify() == ["clean-00001.npy: unreadable (Permission denied)"]
