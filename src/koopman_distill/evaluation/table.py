"""Result tables: the columns a domain (or a dataset's extras) shows, as Markdown.

Torch-free, so that domains can name their columns without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One metric column: its ``header``, the row ``key`` it shows and the format ``spec``;
    with ``se``, a row's ``KEY_se`` (a standard error) follows the value when asked for;
    ``paired``: a paired error against the teacher (nothing to show in the teacher's row)."""

    header: str
    key: str
    spec: str
    se: bool = False
    paired: bool = False

    def cell(self, row: Mapping[str, Any], with_se: bool = False) -> str:
        text = fmt(row.get(self.key), self.spec)
        se = row.get(f"{self.key}_se")
        if with_se and self.se and text != "-" and se is not None:
            text += f" ± {se:.1e}"
        return text


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``; ``-`` for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first row is the header; columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
