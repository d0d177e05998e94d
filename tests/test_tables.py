"""mdl_utils.tables: result tables, checked against strings written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mdl_utils.tables import Table


def test_markdown_and_text_forms() -> None:
    t = Table(["width", "DL (bits)", "stop"], [[64, "82.38", "converged"], [1024, None, "a|b"]])
    assert t.to_markdown() == (
        "| width | DL (bits) | stop |\n"
        "|---:|---:|:---|\n"
        "| 64 | 82.38 | converged |\n"
        "| 1024 | - | a\\|b |")
    assert t.to_text() == (
        "width  DL (bits)  stop\n"
        "-----  ---------  ---------\n"
        "   64      82.38  converged\n"
        " 1024          -  a|b")
    assert repr(t) == t.to_text() and t._repr_markdown_() == t.to_markdown()


def test_cells_and_caption() -> None:
    t = Table(["ok", "x"], [[True, 0.5], [np.float64(0.3) > 1, 1e-7]], caption="Table 1")
    assert t.rows == [["yes", "0.5"], ["no", "1e-07"]]
    assert t.numeric == [False, True]
    assert t.to_markdown().splitlines()[:2] == ["Table 1", ""]
    assert t.to_text().splitlines()[0] == "Table 1"


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells but the table has 2 columns"):
        Table(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="at least one column"):
        Table([], [])
    with pytest.raises(ValueError, match="one flag per column"):
        Table(["a"], [[1]], numeric=[True, False])
