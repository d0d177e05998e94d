"""The committed chapter references (tests/reference/) that `make nbval` checks against.

nbval re-executes each reference and compares the cells marked NBVAL_CHECK_OUTPUT with the
outputs stored in it, after the rules of tests/reference/sanitize.cfg. These tests check that
the references are what nbval should compare with: executed from the current chapter code, with
the quick profile, and with checked outputs stored; and that the sanitize rules mask what is
volatile while a real change of a number still shows.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

REPO = Path(__file__).resolve().parents[1]
REFERENCES = REPO / "tests" / "reference"
SOURCES = sorted((REPO / "notebooks").glob("*.py"))
REFRESH = "run `make references` and review the diff of tests/reference/ before committing"

sys.path.insert(0, str(REFERENCES))
import refresh  # noqa: E402  (tests/reference/refresh.py)


def _sanitize(text: str) -> str:
    rules = get_sanitize_patterns((REFERENCES / "sanitize.cfg").read_text())
    for regex, replace in rules:
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_reference_matches_current_chapter_code(source: Path) -> None:
    reference = REFERENCES / f"{source.stem}.ipynb"
    assert reference.is_file(), f"no committed reference for {source.name}: {REFRESH}"
    stored = refresh.code_sources(nbformat.read(reference, as_version=4))
    current = refresh.jupytext_sources(source)
    changed = [i for i, (a, b) in enumerate(zip(stored, current)) if a != b]
    assert len(stored) == len(current) and not changed, (
        f"{reference.name} holds other code than {source.name} "
        f"(code cells {changed or 'added or removed'}): {REFRESH}")


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_reference_is_quick_profile_with_checked_outputs(source: Path) -> None:
    notebook = nbformat.read(REFERENCES / f"{source.stem}.ipynb", as_version=4)
    parameters = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and 'profile = "quick"' in parameters[0].source
    checked = [c for c in notebook.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, "a chapter without checked cells would pass nbval whatever it computes"
    for cell in checked:
        text = "".join(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                       for o in cell.outputs)
        assert text.strip(), f"checked cell without stored output:\n{cell.source[:200]}"
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert not (output.output_type == "stream" and output.name == "stderr")
            assert "image/png" not in output.get("data", {})


def test_clean_keeps_text_and_drops_volatile_parts() -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"duration": 12.0}
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.execution_count = 7
    cell.metadata["papermill"] = {"start_time": "2026-12-03"}
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="1\n"),
        nbformat.v4.new_output("stream", name="stderr", text="100%|####| 3/3\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"}),
    ]
    nb.cells = [cell]
    out = refresh.clean(nb)
    assert "papermill" not in out.metadata and "papermill" not in out.cells[0].metadata
    assert out.cells[0].execution_count == 7  # nbval needs it on a cell with outputs
    kinds = [(o.output_type, o.get("name"), dict(o.get("data", {}))) for o in out.cells[0].outputs]
    assert kinds == [("stream", "stdout", {}), ("display_data", None, {"text/plain": "<Figure>"})]


@pytest.mark.parametrize("text, expected", [
    ("test MSE 0.0149872 per pixel", "test MSE 0.01498 per pixel"),
    ("DL 68.9534 bits, bound 123.4567, total 61,234.56", "DL 68.95 bits, bound 123.4, total 61,234."),
    ("B = 7.51236 bits, seeds 0, 1, 2", "B = 7.512 bits, seeds 0, 1, 2"),
    ("in [0.014985, 0.015], 0.0149 and 0.01", "in [0.01498, 0.015], 0.0149 and 0.01"),
    ("width 1024: 1010/1024 live", "width 1024: 1010/1024 live"),
    ("trained in 12.3 s (0.05 h of training), 3 seeds", "trained in <TIME> (<TIME> of training), 3 seeds"),
    ("machine: x86_64, 2 CPUs; date: 2026-12-03T01:02:03+00:00; code version: 0bc2d49",
     "machine: <MACHINE>; date: <DATE>; code version: <VERSION>"),
    ("cache /work/main/_build/cache/abc", "cache <PATH>"),
])
def test_sanitize_masks_volatile_text_and_states_precision(text: str, expected: str) -> None:
    assert _sanitize(text) == expected


@pytest.mark.parametrize("reference, fresh, same", [
    ("DL 68.95312", "DL 68.95377", True),     # noise in the fifth significant digit
    ("DL 68.95312", "DL 68.97312", False),    # a change in the fourth
    ("MSE 0.0149951", "MSE 0.0149979", True),
    ("MSE 0.0149951", "MSE 0.0151951", False),
    ("optimum width 128", "optimum width 256", False),
    ("resolved: True", "resolved: False", False),
])
def test_sanitized_comparison_passes_noise_and_fails_real_changes(reference: str, fresh: str,
                                                                   same: bool) -> None:
    assert (_sanitize(reference) == _sanitize(fresh)) is same


def test_make_nbval_checks_the_committed_references() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nnbval:", 1)[1].split("\n\n", 1)[0]
    assert "--nbval-sanitize-with tests/reference/sanitize.cfg" in recipe
    assert "$(REFERENCES)" in recipe and "$(EXECUTED)" not in recipe
    assert "tests/reference/refresh.py" in makefile.split("\nreferences:", 1)[1].split("\n\n", 1)[0]
