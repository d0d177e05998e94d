"""Result tables for the chapters: rendered as HTML tables in the book, as aligned text elsewhere.

A :class:`Table` is displayed by Jupyter through its Markdown form (myst-nb turns it into an
HTML table in the rendered book) and shows an aligned fixed-width text form in a terminal or
in any front end without Markdown. Cells are formatted by the caller, so every chapter states
the precision of each number it reports::

    from IPython.display import display
    display(Table(["width", "DL (bits)"], [[64, f"{82.38:.2f}"], [128, f"{68.95:.2f}"]]))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Table"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


@dataclass
class Table:
    """A table of already-formatted cells with a header row.

    Args:
        columns: the header, one name per column (units in the name, e.g. ``"DL (bits)"``).
        rows: one sequence of cells per row, each as long as ``columns``. Strings are shown as
            they are; ``None`` as ``-``; booleans as yes/no; other values through ``str``
            (floats through ``:g``), so format numbers before passing them in.
        caption: an optional line shown above the table.
        numeric: which columns are right-aligned (default: a column is right-aligned when
            every non-empty cell in it parses as a number).
    """

    columns: Sequence[str]
    rows: Iterable[Sequence[Any]]
    caption: str | None = None
    numeric: Sequence[bool] | None = None
    _cells: list[list[str]] = field(init=False, repr=False)
    _right: list[bool] = field(init=False, repr=False)  # right-align each column

    def __post_init__(self) -> None:
        self.columns = [str(c) for c in self.columns]
        if not self.columns:
            raise ValueError("a table needs at least one column")
        self._cells = []
        for i, row in enumerate(self.rows):
            cells = [_cell(v) for v in row]
            if len(cells) != len(self.columns):
                raise ValueError(f"row {i} has {len(cells)} cells but the table has {len(self.columns)} columns")
            self._cells.append(cells)
        self.rows = [list(r) for r in self._cells]
        if self.numeric is None:
            self.numeric = [
                all(_is_number(r[j]) for r in self._cells if r[j] not in ("", "-"))
                and any(r[j] not in ("", "-") for r in self._cells)
                for j in range(len(self.columns))
            ]
        elif len(self.numeric) != len(self.columns):
            raise ValueError("numeric must give one flag per column")
        self._right = [bool(n) for n in self.numeric]

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown (``|`` in cells escaped)."""

        def esc(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [] if self.caption is None else [self.caption, ""]
        lines.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---:" if n else ":---" for n in self._right) + "|")
        lines.extend("| " + " | ".join(esc(c) for c in row) + " |" for row in self._cells)
        return "\n".join(lines)

    def to_text(self) -> str:
        """The table as aligned fixed-width text."""
        widths = [max([len(c)] + [len(r[j]) for r in self._cells]) for j, c in enumerate(self.columns)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, self._right)).rstrip()

        lines = [] if self.caption is None else [self.caption]
        lines.append(line(self.columns))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(line(r) for r in self._cells)
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return self.to_text()


def _is_number(text: str) -> bool:
    cleaned = text.replace(",", "").replace("%", "").replace("+", "").strip()
    try:
        float(cleaned)
    except ValueError:
        return False
    return True
