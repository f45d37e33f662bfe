"""Run directories' metadata: ``run.json`` (what kind of run, the shape of one example and
its class count, noise scale, where its pairs came from) and ``config.json``, read and
checked field by field without importing torch, so that commands can check their work before
loading a model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import KDMError
from .io import read_json

# 1: vector runs recorded ``dim`` instead of ``shape``; 2: a baseline (kd, rectified) ignored
# model.w_adv, which is read as 0 (from 3 on it adds the adversarial term)
RUN_FORMAT = 3


def read_run(run: str | Path) -> tuple[Config, dict[str, Any]]:
    """The config and metadata of a run directory (every field checked)."""
    run = Path(run)
    if not run.is_dir():
        raise KDMError(f"run directory not found: {run}")
    meta = read_json(run / "run.json", "run metadata")
    check_run_meta(meta, run)
    if "dim" in meta:  # format 1
        dim = meta.pop("dim")
        meta.update(shape=[dim], num_classes=meta.get("num_classes", 0))
    cfg = load_config(str(run / "config.json"))
    if meta["format"] < 3 and cfg.model.method != "kdm":  # trained without a critic
        cfg.model.w_adv = 0.0
    return cfg, meta


_MAX_EXAMPLE = 1 << 28  # values per example: far above any real model, far below memory limits


def check_run_meta(meta: Any, run: Path) -> None:
    """Raise a one-line KDMError unless ``meta`` is a ``run.json`` this package can use."""
    where = run / "run.json"

    def bad(what: str) -> KDMError:
        return KDMError(f"{where} {what}; the run's metadata is damaged (restore run.json or "
                        "rerun)")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v: Any, least: int = 0) -> bool:
        return type(v) is int and v >= least

    if not isinstance(meta, dict):
        raise bad(f"holds a JSON {type(meta).__name__}, not an object")
    fmt = meta.get("format")
    if not count(fmt, 1):
        raise bad(f"has format {fmt!r}, expected a positive integer")
    if fmt > RUN_FORMAT:
        raise KDMError(f"{run} was written by a newer koopman-distill (run format "
                       f"{fmt} > {RUN_FORMAT}); upgrade the package")
    kind = meta.get("kind")
    if kind not in ("teacher", "kdm"):
        raise KDMError(f"{run} has unknown run kind {kind!r}")
    if not (number(meta.get("sigma_max")) and meta["sigma_max"] > 0):
        raise bad(f"has sigma_max {meta.get('sigma_max')!r}, expected a positive number")
    if fmt == 1 and "shape" not in meta:
        if not (count(meta.get("dim"), 1) and meta["dim"] <= _MAX_EXAMPLE):
            raise bad(f"has dim {meta.get('dim')!r}, expected a positive integer")
    else:
        shape = meta.get("shape")
        if not (isinstance(shape, list) and len(shape) in (1, 3)
                and all(count(v, 1) for v in shape) and math.prod(shape) <= _MAX_EXAMPLE):
            raise bad(f"has shape {shape!r}, expected [dim] or [channels, height, width]")
        if not count(meta.get("num_classes")):
            raise bad(f"has num_classes {meta.get('num_classes')!r}")
    if "standardize" in meta:  # a vector teacher's data: shift and scale (D,) each
        std, dim = meta["standardize"], (meta.get("shape") or [meta.get("dim")])[0]
        if not (isinstance(std, dict) and all(
                isinstance(std.get(k), list) and len(std[k]) == dim
                and all(number(v) for v in std[k]) for k in ("shift", "scale"))
                and all(v > 0 for v in std["scale"])):
            raise bad(f"has standardize {std!r}, expected a shift and a positive scale per "
                      "coordinate")
    fields = ({"n_data": lambda v: count(v)} if kind == "teacher" else
              {"pairs": lambda v: isinstance(v, str) and v != "",
               "n_pairs": lambda v: count(v, 1),
               "teacher": lambda v: v is None or isinstance(v, dict),
               "nfe_teacher": lambda v: v is None or count(v)})
    for key, ok in fields.items():
        if key not in meta:
            raise bad(f"lacks {key}")
        if not ok(meta[key]):
            raise bad(f"has {key} {meta[key]!r}")
    if "teacher_data" in meta and not isinstance(meta["teacher_data"], bool):
        raise bad(f"has teacher_data {meta['teacher_data']!r}, expected true or false")
