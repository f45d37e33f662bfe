"""TensorBoard event files of a run (``train.tensorboard=true``), in ``RUN/tensorboard``.

The trainer hands every row it writes to ``log.jsonl`` to :meth:`Board.row` (each number
becomes a scalar of that name at the row's step, plus the steps per second since the previous
row) and, at each periodic evaluation, the EMA model to :meth:`Board.picture`, which draws
``preview(model, png_path)`` (a picture of the model's samples on fixed noise, made by whoever
knows the data) into an image summary. Only rank 0 writes; a resumed run appends to the same
directory and hides the events after the step it resumed from.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import KDMError

Preview = Callable[[nn.Module, Path], Path]
DIRNAME = "tensorboard"


def check_available() -> None:
    """A one-line error when the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise KDMError("train.tensorboard=true needs the tensorboard package: pip install "
                       "'koopman-distill[tensorboard]' (or drop train.tensorboard)")


class Board:
    """TensorBoard events under ``run_dir/tensorboard``, opened by :meth:`open` (once the run
    directory is in place)."""

    def __init__(self, run_dir: str | Path, preview: Preview | None = None):
        check_available()
        self.dir, self.preview = Path(run_dir) / DIRNAME, preview
        self.writer: Any = None
        self._last: tuple[int, float] | None = None  # (step, time) of the previous row

    def open(self, step: int) -> None:
        """Start writing; events a killed run wrote after ``step`` (where it resumes) are
        hidden."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.dir), purge_step=step + 1 if step else None)

    def row(self, row: dict[str, Any]) -> None:
        step = row["step"]
        for key, v in row.items():
            if key != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(key, v, step)
        t = row.get("time")
        if isinstance(t, (int, float)):
            if self._last is not None and t > self._last[1]:
                self.writer.add_scalar("steps_per_s", (step - self._last[0]) / (t - self._last[1]),
                                       step)
            self._last = (step, t)

    def picture(self, model: nn.Module, step: int) -> None:
        if self.preview is None:
            return
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            try:
                png = self.preview(model, Path(tmp) / "samples.png")
            except KDMError as e:  # samples with no picture (1-D vectors): said once
                self.writer.add_text("samples", str(e), step)
                self.preview = None
                return
            with Image.open(png) as im:
                image = np.asarray(im.convert("RGB"))
        self.writer.add_image("samples", image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
