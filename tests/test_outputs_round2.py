"""Issue 15 (sample, eval and outputs): big jobs are checked before they start and streamed
when they do not fit in memory, with the values of one draw; non-finite samples are an error;
outputs never overwrite an input or, without --force, an existing file; nothing partial is
left by a failure or an interrupt; user array files fail in one line."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kdm
from safetensors.torch import load_file, save_file

from koopman_distill import cli, resources
from koopman_distill.api import StudentRun, load_run
from koopman_distill.config import preset
from koopman_distill.data.arrays import load_array
from koopman_distill.data.images import load_images
from koopman_distill.errors import KDMError
from koopman_distill.evaluation import core as evaluation_core
from koopman_distill.training.checkpoint import latest_checkpoint


def run(*argv: object) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue()


def one_line(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kdm: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def saved(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


class Calls:
    """Wraps StudentRun.map (kdm sample) and the evaluation's sampling (kdm eval), recording
    the row count of each call; ``fail_at`` makes that call raise ``error`` instead."""

    def __init__(self, monkeypatch, fail_at: int | None = None,
                 error: type[BaseException] = KeyboardInterrupt) -> None:
        self.rows: list[int] = []
        original = StudentRun.map

        def spy(gen, noise, *a, **kw):
            self.rows.append(len(noise))
            if len(self.rows) == fail_at:
                raise error()
            return original(gen, noise, *a, **kw)

        monkeypatch.setattr(StudentRun, "map", spy)
        draw = evaluation_core.draw

        def spy_draw(sample, noise, *a, **kw):
            self.rows.append(len(noise))
            return draw(sample, noise, *a, **kw)

        monkeypatch.setattr(evaluation_core, "draw", spy_draw)


# -- chunked noise and sampling are one draw ----------------------------------------------------
class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return x * 0.5 if y is None else x + y.view(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("shape,classes,ns", [
    ((2,), 0, [1, 7, 65536, 65536 * 3 + 5, 65536 * 2 + 8]),
    ((1, 4, 4), 3, [1, 255, 256 * 3 + 1, 256 * 5]),
])
def test_noise_and_samples_in_chunks_are_one_draw(shape, classes, ns):
    meta = {"sigma_max": 1.5, "shape": list(shape), "num_classes": classes}
    gen = StudentRun(Identity(), preset("checkerboard-tiny"), meta)
    for n in ns:
        g = torch.Generator().manual_seed(4)
        # the noise of before chunking: existing seeds keep their samples
        assert torch.equal(gen.noise(n, 4), 1.5 * torch.randn(n, *shape, generator=g))
        whole = gen.sample(n, 4)
        for chunk in (gen.block, 2 * gen.block):
            parts = list(gen.sample_chunks(n, 4, chunk=chunk))
            assert [len(p) for p in parts] == [j - i for i, j in gen.spans(n, chunk)]
            assert saved(np.concatenate(parts)) == saved(whole)
            noise = gen.noise(n, 9).numpy()
            labels = gen.labels(n, 9)
            assert saved(np.concatenate(list(gen.map_chunks(noise, labels, chunk)))) == saved(
                gen.map(noise, labels))


def test_sample_beyond_memory_is_streamed_with_the_values_of_one_draw(tiny, tmp_path,
                                                                       monkeypatch):
    n = 65536 * 3 + 5  # the 5-row tail is drawn with the chunk before it
    monkeypatch.setattr(resources, "available_memory", lambda: 3 << 20)  # room for one block
    calls = Calls(monkeypatch)
    assert kdm("sample", tiny["kdm"], "--n", n, "--seed", 3, "--out", tmp_path / "s.npy") == 0
    assert calls.rows == [65536, 65536, 65541]
    monkeypatch.undo()
    assert (tmp_path / "s.npy").read_bytes() == saved(load_run(tiny["kdm"]).sample(n, seed=3))
    assert files(tmp_path) == ["s.npy"]


def test_interrupted_or_failed_stream_leaves_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 3 << 20)
    out = tmp_path / "new" / "dirs" / "s.npy"
    Calls(monkeypatch, fail_at=2)
    code, err = run("sample", tiny["kdm"], "--n", 65536 * 3, "--out", out)
    assert code == 130 and "interrupted" in err
    assert files(tmp_path) == []  # no file, no temp file, no directory made for it
    Calls(monkeypatch, fail_at=3, error=MemoryError)
    with contextlib.suppress(MemoryError):  # a line once cli.main guards against it
        run("sample", tiny["kdm"], "--n", 65536 * 3, "--out", out)
    assert files(tmp_path) == []


def test_sample_beyond_disk_fails_within_2_seconds_saying_the_bytes(tiny, tmp_path,
                                                                    monkeypatch):
    calls = Calls(monkeypatch)
    t = time.perf_counter()
    code, err = run("sample", tiny["kdm"], "--n", 10**15, "--out", tmp_path / "s.npy")
    assert time.perf_counter() - t < 2
    line = one_line(code, err, "--n 1000000000000000", "8000.0 TB (8000000000000128 bytes) "
                    "on disk", "free in")
    free = shutil.disk_usage(tmp_path).free
    assert abs(int(line.split("free in")[0].split("(")[-1].split()[0]) - free) < 1 << 30
    code, err = run("sample", tiny["kdm"], "--n", "1e15", "--out", tmp_path / "s.npy")
    one_line(code, err, "8000000000000128 bytes")
    assert calls.rows == [] and files(tmp_path) == []
    # and memory: one chunk must fit
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 20)
    one_line(*run("sample", tiny["kdm"], "--n", 10**6, "--out", tmp_path / "s.npy"),
             "of memory", "1.0 MB (1048576 bytes) available")
    assert calls.rows == [] and files(tmp_path) == []


def test_counts_typed_as_floats(tiny, tmp_path):
    assert kdm("sample", tiny["kdm"], "--n", "1e3", "--out", tmp_path / "a.npy") == 0
    assert kdm("sample", tiny["kdm"], "--n", "1_000", "--out", tmp_path / "b.npy") == 0
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert np.load(tmp_path / "a.npy").shape == (1000, 2)
    for bad in ("2.5", "nan", "1e400", "inf", "ten"):
        one_line(*run("sample", tiny["kdm"], "--n", bad, "--out", tmp_path / "c.npy"),
                 f"invalid int value: {bad!r}")
    assert not (tmp_path / "c.npy").exists()


# -- honest outputs -----------------------------------------------------------------------------
def nan_weights(tiny: dict[str, Path], root: Path) -> Path:
    out = root / "nan-run"
    shutil.copytree(tiny["kdm"], out)
    f = latest_checkpoint(out) / "ema.safetensors"
    save_file({k: torch.full_like(v, torch.nan) for k, v in load_file(f).items()}, str(f))
    return out


def test_nan_samples_are_an_error_naming_how_many(tiny, tmp_path, monkeypatch):
    bad = nan_weights(tiny, tmp_path)
    one_line(*run("sample", bad, "--n", 7, "--out", tmp_path / "s.npy"),
             "7 of 7 samples are NaN/inf (first at row 0)", "nothing was written")
    assert not (tmp_path / "s.npy").exists()
    np.save(tmp_path / "noise.npy", np.zeros((3, 2), np.float32))
    one_line(*run("sample", bad, "--noise", tmp_path / "noise.npy", "--out", tmp_path / "m.npy"),
             "3 of 3 samples are NaN/inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan-run", "noise.npy"]
    # streamed: a chunk of nothing but NaN ends the job, rather than drawing the rest
    monkeypatch.setattr(resources, "available_memory", lambda: 3 << 20)
    calls = Calls(monkeypatch)
    one_line(*run("sample", bad, "--n", 65536 * 3, "--out", tmp_path / "s.npy"),
             "65536 of the first 65536 (sampling stopped there) samples are NaN/inf")
    assert calls.rows == [65536]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan-run", "noise.npy"]


def test_existing_outputs_are_replaced_only_with_force(tiny, tmp_path):
    out = tmp_path / "s.npy"
    assert kdm("sample", tiny["kdm"], "--n", 5, "--out", out) == 0
    before = out.read_bytes()
    one_line(*run("sample", tiny["kdm"], "--n", 5, "--seed", 1, "--out", out),
             "already exists; add --force")
    assert out.read_bytes() == before
    assert kdm("sample", tiny["kdm"], "--n", 5, "--seed", 1, "--out", out, "--force") == 0
    assert out.read_bytes() == saved(load_run(tiny["kdm"]).sample(5, seed=1)) != before
    # kdm eval: an earlier evaluation in --out (or the default RUN/eval) is kept
    ev = ["eval", tiny["kdm"], "--out", tmp_path / "e", "--no-plots", "--set", "eval.n=200",
          "--set", "eval.projections=8", "--set", "eval.energy_n=100"]
    assert kdm(*ev) == 0
    first = (tmp_path / "e" / "eval.json").read_bytes()
    one_line(*run(*ev[:-2], "--set", "eval.energy_n=50"), "already holds an evaluation "
             "(eval.json); add --force")
    assert (tmp_path / "e" / "eval.json").read_bytes() == first
    assert kdm(*ev[:-2], "--set", "eval.energy_n=50", "--force") == 0
    assert b'"energy_n": 50' in (tmp_path / "e" / "eval.json").read_bytes()


def test_outputs_that_are_inputs_are_refused_through_any_path(tiny, tmp_path):
    np.save(tmp_path / "noise.npy", np.zeros((3, 2), np.float32))
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.npy").symlink_to(tmp_path / "noise.npy")
    before = (tmp_path / "noise.npy").read_bytes()
    for out in (tmp_path / "sub" / ".." / "noise.npy", tmp_path / "link.npy"):
        one_line(*run("sample", tiny["kdm"], "--noise", tmp_path / "noise.npy", "--out", out,
                      "--force"), "is the --noise file")
    one_line(*run("sample", tiny["kdm"], "--n", 3, "--labels", tmp_path / "noise.npy",
                  "--out", tmp_path / "link.npy", "--force"), "is the --labels file")
    assert (tmp_path / "noise.npy").read_bytes() == before


def test_unwritable_outputs_are_found_before_any_work(tiny, tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    (tmp_path / "file").write_text("mine")
    for out, needle in [("/sys/kdm-sample.npy", "cannot write in /sys"),
                        (tmp_path / "file" / "x" / "s.npy", "is a file, not a directory")]:
        one_line(*run("sample", tiny["kdm"], "--n", 5, "--out", out), needle)
    assert calls.rows == []  # refused before sampling
    for out, needle in [("/sys/kdm-eval", "cannot write in /sys"),
                        (tmp_path / "file", "is a file; kdm eval writes eval.json")]:
        one_line(*run("eval", tiny["kdm"], "--out", out, "--set", "eval.n=100"), needle)
    assert calls.rows == [] and files(tmp_path) == ["file"]


def test_eval_beyond_memory_fails_within_2_seconds(tiny, tmp_path):
    t = time.perf_counter()
    one_line(*run("eval", tiny["kdm"], "--out", tmp_path / "e", "--set", "eval.n=10000000000000"),
             "eval.n=10000000000000 needs", "bytes) of memory", "lower it with --set eval.n=N")
    assert time.perf_counter() - t < 2 and files(tmp_path) == []


# -- user array files ---------------------------------------------------------------------------
def test_array_files_that_are_not_plain_arrays_fail_in_one_line(tmp_path, monkeypatch):
    np.savez(tmp_path / "obj.npz", images=np.array([np.zeros((8, 8)), None], dtype=object))
    np.savez(tmp_path / "objlabels.npz", images=np.zeros((2, 8, 8), np.uint8),
             labels=np.array([1, None], dtype=object))
    with zipfile.ZipFile(tmp_path / "member.npz", "w") as z:
        z.writestr("images.npy", b"not an array")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "objlabels.npz").read_bytes()[:200])
    for name, needle in [("obj.npz", "cannot read 'images'"),
                         ("objlabels.npz", "cannot read 'labels'"),
                         ("member.npz", "'images' of"), ("cut.npz", "cannot read")]:
        with pytest.raises(KDMError, match=needle) as e:
            load_images(str(tmp_path / name), 8)
        assert "\n" not in str(e.value)
    with pytest.raises(KDMError, match="cannot read") as e:
        load_array(tmp_path / "cut.npz", (2,), "noise")
    np.save(tmp_path / "x.npy", np.zeros((1000, 2), np.float32))
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    with pytest.raises(KDMError, match="of memory") as e:
        load_array(tmp_path / "x.npy", (2,), "noise")
    assert "needs 10.0 kB (10000 bytes) of memory, 1.0 kB (1000 bytes) available" in str(e.value)


def test_eval_of_a_run_with_a_damaged_log_still_plots_its_loss(tiny, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny["kdm"], run_dir)
    log = run_dir / "log.jsonl"
    good = log.read_text().splitlines()
    log.write_text("\n".join([*good, "[1, 2]", '{"loss": 1.0}', "\xff" * 3, "[" * 100000,
                              good[-1][:17]]) + "\n")  # the last: cut short by a kill
    assert kdm("eval", run_dir, "--set", "eval.n=200", "--set", "eval.projections=8",
               "--set", "eval.energy_n=100") == 0
    assert (run_dir / "eval" / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("damage", ["meta-list", "meta-garbage", "weights-cut"])
def test_a_damaged_classifier_cache_entry_is_trained_again(tmp_path, damage):
    from koopman_distill.metrics.extractors import load_or_train_classifier

    x = np.random.default_rng(0).uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % 2
    opts = dict(steps=2, batch_size=8, seed=0, progress=False)
    first = load_or_train_classifier(tmp_path, x, y, 2, **opts)
    (meta,) = tmp_path.glob("classifier-*.json")
    weights = meta.with_suffix(".safetensors")
    if damage == "meta-list":
        meta.write_text("[1, 2]")
    elif damage == "meta-garbage":
        meta.write_bytes(b"\xff{")
    else:
        weights.write_bytes(weights.read_bytes()[:50])
    again = load_or_train_classifier(tmp_path, x, y, 2, **opts)
    np.testing.assert_array_equal(again.predict(x), first.predict(x))  # seeded: the same
    assert again.settings["weights_sha256"] == first.settings["weights_sha256"]
