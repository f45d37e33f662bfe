"""The source of ``kdm_generator.py``, the one file an export needs besides torch and
safetensors: this package's own definitions of the networks on the sampling path, the seeded
noise and :mod:`.generator`, taken from their modules as they are (imports dropped, one
header of imports instead), so the shipped code is the code the package tests."""

from __future__ import annotations

import ast
import importlib
import inspect

# (module, the top-level names it gives the file; None: all of them), in dependency order
SOURCES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("koopman_distill.models.features", ("time_frequencies", "time_features")),
    ("koopman_distill.models.mlp", None),
    ("koopman_distill.models.unet", None),
    ("koopman_distill.models.koopman", ("DenseKoopman", "EigenKoopman")),
    ("koopman_distill.models.sampling_path", None),
    ("koopman_distill.models.spec", ("Spec", "NETWORKS", "build")),
    ("koopman_distill.seeded", None),
    ("koopman_distill.export.generator", None),
)

HEADER = '''"""A one-step generator distilled with koopman-distill (KDM), standalone: it needs torch
and safetensors only. Next to this file: config.json (the networks and where they came
from) and model.safetensors (the weights).

    from kdm_generator import load
    g = load("path/to/this/folder")
    x = g.sample(16, seed=0)            # (16, *shape), as `kdm sample --n 16 --seed 0`

or ``python kdm_generator.py --n 16 --out samples.safetensors``. Written by `kdm export` from
koopman-distill {version}; do not edit (export again instead).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class KDMError(ValueError):
    """Bad input (a one-line message)."""
'''


def _name(node: ast.stmt) -> str | None:
    """The name a top-level statement defines (None: it defines none)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, ast.AnnAssign) else [])
    names = [t.id for t in targets if isinstance(t, ast.Name)]
    return names[0] if names else None


def definitions(module: str, names: tuple[str, ...] | None) -> str:
    """The source of ``module``'s top-level statements (those defining ``names``, or all),
    each with the comment lines just above it, without its docstring and imports."""
    source = inspect.getsource(importlib.import_module(module))
    lines = source.splitlines()
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    missing = set(names or ()) - {_name(n) for n in body}
    if missing:
        raise RuntimeError(f"{module} no longer defines {', '.join(sorted(missing))}")
    out, prev_end = [], 0
    for node in body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        start = first - 1
        while start > prev_end and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        prev_end = node.end_lineno
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if names is None or _name(node) in names:
            out.append("\n".join(lines[start:node.end_lineno]))
    return "\n\n\n".join(out)


def loader_source(version: str) -> str:
    """The text of ``kdm_generator.py`` (``version``: the package's, for the record)."""
    parts = [HEADER.format(version=version)]
    for module, names in SOURCES:
        parts.append(f"# -- from {module} " + "-" * max(0, 80 - len(module)))
        parts.append(definitions(module, names))
    return "\n\n\n".join(parts) + "\n"
