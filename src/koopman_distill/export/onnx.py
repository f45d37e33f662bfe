"""The sampling path as an ONNX graph: inputs ``x_T`` (batch, *shape) float32 and, for a
conditional generator, ``labels`` (batch,) int64; output ``x_0`` (batch, *shape). The batch
dimension is dynamic. :func:`check_onnx` runs it in onnxruntime (when installed) against the
PyTorch generator."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import KDMError, first_line

OPSET = 18


def export_onnx(gen: torch.nn.Module, path: Path) -> None:
    """Write ``gen`` (a :class:`.generator.OneStepGenerator` in eval mode) to ``path``, its
    weights inside the file."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    x_T = gen.noise(2)
    args: tuple[torch.Tensor, ...] = (x_T,)
    names, shapes = ["x_T"], {"x_T": {0: batch}}
    if gen.num_classes:
        args += (gen.labels(2),)
        names.append("labels")
        shapes["labels"] = {0: batch}
    log = logging.getLogger("torch.onnx")  # it warns of every torchvision op it skips
    level = log.level
    log.setLevel(logging.ERROR)
    try:  # torch.export first: it fails loudly where the batch would not stay dynamic
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.export.export(gen, args, dynamic_shapes=shapes)
            program = torch.onnx.export(graph, input_names=names, output_names=["x_0"],
                                        opset_version=OPSET, dynamo=True, external_data=False,
                                        verbose=False)
        program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises many kinds; each is one failure to report
        raise KDMError(f"ONNX export failed: {type(e).__name__}: {first_line(e)}") from None
    finally:
        log.setLevel(level)


def check_onnx(path: Path, gen: torch.nn.Module, noise: torch.Tensor,
               labels: torch.Tensor | None, expected: torch.Tensor,
               batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """The graph at ``path`` run by onnxruntime on ``noise`` (N, *shape) [and ``labels``] at
    each batch size, against ``expected`` (the run's outputs): max abs difference per batch
    size (absent when onnxruntime is not installed)."""
    import importlib.util

    info: dict[str, Any] = {"file": path.name, "opset": OPSET,
                            "inputs": ["x_T", "labels"] if gen.num_classes else ["x_T"],
                            "output": "x_0", "dynamic_batch": True}
    if importlib.util.find_spec("onnxruntime") is None:
        info["max_abs_diff"] = {}
        info["checked"] = "not checked: onnxruntime is not installed"
        return info
    session = ort_session(path)
    diffs = {}
    for bs in batch_sizes:
        out = ort_map(session, noise, labels, bs)
        diffs[str(bs)] = float((torch.from_numpy(out) - expected).abs().max())
    worst = max(diffs.values())
    if not worst <= 1e-4:
        raise KDMError(f"the ONNX graph differs from PyTorch by {worst:.2g} (max abs, batch "
                       f"sizes {', '.join(diffs)}); nothing was written")
    import onnxruntime

    info.update(max_abs_diff=diffs, n=len(noise), onnxruntime=onnxruntime.__version__)
    return info


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of the graph at ``path`` (``threads`` intra-op threads)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_map(session: Any, noise: torch.Tensor, labels: torch.Tensor | None,
            batch_size: int) -> Any:
    """The session's ``x_0`` (N, *shape) float32 numpy for noise (N, *shape) [and labels]."""
    import numpy as np

    out = []
    for i in range(0, len(noise), batch_size):
        feed = {"x_T": noise[i:i + batch_size].numpy()}
        if labels is not None:
            feed["labels"] = labels[i:i + batch_size].numpy()
        out.append(session.run(["x_0"], feed)[0])
    return np.concatenate(out)
