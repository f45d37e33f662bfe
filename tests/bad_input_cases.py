"""The bad-input case table, shared by ``test_bad_inputs.py`` and ``docs/reliability.md``.

Each :class:`Case` makes one bad input in a fresh directory and returns the ``kdm`` arguments
that must refuse it: exit code 2, one ``kdm: error: ...`` line holding ``expect``, no
traceback, and no file created, changed or removed anywhere in the workspace.

``python tests/bad_input_cases.py`` builds the tiny pipeline in a temporary directory, runs
every case and rewrites the generated section of ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from koopman_distill.cli import main
from koopman_distill.io import sha256_file

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


TEACHERS_PY = """
from koopman_distill.teachers import declare


@declare(shape=(3,), sigma_max=80.0)
def denoiser(x, sigma, labels=None):
    return x / (1 + sigma.reshape(-1, 1) ** 2)


def undeclared(noise):
    return noise
"""


class Workspace:
    """A case's directory ``dir`` next to the tiny pipeline ``tiny`` (teacher, pairs, kdm)."""

    def __init__(self, dir: Path, tiny: dict[str, Path]) -> None:
        self.dir, self.tiny = dir, tiny
        dir.mkdir(parents=True, exist_ok=True)

    @property
    def teacher(self) -> Path:
        return self.tiny["teacher"]

    @property
    def pairs(self) -> Path:
        return self.tiny["pairs"]

    @property
    def run(self) -> Path:
        return self.tiny["kdm"]

    def p(self, name: str) -> Path:
        return self.dir / name

    def npy(self, name: str, arr: object, **kw: object) -> Path:
        np.save(self.p(name), arr, **kw)
        return self.p(name)

    def make(self, teacher: str, *extra: str) -> list:
        """``kdm pairs make --teacher TEACHER --out DIR/o [extra]``."""
        return ["pairs", "make", "--teacher", teacher, "--out", self.p("o"), *extra]

    def teachers(self) -> Path:
        """A Python file of the user's teachers (see :data:`TEACHERS_PY`)."""
        self.p("teachers.py").write_text(TEACHERS_PY)
        return self.p("teachers.py")

    def raw(self, name: str, data: bytes) -> Path:
        self.p(name).write_bytes(data)
        return self.p(name)

    def store(self, edit: Callable[[dict], object] | None = None) -> Path:
        """A copy of the tiny pair store, its manifest changed by ``edit`` (in place)."""
        out = self.p("store")
        shutil.copytree(self.pairs, out)
        if edit:
            m = json.loads((out / "manifest.json").read_text())
            edit(m)
            (out / "manifest.json").write_text(json.dumps(m))
        return out

    def store_shard(self, name: str, data: bytes | None, reseal: bool = False) -> Path:
        """A store copy with shard file ``name`` replaced by ``data`` (None: deleted);
        ``reseal`` updates its sha256 so that only deeper checks can catch it."""
        out = self.store()
        f = out / name
        if data is None:
            f.unlink()
        else:
            f.write_bytes(data)
        if reseal:
            m = json.loads((out / "manifest.json").read_text())
            kind, index = name.split("-")[0], int(name.split("-")[1][:5])
            m["shards"][index]["sha256"][kind] = sha256_file(f)
            (out / "manifest.json").write_text(json.dumps(m))
        return out

    def run_copy(self, edit: Callable[[Path], object] | None = None) -> Path:
        """A copy of the tiny KDM run, changed by ``edit(run_dir)``."""
        out = self.p("run")
        shutil.copytree(self.run, out)
        if edit:
            edit(out)
        return out


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def key_paths(obj, prefix=()):
    """Every key path into nested dicts and lists (anything else is a leaf)."""
    yield prefix
    items = (obj.items() if isinstance(obj, dict) else enumerate(obj)
             if isinstance(obj, list) else ())
    for k, v in items:
        yield from key_paths(v, (*prefix, k))


def mutate(doc, path, op, value):
    """``doc`` changed in place at ``path``: the value ``replace``d by ``value``, ``delete``d,
    or (``add``) given an unknown key; a replaced root is returned instead."""
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if op == "replace":
        parent[path[-1]] = value
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        parent[path[-1]]["unknown key"] = value
    return doc


class Pwned:
    """Unpickling this calls ``os.system``: what a malicious state.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def edit_state(run: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite the latest checkpoint's state.pt with ``edit`` applied to its dict."""
    f = latest(run) / "state.pt"
    state = torch.load(f, weights_only=True)
    edit(state)
    torch.save(state, f)


def poisoned_state(run: Path) -> None:
    with open(latest(run) / "state.pt", "wb") as f:
        pickle.dump({"step": Pwned(run / "PWNED")}, f)


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Workspace], list]  # makes the bad input, returns the kdm arguments
    expect: str  # a fragment of the one-line error


def _set(*overrides: str) -> Callable[[Workspace], list]:
    return lambda w: ["config", "--preset", "checkerboard-tiny",
                      *[a for o in overrides for a in ("--set", o)]]


def _train(store: Callable[[Workspace], Path]) -> Callable[[Workspace], list]:
    return lambda w: ["train", "--preset", "checkerboard-tiny", "--pairs", store(w),
                      "--out", w.p("out")]


def _sample(run: Callable[[Workspace], Path], *extra: str) -> Callable[[Workspace], list]:
    return lambda w: ["sample", run(w), "--n", "5", "--out", w.p("out.npy"), *extra]


def _scored(folder: Callable[[Workspace], object], out: bool = False
            ) -> Callable[[Workspace], list]:
    """``kdm eval --samples-dir FOLDER`` against digits8's real images (``--out`` in the
    workspace when ``out``)."""
    return lambda w: ["eval", "--samples-dir", folder(w), "--preset", "digits8",
                      *(["--out", w.p("e")] if out else [])]


def _noise(make: Callable[[Workspace], Path]) -> Callable[[Workspace], list]:
    return lambda w: ["sample", w.run, "--noise", make(w), "--out", w.p("out.npy")]


def _resume(edit: Callable[[Path], object]) -> Callable[[Workspace], list]:
    return lambda w: ["train", "--resume", w.run_copy(edit)]


def _nan_rows() -> np.ndarray:
    a = np.zeros((10, 2), np.float32)
    a[[2, 7], 1] = np.nan
    a[4, 0] = np.inf
    return a


def _flip(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    return bytes(raw)


def _clean1(w: Workspace) -> Path:
    return w.pairs / "clean-00001.npy"


def _nan_shard(w: Workspace) -> bytes:
    x = np.load(_clean1(w))
    x[3, 0] = np.nan
    return npy_bytes(x)


def _nan_weights(run: Path) -> None:
    f = latest(run) / "ema.safetensors"
    save_file({k: torch.full_like(v, torch.nan) for k, v in load_file(f).items()}, str(f))


def _link(w: Workspace, name: str) -> Path:
    """A symbolic link ``link-NAME`` to the workspace file ``name``."""
    w.p(f"link-{name}").symlink_to(w.p(name))
    return w.p(f"link-{name}")


def _small_store(w: Workspace, shape: tuple[int, ...] = (2,), classes: int = 0) -> Path:
    """A hand-built store of 6 pairs of ``shape`` (labels 0..classes-1 when ``classes``)."""
    from koopman_distill.pairs import write_arrays

    x = np.arange(6 * int(np.prod(shape)), dtype=np.float32).reshape(6, *shape)
    label = np.arange(6) % classes if classes else None
    write_arrays(w.p("small"), x, x, label, shard_size=4, sigma_max=1.0,
                 teacher={"kind": "external", "num_classes": classes}, sampler={},
                 nfe=None, source={"kind": "test"})
    return w.p("small")


def _filter(store: Callable[[Workspace], Path], *extra: str) -> Callable[[Workspace], list]:
    return lambda w: ["pairs", "filter", store(w), "--out", w.p("f"), *extra]


def _pngs(w: Workspace, name: str, *shapes: tuple[int, ...]) -> Path:
    """A folder ``name`` of 8-bit PNGs, one of each shape: (H, W) grey or (H, W, 3) RGB."""
    from PIL import Image

    folder = _mkdir(w.p(name))
    for i, shape in enumerate(shapes):
        Image.fromarray(np.full(shape, 100, np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _savez(w: Workspace, name: str, **arrays: np.ndarray) -> Path:
    np.savez(w.p(name), allow_pickle=True, **arrays)
    return w.p(name)


def _zip(w: Workspace, name: str, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(w.p(name), "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    return w.p(name)


CASES: list[Case] = [
    # command line
    Case("no command", lambda w: [], "the following arguments are required"),
    Case("unknown command", lambda w: ["frobnicate"], "invalid choice: 'frobnicate'"),
    Case("unknown option", lambda w: ["train", "--pairs", w.pairs, "--out", w.p("o"),
                                      "--bogus"], "unrecognized arguments: --bogus"),
    Case("non-integer --n", lambda w: ["pairs", "--teacher", w.teacher, "--out", w.p("o"),
                                       "--n", "many"], "invalid int value: 'many'"),
    Case("pairs make without --teacher", lambda w: ["pairs", "make", "--out", w.p("o")],
         "the following arguments are required: --teacher"),
    Case("pairs without a subcommand or --teacher", lambda w: ["pairs", "--out", w.p("o")],
         "give --teacher RUN and --out STORE to make a pair store"),
    Case("train without --pairs", lambda w: ["train", "--out", w.p("o")],
         "give --pairs STORE and --out RUN_DIR"),
    Case("teacher train without --out", lambda w: ["teacher", "train"],
         "give --out RUN_DIR for a new teacher run"),
    Case("zero pairs", lambda w: ["pairs", "--teacher", w.teacher, "--out", w.p("o"),
                                  "--n", "0"], "n must be a positive integer, got 0"),
    # configuration
    Case("unknown preset", lambda w: ["config", "--preset", "nope"], "unknown preset 'nope'"),
    Case("override without '='", _set("train.steps"), "must look like section.field=value"),
    Case("override of an unknown section", _set("trian.steps=5"),
         "trian is not a config section"),
    Case("override of an unknown field", _set("train.stepz=5"),
         "unknown config key 'train.stepz'"),
    Case("override without a section", _set("steps=5"), "sections are: data, teacher"),
    Case("text for an integer", _set("train.steps=ten"), "train.steps takes a number (int)"),
    Case("integer overflow", _set("train.steps=1e400"), "train.steps takes a number (int)"),
    Case("text for a boolean", _set("train.progress=maybe"), "takes true or false"),
    Case("text in an integer list", _set("model.unet.channel_mult=1,x"),
         "takes comma-separated integers"),
    Case("zero steps", _set("train.steps=0"), "train.steps must be > 0, got 0"),
    Case("negative batch size", _set("train.batch_size=-4"), "train.batch_size must be > 0"),
    Case("NaN learning rate", _set("train.lr=nan"), "train.lr must be a finite number"),
    Case("infinite noise scale", _set("teacher.sigma_max=inf"),
         "teacher.sigma_max must be a finite number"),
    Case("EMA decay above 1", _set("train.ema_decay=1.5"), "train.ema_decay must be in [0, 1]"),
    Case("Adam beta of 1", _set("train.beta1=1"), "train.beta1 must be in [0, 1)"),
    Case("zero log interval", _set("train.log_every=0"), "train.log_every must be > 0"),
    Case("zero UNet multiplier", _set("model.unet.channel_mult=1,0"),
         "model.unet.channel_mult must be > 0"),
    Case("unknown Koopman kind", _set("model.koopman=fancy"),
         "model.koopman must be one of dense, eigen"),
    Case("unknown sampler", _set("teacher.sampler=rk5"), "teacher.sampler must be one of"),
    Case("unknown LR schedule", _set("train.lr_schedule=step"),
         "train.lr_schedule must be one of constant, cosine"),
    Case("unknown device", lambda w: ["train", "--preset", "checkerboard-tiny", "--pairs",
                                      w.pairs, "--out", w.p("o"), "--set", "train.device=tpu"],
         "unknown device 'tpu'"),
    Case("batch larger than the store", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs, "--out", w.p("o"),
        "--set", "train.batch_size=100000"], "batch size 100000 is larger than the 512"),
    # pair stores
    Case("store directory missing", _train(lambda w: w.p("nostore")), "pair store not found"),
    Case("store without manifest", _train(lambda w: w.p("x").mkdir() or w.p("x")),
         "is not a pair store (no manifest.json)"),
    Case("empty manifest", _train(lambda w: w.store_shard("manifest.json", b"")),
         "is not valid JSON"),
    Case("truncated manifest", _train(lambda w: w.store_shard(
        "manifest.json", (w.pairs / "manifest.json").read_bytes()[:200])), "is not valid JSON"),
    Case("garbage manifest", _train(lambda w: w.store_shard("manifest.json", b"\xff\xfe\x00k")),
         "is not valid JSON"),
    Case("manifest is a list", _train(lambda w: w.store_shard("manifest.json", b"[1, 2]")),
         "is not a pair store manifest"),
    Case("manifest of another format", _train(lambda w: w.store(
        lambda m: m.update(format="other"))), "format is not 'kdm-pairs'"),
    Case("manifest from a newer version", _train(lambda w: w.store(
        lambda m: m.update(version=99))), "format version 99 > 1); upgrade the package"),
    Case("manifest without a key", _train(lambda w: w.store(lambda m: m.pop("sigma_max"))),
         "is missing keys ['sigma_max']"),
    Case("reversed pair order", _train(lambda w: w.store(
        lambda m: m.update(order=["clean", "noise"]))), "pair order ['clean', 'noise']"),
    Case("incomplete store", _train(lambda w: w.store(lambda m: m.update(complete=False))),
         "is incomplete (3 of 3 shards)"),
    Case("zero count", _train(lambda w: w.store(lambda m: m.update(count=0))),
         "count 0 and shard_size 200 must be positive integers"),
    Case("empty shape", _train(lambda w: w.store(lambda m: m.update(shape=[]))),
         "is inconsistent (shape [])"),
    Case("unknown dtype", _train(lambda w: w.store(
        lambda m: m["dtypes"].update(clean="float99"))), "is inconsistent (dtypes"),
    Case("float labels", _train(lambda w: w.store(
        lambda m: m["dtypes"].update(label="float32"))), "is inconsistent (dtypes"),
    Case("complete store without shards", _train(lambda w: w.store(
        lambda m: m.update(shards=[]))), "the 0 listed shards are not shards 0..2 in order"),
    Case("shard listed twice", _train(lambda w: w.store(
        lambda m: m["shards"].insert(1, m["shards"][0]))), "listed shards are not shards"),
    Case("wrong shard count", _train(lambda w: w.store(
        lambda m: m["shards"][0].update(count=5))), "shard 0 count 5"),
    Case("missing shard file", _train(lambda w: w.store_shard("clean-00001.npy", None)),
         "clean-00001.npy: missing"),
    Case("bit flip in a shard", _train(lambda w: w.store_shard(
        "clean-00001.npy", _flip(_clean1(w)))), "clean-00001.npy: sha256"),
    Case("truncated shard", _train(lambda w: w.store_shard(
        "noise-00002.npy", (w.pairs / "noise-00002.npy").read_bytes()[:-8])),
        "noise-00002.npy: sha256"),
    Case("verify a damaged store", lambda w: ["pairs", "verify", w.store_shard(
        "clean-00001.npy", _flip(_clean1(w)))], "is damaged, 1 problem(s): clean-00001.npy"),
    Case("NaN in a shard (checksum updated)", _train(lambda w: w.store_shard(
        "clean-00001.npy", _nan_shard(w), reseal=True)), "1 non-finite values (NaN/inf)"),
    Case("shard of the wrong shape (checksum updated)", _train(lambda w: w.store_shard(
        "clean-00002.npy", npy_bytes(np.zeros((4, 2), np.float32)), reseal=True)),
        "holds float32 (4, 2) but the manifest says float32 (112, 2)"),
    Case("garbage shard (checksum updated)", _train(lambda w: w.store_shard(
        "noise-00000.npy", b"\x93NUMPY garbage", reseal=True)), "is unreadable or truncated"),
    Case("pickled shard (checksum updated)", _train(lambda w: w.store_shard(
        "noise-00000.npy", npy_bytes(np.array([{"a": 1}] * 200, dtype=object)), reseal=True)),
        "is unreadable or truncated"),
    Case("pairs into a store with other settings", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.store(), "--seed", "99"],
        "already holds a pair store with other settings (seed 1 vs 99)"),
    Case("pairs into a foreign directory", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.raw("notes.txt", b"mine").parent],
        "is not a pair store (it holds"),
    Case("pairs from a KDM run", lambda w: ["pairs", "--teacher", w.run, "--out", w.p("o")],
         "is a 'kdm' run, not a teacher"),
    # runs and checkpoints
    Case("run directory missing", _sample(lambda w: w.p("norun")), "run directory not found"),
    Case("run without run.json", _sample(lambda w: w.run_copy(
        lambda r: (r / "run.json").unlink())), "run metadata not found"),
    Case("garbage run.json", _sample(lambda w: w.run_copy(
        lambda r: (r / "run.json").write_bytes(b"{\x00"))), "is not valid JSON"),
    Case("run from a newer version", _sample(lambda w: w.run_copy(
        lambda r: edit_json(r / "run.json", lambda d: d.update(format=9)))),
        "newer koopman-distill (run format 9 > 3)"),
    Case("unknown run kind", _resume(lambda r: edit_json(
        r / "run.json", lambda d: d.update(kind="other"))), "unknown run kind 'other'"),
    Case("unknown key in config.json", _sample(lambda w: w.run_copy(
        lambda r: edit_json(r / "config.json", lambda d: d["train"].update(bogus=1)))),
        "unknown key(s) in config.train: 'bogus'"),
    Case("wrong type in config.json", _sample(lambda w: w.run_copy(
        lambda r: edit_json(r / "config.json", lambda d: d["train"].update(steps="ten")))),
        "config.train.steps must be int, got 'ten'"),
    Case("out-of-range value in config.json", _sample(lambda w: w.run_copy(
        lambda r: edit_json(r / "config.json", lambda d: d["train"].update(lr=-1.0)))),
        "train.lr must be > 0"),
    Case("config changed since the checkpoint", _sample(lambda w: w.run_copy(
        lambda r: edit_json(r / "config.json", lambda d: d["model"].update(width=48)))),
        "differs from the checkpoint's in model.width (32 -> 48)"),
    Case("no complete checkpoint", _sample(lambda w: w.run_copy(lambda r: [
        (p / "state.pt").unlink() for p in (r / "checkpoints").glob("step-*")])),
        "holds no complete checkpoint (step-00000020 lacks state.pt)"),
    Case("no checkpoint yet", _sample(lambda w: w.run_copy(
        lambda r: shutil.rmtree(r / "checkpoints"))), "has no checkpoint yet"),
    Case("truncated weights", _sample(lambda w: w.run_copy(
        lambda r: (latest(r) / "ema.safetensors").write_bytes(
            (latest(r) / "ema.safetensors").read_bytes()[:100]))), "cannot read weights"),
    Case("garbage weights", _sample(lambda w: w.run_copy(
        lambda r: (latest(r) / "ema.safetensors").write_bytes(b"\x00" * 64))),
        "cannot read weights"),
    Case("weights of another model", _sample(lambda w: w.run_copy(
        lambda r: save_file({"w": torch.zeros(1)}, str(latest(r) / "ema.safetensors")))),
        "does not match the model (missing: "),
    Case("garbage trainer state", _resume(
        lambda r: (latest(r) / "state.pt").write_bytes(b"garbage")), "is not a plain tensor file"),
    Case("malicious pickle in trainer state", _resume(poisoned_state),
         "unpickle arbitrary objects, which is refused"),
    Case("train into an existing run", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs, "--out", w.run],
        "already holds a run; use --resume"),
    Case("train into a non-empty directory", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs,
        "--out", w.raw("notes.txt", b"mine").parent], "exists and is not empty"),
    Case("sample from a teacher run", _sample(lambda w: w.teacher), "is a 'teacher' run, not"),
    # data arrays
    Case("noise of the wrong width", _noise(lambda w: w.npy(
        "n.npy", np.zeros((10, 3), np.float32))), "must have shape (N, 2), got (10, 3)"),
    Case("1-D noise", _noise(lambda w: w.npy("n.npy", np.zeros(10, np.float32))),
         "must have shape (N, 2), got (10,)"),
    Case("0-D noise", _noise(lambda w: w.npy("n.npy", np.float32(1))),
         "must have shape (N, 2), got ()"),
    Case("noise with NaN and inf", _noise(lambda w: w.npy("n.npy", _nan_rows())),
         "has 3 rows with NaN/inf (rows 2, 4, 7)"),
    Case("noise of strings", _noise(lambda w: w.npy("n.npy", np.array([["a", "b"]]))),
         "must hold numbers, got dtype <U1"),
    Case("complex noise", _noise(lambda w: w.npy("n.npy", np.zeros((3, 2), np.complex64))),
         "must hold numbers, got dtype complex64"),
    Case("empty noise", _noise(lambda w: w.npy("n.npy", np.zeros((0, 2), np.float32))),
         "is empty"),
    Case("pickled object noise", _noise(lambda w: w.npy(
        "n.npy", np.array([[{}, {}]], dtype=object), allow_pickle=True)),
        "is not a plain .npy array"),
    Case("noise in an .npz archive", _noise(lambda w: (
        np.savez(w.p("n.npz"), x=np.zeros((3, 2))) or w.p("n.npz"))), "is an .npz archive"),
    Case("truncated noise file", _noise(lambda w: w.raw(
        "n.npy", npy_bytes(np.zeros((10, 2), np.float32))[:90])),
        "is not a plain .npy array (EOF"),
    Case("garbage noise file", _noise(lambda w: w.raw("n.npy", b"hello world")),
         "is not a plain .npy array"),
    Case("noise file missing", _noise(lambda w: w.p("none.npy")), "noise file not found"),
    Case("labels for an unconditional model", _sample(lambda w: w.run, "--class", "3"),
         "this model is unconditional"),
    Case("float labels file", lambda w: [*_sample(lambda w: w.run)(w), "--labels", w.npy(
        "l.npy", np.ones(5, np.float32))], "must hold non-negative integer class ids"),
    Case("negative labels", lambda w: [*_sample(lambda w: w.run)(w), "--labels", w.npy(
        "l.npy", -np.ones(5, np.int64))], "must hold non-negative integer class ids"),
    Case("zero samples", lambda w: ["sample", w.run, "--n", "0", "--out", w.p("o.npy")],
         "give --n N (>= 1)"),
    Case("output not .npy", lambda w: ["sample", w.run, "--n", "3", "--out", w.p("o.txt")],
         "must end in .npy"),
    Case("teacher data of one dimension", lambda w: [
        "teacher", "train", "--preset", "checkerboard-tiny", "--out", w.p("t"),
        "--data", w.npy("d.npy", np.zeros(10, np.float32))], "must have shape (N, D), got (10,)"),
    Case("teacher data of width 0", lambda w: [
        "teacher", "train", "--preset", "checkerboard-tiny", "--out", w.p("t"),
        "--data", w.npy("d.npy", np.zeros((10, 0), np.float32))],
        "must have shape (N, D), got (10, 0)"),
    Case("teacher data that are not vectors", lambda w: [
        "teacher", "train", "--preset", "checkerboard-tiny", "--out", w.p("t"),
        "--data", w.npy("d.npy", np.zeros((10, 3, 2), np.float32))],
        "must have shape (N, D), got (10, 3, 2)"),
    Case("teacher data with NaN", lambda w: [
        "teacher", "train", "--preset", "checkerboard-tiny", "--out", w.p("t"),
        "--data", w.npy("d.npy", _nan_rows())], "3 rows with NaN/inf"),
    Case("samples to evaluate with NaN", lambda w: [
        "eval", "--samples", w.npy("s.npy", _nan_rows())], "3 rows with NaN/inf"),
    Case("trajectory with NaN", lambda w: [
        "pairs", "import", w.npy("t.npy", np.stack([_nan_rows()] * 3)), "--out", w.p("o")],
        "NaN"),
    Case("trajectory of the wrong rank", lambda w: [
        "pairs", "import", w.npy("t.npy", np.zeros((10, 2), np.float32)), "--out", w.p("o")],
        "expected ndim 3"),
    # resume and runs, round 2
    Case("checkpoints path is a file", _resume(lambda r: shutil.rmtree(r / "checkpoints")
                                               or (r / "checkpoints").write_text("x")),
         "checkpoints is not a directory"),
    Case("incomplete checkpoints only, on resume", _resume(lambda r: [
        (p / "ema.safetensors").unlink() for p in (r / "checkpoints").glob("step-*")]),
        "holds no complete checkpoint (step-00000020 lacks ema.safetensors)"),
    Case("trainer state without keys", _resume(lambda r: edit_state(
        r, lambda st: [st.pop("optimizer"), st.pop("data")])), "lacks data, optimizer"),
    Case("trainer state with a negative step", _resume(lambda r: edit_state(
        r, lambda st: st.update(step=-5))), "has a negative step (-5)"),
    Case("trainer state of another step", _resume(lambda r: edit_state(
        r, lambda st: st.update(step=7))), "is at step 7 but lies in step-00000020"),
    Case("trainer state of a wrong type", _resume(lambda r: edit_state(
        r, lambda st: st.update(ema_updates="soon"))), "has ema_updates of type str"),
    Case("trainer state with a bad data position", _resume(lambda r: edit_state(
        r, lambda st: st.update(data={"epoch": -1, "offset": 0}))), "has data position"),
    Case("trainer state that is a list", _resume(lambda r: torch.save(
        [1, 2], latest(r) / "state.pt")), "holds a list, not the trainer's state"),
    Case("optimizer state without its state dict", _resume(lambda r: edit_state(
        r, lambda st: st["optimizer"].update(state=None))),
        "has optimizer without its state dict and list of parameter groups"),
    Case("optimizer state of another model", _resume(lambda r: edit_state(
        r, lambda st: st["optimizer"].update(param_groups=[]))),
        "does not fit this run's optimizer or random state"),
    Case("resume a teacher run with kdm train", lambda w: ["train", "--resume", w.teacher],
         "is a teacher run; continue it with `kdm teacher train --resume"),
    Case("resume a KDM run with kdm teacher train", lambda w: [
        "teacher", "train", "--resume", w.run], "is a KDM run; continue it with `kdm train"),
    Case("--preset with --resume", lambda w: ["train", "--resume", w.run, "--preset",
                                              "checkerboard"], "--preset cannot be used with"),
    Case("--pairs and --out with --resume", lambda w: [
        "train", "--resume", w.run, "--pairs", w.pairs, "--out", w.p("o")],
        "--out and --pairs cannot be used with --resume"),
    Case("--data with a teacher --resume", lambda w: [
        "teacher", "train", "--resume", w.teacher, "--data", w.npy("d.npy", np.zeros((9, 2)))],
        "--data cannot be used with --resume"),
    Case("resume with a setting that changes the result", lambda w: [
        "train", "--resume", w.run, "--set", "train.lr=0.1"],
        "--set train.lr would change what the resumed run"),
    Case("resume with fewer steps than done", lambda w: [
        "train", "--resume", w.run, "--set", "train.steps=5"],
        "is at step 20, beyond train.steps=5"),
    Case("resume with another section's setting", lambda w: [
        "train", "--resume", w.run, "--set", "teacher_train.steps=50"],
        "--set teacher_train.steps would change what the resumed run"),
    Case("setting of a section train does not read", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs, "--out", w.p("o"),
        "--set", "pairs.n=100"], "--set pairs.n has no effect on `kdm train`"),
    Case("eigen-only setting with a dense K", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs, "--out", w.p("o"),
        "--set", "model.w_spectrum=0.5"], "has no effect without model.koopman=eigen"),
    Case("KDM-only setting for a baseline", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs, "--out", w.p("o"),
        "--set", "model.method=kd", "--set", "model.sigma_z=0.1"],
        "--set model.sigma_z has no effect without model.method=kdm"),
    Case("run.json that is a list", _sample(lambda w: w.run_copy(
        lambda r: (r / "run.json").write_text("[1]"))), "holds a JSON list, not an object"),
    Case("run.json with a wrong-typed field", _sample(lambda w: w.run_copy(lambda r: edit_json(
        r / "run.json", lambda d: d.update(sigma_max="80")))), "has sigma_max '80'"),
    Case("run.json without a field", _resume(lambda r: edit_json(
        r / "run.json", lambda d: d.pop("pairs"))), "run.json lacks pairs"),
    Case("run.json with a huge dimension", _sample(lambda w: w.run_copy(lambda r: edit_json(
        r / "run.json", lambda d: d.update(shape=[10**12])))), "has shape [1000000000000]"),
    Case("run.json with a boolean format", _sample(lambda w: w.run_copy(lambda r: edit_json(
        r / "run.json", lambda d: d.update(format=True)))), "has format True"),
    Case("deeply nested run.json", _sample(lambda w: w.run_copy(lambda r: (
        r / "run.json").write_text("[" * 100_000 + "]" * 100_000))),
        "is not a file koopman-distill wrote (RecursionError"),
    Case("damaged log row before the last", _resume(lambda r: (r / "log.jsonl").write_text(
        "garbage\n" + (r / "log.jsonl").read_text())), "log.jsonl line 1 is not a log row"),
    Case("run directory name not valid UTF-8", lambda w: [
        "train", "--preset", "checkerboard-tiny", "--pairs", w.pairs, "--out",
        str(w.dir) + "/run-\udcff"], "is not valid UTF-8"),
    Case("teacher subcommand missing", lambda w: ["teacher"],
         "the following arguments are required: {train}"),
    # ---- end of resume and runs, round 2

    # pair stores, round 2
    Case("deeply nested manifest", _train(lambda w: w.store_shard(
        "manifest.json", b"[" * 100_000 + b"]" * 100_000)),
        "is not a file koopman-distill wrote (RecursionError: maximum recursion depth"),
    Case("manifest number of 5000 digits", _train(lambda w: w.store_shard(
        "manifest.json", b'{"format": "kdm-pairs", "count": ' + b"7" * 5000 + b"}")),
        "is not a file koopman-distill wrote (ValueError: Exceeds the limit (4300 digits)"),
    Case("huge-shaped manifest", _train(lambda w: w.store(
        lambda m: m.update(shape=[10**12, 10**12]))), "are more values than any store holds"),
    Case("boolean sigma_max", _train(lambda w: w.store(lambda m: m.update(sigma_max=True))),
         "is inconsistent (sigma_max True)"),
    Case("text seed in a manifest", _train(lambda w: w.store(lambda m: m.update(seed="1"))),
         "seed '1' is not an integer or null"),
    Case("sampler not an object", _train(lambda w: w.store(lambda m: m.update(sampler=[4]))),
         "sampler [4] is not an object"),
    Case("text for complete", _train(lambda w: w.store(lambda m: m.update(complete="yes"))),
         "complete 'yes' is not true or false"),
    Case("shard index true", _train(lambda w: w.store(
        lambda m: m["shards"][1].update(index=True))), "shard index True is not one of 0..2"),
    Case("shard digest not hex", _train(lambda w: w.store(
        lambda m: m["shards"][0]["sha256"].update(clean="g" * 64))), "shard 0 sha256"),
    Case("dtype null (reads as float64)", _train(lambda w: w.store(
        lambda m: m["dtypes"].update(clean=None))), "is inconsistent (dtypes"),
    Case("resume over a damaged manifest", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.store(lambda m: m.update(
            complete=False, shards=[{**m["shards"][0], "files": "noise-00000.npy"}]))],
        "is inconsistent (shard 0 files 'noise-00000.npy'"),
    Case("pairs into a store of other dtypes", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.store(),
        "--set", "pairs.clean_dtype=float16"], "already holds a pair store with other "
        "settings (arrays {'noise': 'float32', 'clean': 'float32'} vs"),
    Case("--n beyond the free disk", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.p("o"), "--n", "1e12"],
        "1000000000000 pairs needs 22.4 TB (22400000000000 bytes) on disk"),
    Case("import from a named pipe", lambda w: [
        "pairs", "import", os.mkfifo(w.p("fifo")) or w.p("fifo"), "--out", w.p("o")],
        "is neither a file nor a directory"),
    Case("shard count as a float", _train(lambda w: w.store(
        lambda m: m["shards"][2].update(count=112.0))), "is inconsistent (shard 2 count 112.0)"),
    Case("pairs --set of a training key", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.p("o"), "--set", "train.steps=5"],
        "--set train.steps has no effect on `kdm pairs`"),
    Case("pairs --set of the teacher's noise scale", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.p("o"), "--set", "teacher.sigma_max=3"],
        "--set teacher.sigma_max has no effect on `kdm pairs`"),
    Case("--n and pairs.n together", lambda w: [
        "pairs", "--teacher", w.teacher, "--out", w.p("o"), "--n", "300",
        "--set", "pairs.n=400"], "give --n or --set pairs.n, not both"),
    Case("teacher function that does not exist",
         lambda w: w.make(f"callable:{w.teachers()}:missing"),
         "teachers.py has no function 'missing'"),
    Case("teacher module that does not exist",
         lambda w: w.make("callable:no_such_module_kdm:f"), "no module 'no_such_module_kdm'"),
    Case("teacher file that does not exist",
         lambda w: w.make(f"denoiser:{w.p('none.py')}:f"),
         "none.py; give denoiser:FILE.py:FUNCTION with an existing file"),
    Case("teacher function that declares nothing",
         lambda w: w.make(f"callable:{w.teachers()}:undeclared"),
         "does not say what it makes; decorate it"),
    Case("unknown teacher kind", lambda w: w.make("hub:org/model"),
         "unknown teacher kind 'hub'; give a teacher run directory or KIND:TARGET"),
    Case("unknown denoiser solver",
         lambda w: w.make(f"denoiser:{w.teachers()}:denoiser", "--set", "pairs.solver=dpm"),
         "unknown solver 'dpm' for the denoiser teacher; choose one of: heun, euler"),
    Case("guidance for a denoiser teacher",
         lambda w: w.make(f"denoiser:{w.teachers()}:denoiser", "--set", "pairs.guidance=2"),
         "pairs.guidance is for diffusers teachers"),
    Case("verify a store with NaN (checksum updated)", lambda w: ["pairs", "verify", w.store_shard(
        "clean-00001.npy", _nan_shard(w), reseal=True)],
        "clean-00001.npy has 1 non-finite values (NaN/inf), at example indices [203]"),
    Case("verify a shard of the wrong shape (checksum updated)", lambda w: [
        "pairs", "verify", w.store_shard("noise-00002.npy", npy_bytes(
            np.zeros((4, 2), np.float32)), reseal=True)],
        "noise-00002.npy holds float32 (4, 2) but the manifest says float32 (112, 2)"),
    Case("import with --shard-size 0", lambda w: [
        "pairs", "import", w.npy("t.npy", np.zeros((3, 10, 2), np.float32)), "--out", w.p("o"),
        "--shard-size", "0"], "--shard-size must be a positive integer, got 0"),
    Case("import with --sigma-max inf", lambda w: [
        "pairs", "import", w.npy("t.npy", np.zeros((3, 10, 2), np.float32)), "--out", w.p("o"),
        "--sigma-max", "inf"], "--sigma-max must be a positive number, got inf"),
    Case("format version true", _train(lambda w: w.store(lambda m: m.update(version=True))),
         "has no positive integer format version (got True)"),
    # ---- end of pair stores, round 2

    # sample, eval and outputs, round 2
    Case("samples beyond free disk", lambda w: [
        "sample", w.run, "--n", "1e15", "--out", w.p("out.npy")],
        "needs 8000.0 TB (8000000000000128 bytes) on disk"),
    Case("a count that is not whole", lambda w: [
        "sample", w.run, "--n", "2.5", "--out", w.p("out.npy")], "invalid int value: '2.5'"),
    Case("NaN weights", _sample(lambda w: w.run_copy(_nan_weights)),
         "5 of 5 samples are NaN/inf (first at row 0)"),
    Case("--out is the --noise file by another path", lambda w: [
        "sample", w.run, "--noise", w.npy("n.npy", np.zeros((3, 2), np.float32)),
        "--out", f"{w.dir}/./n.npy", "--force"], "is the --noise file"),
    Case("--out is the --labels file through a link", lambda w: [
        "sample", w.run, "--n", "5", "--labels", w.npy("l.npy", np.zeros(5, np.int64)),
        "--out", _link(w, "l.npy"), "--force"], "is the --labels file"),
    Case("existing --out without --force", lambda w: (
        w.npy("out.npy", np.ones((2, 2), np.float32)), _sample(lambda w: w.run)(w))[1],
        "already exists; add --force"),
    Case("--out under a read-only directory", lambda w: [
        "sample", w.run, "--n", "5", "--out", "/sys/kdm-sample.npy"], "cannot write in /sys"),
    Case("--out under a file", lambda w: [
        "sample", w.run, "--n", "5", "--out", w.raw("f", b"mine") / "new" / "s.npy"],
        "is a file, not a directory"),
    Case("--out is a directory", lambda w: [
        "sample", w.run, "--n", "5", "--out", _mkdir(w.p("d.npy"))], "is a directory; give"),
    Case("existing --grid without --force", lambda w: [
        *_sample(lambda w: w.run)(w), "--grid", w.raw("g.png", b"mine")],
        "g.png already exists"),
    Case("--n with --noise", lambda w: [
        *_noise(lambda w: w.npy("n.npy", np.zeros((3, 2), np.float32)))(w), "--n", "3"],
        "give --n or --noise, not both"),
    Case("--seed with --noise", lambda w: [
        *_noise(lambda w: w.npy("n.npy", np.zeros((3, 2), np.float32)))(w), "--seed", "4"],
        "with --noise it would be ignored"),
    Case("--class with --labels", lambda w: [
        *_sample(lambda w: w.run, "--class", "1")(w), "--labels",
        w.npy("l.npy", np.zeros(5, np.int64))], "give --labels (a class per sample) or --class"),
    Case("eval of a run and --samples", lambda w: [
        "eval", w.run, "--samples", w.npy("s.npy", np.zeros((9, 2), np.float32))],
        "give one of RUN, --samples FILE or --samples-dir DIR, not RUN and --samples"),
    Case("sample without --out or --png-dir", lambda w: ["sample", w.run, "--n", "5"],
         "give --out FILE.npy, --png-dir DIR, or both"),
    Case("--png-dir of a 2-D run", lambda w: [
        "sample", w.run, "--n", "5", "--png-dir", w.p("png")],
        "--png-dir writes images; this run's samples are vectors"),
    Case("existing --png-dir without --force", lambda w: [
        "sample", w.run, "--n", "5", "--png-dir", _pngs(w, "png", (8, 8))],
        "already exists; add --force"),
    Case("--png-dir is a file", lambda w: [
        "sample", w.run, "--n", "5", "--png-dir", w.raw("f", b"mine")],
        "is a file; give a new folder"),
    Case("eval --samples-dir of no folder", _scored(lambda w: w.p("none")),
        "is not a folder; give a folder of PNG images"),
    Case("eval --samples-dir with no images", _scored(lambda w: _mkdir(w.p("empty"))),
        "holds no .png files"),
    Case("eval --samples-dir of mixed sizes", _scored(
        lambda w: _pngs(w, "mixed", (8, 8), (8, 8), (16, 16)), out=True),
        "mixes image sizes: 000000.png is 8x8 grey but 000002.png is 16x16 grey"),
    Case("eval --samples-dir of grey and RGB", _scored(
        lambda w: _pngs(w, "mixed", (8, 8), (8, 8, 3))),
        "000001.png is 8x8 RGB"),
    Case("eval --samples-dir, a .png that is not one", _scored(
        lambda w: (w.raw("x.png", b"mine"), w.dir)[1]),
        "cannot read"),
    Case("eval --samples-dir without a reference", lambda w: [
        "eval", "--samples-dir", _pngs(w, "png", (8, 8))],
        "a folder of PNGs is scored against real images or statistics"),
    Case("eval --samples-dir against real images of another size", _scored(
        lambda w: _pngs(w, "png", (16, 16)), out=True),
        "the samples are 16x16 with 1 channel but the reference images are 8x8"),
    Case("eval --samples-dir with labels.npy of another count", _scored(
        lambda w: (np.save(_pngs(w, "png", (8, 8)) / "labels.npy", np.zeros(3, np.int64)),
                   w.p("png"))[1]), "holds 3 labels for 1 PNGs"),
    Case("eval of a run and --samples-dir", lambda w: [
        "eval", w.run, "--samples-dir", _pngs(w, "png", (8, 8))],
        "not RUN and --samples-dir"),
    Case("fid-stats of mixed sizes", lambda w: [
        "fid-stats", _pngs(w, "mixed", (8, 8), (9, 9)), "--out", w.p("s.npz"), "--set",
        "eval.extractor=effnet"], "mixes image sizes"),
    Case("eval --reference for a run", lambda w: [
        "eval", w.run, "--out", w.p("e"), "--reference",
        w.npy("r.npy", np.zeros((9, 2), np.float32))], "--reference is for --samples"),
    Case("eval --preset for a run", lambda w: [
        "eval", w.run, "--out", w.p("e"), "--preset", "checkerboard"],
        "--preset does not apply to a run"),
    Case("eval --set outside eval.*", lambda w: [
        "eval", w.run, "--out", w.p("e"), "--set", "train.steps=5"],
        "--set train.steps has no effect on `kdm eval RUN`"),
    Case("eval --out naming a file", lambda w: [
        "eval", w.run, "--out", w.raw("e.txt", b"mine")], "is a file; kdm eval writes"),
    Case("eval --out holding an evaluation", lambda w: [
        "eval", "--samples", w.npy("s.npy", np.zeros((9, 2), np.float32)),
        "--out", w.raw("eval.json", b"{}").parent], "already holds an evaluation (eval.json)"),
    Case("eval.n beyond memory", lambda w: [
        "eval", w.run, "--out", w.p("e"), "--set", "eval.n=10000000000000"],
        "bytes) of memory"),
    Case("object-array .npz as image data", lambda w: [
        "teacher", "train", "--preset", "digits8", "--out", w.p("t"), "--data", _savez(
            w, "d.npz", images=np.array([np.zeros((8, 8)), None], dtype=object))],
        "cannot read 'images' of"),
    Case("image .npz member that is no array", lambda w: [
        "teacher", "train", "--preset", "digits8", "--out", w.p("t"), "--data",
        _zip(w, "d.npz", {"images.npy": b"mine"})], "'images' of"),
    Case("truncated image .npz", lambda w: [
        "teacher", "train", "--preset", "digits8", "--out", w.p("t"), "--data", w.raw(
            "d.npz", _savez(w, "full.npz", images=np.zeros((4, 8, 8), np.uint8)).read_bytes()[
                :100])], "as a NumPy array file"),
    Case("damaged .npz as noise", _noise(lambda w: w.raw("n.npz", b"PK\x03\x04" + b"\0" * 40)),
         "cannot read"),
    # ---- end of sample, eval and outputs, round 2
    # ---- kdm analyze
    Case("analyze a run without checkpoints", lambda w: [
        "analyze", w.run_copy(lambda r: shutil.rmtree(r / "checkpoints"))],
        "has no checkpoint yet; train it first"),
    Case("analyze a directory that is not a run", lambda w: ["analyze", w.dir],
         "run metadata not found"),
    Case("analyze a teacher run", lambda w: ["analyze", w.teacher, "--out", w.p("a")],
         "is a teacher run without a Koopman latent"),
    Case("analyze a kd student", lambda w: ["analyze", w.run_copy(lambda r: edit_json(
        r / "config.json", lambda c: c["model"].update(method="kd"))), "--out", w.p("a")],
        "is a 'kd' student run without a Koopman latent"),
    Case("analyze --n too small for --k", lambda w: [
        "analyze", w.run, "--n", "8", "--k", "10", "--out", w.p("a")],
        "--n 8 is too small for --k 10 neighbours"),
    Case("analyze --out holding an analysis", lambda w: [
        "analyze", w.run, "--out", w.raw("analysis.json", b"{}").parent],
        "already holds an analysis"),
    # ---- end of kdm analyze
    Case("report of a directory that is no run, eval or bench", lambda w: ["report", w.pairs],
         "is not a run, eval or bench directory"),
    Case("report --out that is no .html", lambda w: ["report", w.run, "--out", w.p("r.txt")],
         "r.txt must end in .html"),

    # kdm export
    Case("export a run without checkpoints", lambda w: [
        "export", w.run_copy(lambda r: shutil.rmtree(r / "checkpoints")), "--out", w.p("e")],
        "has no checkpoint yet; train it first"),
    Case("export into a directory that exists", lambda w: [
        "export", w.run, "--out", _mkdir(w.p("e"))], "already exists; add --force"),
    Case("export a teacher run", lambda w: ["export", w.teacher, "--out", w.p("e")],
         "is a 'teacher' run; kdm export ships a distilled KDM run"),
    Case("export a kd baseline", lambda w: ["export", w.run_copy(lambda r: edit_json(
        r / "config.json", lambda c: c["model"].update(method="kd"))), "--out", w.p("e")],
        "is a kd baseline; kdm export ships KDM runs"),
    Case("export over a file", lambda w: [
        "export", w.run, "--out", w.raw("e", b"x"), "--force"], "is a file; give a directory"),

    # pairs filter
    Case("filter without a criterion", _filter(lambda w: w.pairs),
         "give at least one criterion"),
    Case("filter that keeps no pair", _filter(lambda w: w.pairs, "--max-outlier", "1e-9"),
         "the filter would keep none of the 512 pairs"),
    Case("filter by an unknown class", _filter(lambda w: _small_store(w, classes=3),
                                                "--keep-class", "0,7"),
         "unknown class '7'; this store's classes are 0..2"),
    Case("filter by class of a store without labels", _filter(
        lambda w: w.pairs, "--drop-class", "1"), "has no labels; --keep-class and"),
    Case("filter into an existing --out", lambda w: [
        "pairs", "filter", w.pairs, "--out", _mkdir(w.p("f")), "--drop-outliers", "0.1"],
        "already exists; a filtered store is always new"),
    Case("filter of a directory that is not a store", lambda w: [
        "pairs", "filter", _mkdir(w.p("d")), "--out", w.p("f"), "--drop-outliers", "0.1"],
        "is not a pair store (no manifest.json)"),
    Case("filter --max-error without --run", _filter(lambda w: w.pairs, "--max-error", "1"),
         "give --run RUN"),
    Case("filter by the error of a run of another shape", lambda w: [
        "pairs", "filter", _small_store(w, (3,)), "--out", w.p("f"), "--run", w.run,
        "--drop-worst", "0.2"], "maps examples of shape (2,) but the pairs of"),
    Case("filter --exclude-like of the wrong shape", lambda w: [
        "pairs", "filter", w.pairs, "--out", w.p("f"), "--threshold", "0.1",
        "--exclude-like", w.npy("ex.npy", np.zeros((4, 3), np.float32))],
        "must have shape (N, 2), got (4, 3)"),
    Case("filter --drop-outliers out of range", _filter(
        lambda w: w.pairs, "--drop-outliers", "1.5"), "--drop-outliers must be a fraction"),
    # ---- end of pairs filter
    # ---- kdm bench
    Case("bench --seeds 0", lambda w: [
        "bench", "checkerboard", "--quick", "--out", w.p("b"), "--seeds", "0"],
        "--seeds must be a positive integer, got 0"),
    Case("bench --seeds negative", lambda w: [
        "bench", "checkerboard", "--quick", "--out", w.p("b"), "--seeds", "-2"],
        "--seeds must be a positive integer, got -2"),
    Case("bench --seeds not a whole number", lambda w: [
        "bench", "checkerboard", "--quick", "--out", w.p("b"), "--seeds", "1.5"],
        "argument --seeds: invalid int value: '1.5'"),
    Case("bench --adv of no mode", lambda w: [
        "bench", "checkerboard", "--quick", "--out", w.p("b"), "--adv", "always"],
        "argument --adv: invalid choice: 'always'"),
    Case("bench --adv both without an adversarial weight", lambda w: [
        "bench", "checkerboard", "--quick", "--out", w.p("b"), "--adv", "both"],
        "--adv both sets the adversarial term at model.w_adv, which is 0 here"),
    Case("bench --adv none with model.w_adv=0", lambda w: [
        "bench", "fashion16", "--quick", "--out", w.p("b"), "--adv", "none",
        "--set", "model.w_adv=0"], "--adv none sets the adversarial term at model.w_adv"),
    # ---- end of kdm bench
]


# -- running a case -----------------------------------------------------------------------------
def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``roots``: (mtime_ns, sha256)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@dataclass
class Outcome:
    code: int
    stderr: str
    changed: list[str]  # files created, changed or removed


def run_case(case: Case, ws: Workspace) -> Outcome:
    argv = [str(a) for a in case.setup(ws)]
    roots = (ws.dir, *ws.tiny.values())
    before = snapshot(*roots)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    after = snapshot(*roots)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Outcome(code, err.getvalue(), changed)


def short(text: str, ws: Workspace) -> str:
    """``text`` with the workspace paths replaced by placeholders."""
    for name, path in sorted({**{k.upper(): v for k, v in ws.tiny.items()},
                              "DIR": ws.dir}.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(path.resolve()), f"<{name}>").replace(str(path), f"<{name}>")
    return text


def write_doc(rows: list[tuple[str, str]]) -> None:
    """Replace the section between the markers of docs/reliability.md with ``rows``."""
    table = ["| # | bad input | error (exit code 2) |", "|---|---|---|"]
    table += [f"| {i} | {name} | `` {msg.replace('|', chr(92) + '|')} `` |"
              for i, (name, msg) in enumerate(rows, 1)]
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    DOC.write_text(f"{head}{BEGIN}\n" + "\n".join(table) + f"\n{END}{tail}")


def _generate() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny(Path(tmp) / "tiny")
        rows = []
        for i, case in enumerate(CASES):
            ws = Workspace(Path(tmp) / f"case{i}", tiny)
            out = run_case(case, ws)
            line = out.stderr.strip()
            ok = out.code == 2 and case.expect in line and not out.changed
            rows.append((case.name, short(line, ws)))
            print(f"{'ok ' if ok else 'BAD'} {case.name}: {short(line, ws)}")
    write_doc(rows)
    print(f"{len(rows)} cases written to {DOC}")


if __name__ == "__main__":
    _generate()
