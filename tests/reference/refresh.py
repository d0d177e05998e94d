"""Refresh the committed chapter references from freshly executed quick-profile chapters.

Run it through ``make references``, which first executes every chapter with the quick profile
(papermill writes ``book/chapters/*.ipynb``) and then calls::

    python tests/reference/refresh.py book/chapters tests/reference

`make nbval` re-executes the references and compares the cells marked ``NBVAL_CHECK_OUTPUT``
with the outputs stored here (after the rules in ``sanitize.cfg``), so a change that moves a
checked number shows up as a diff of these files, to be reviewed and committed on purpose.

What is kept and what is dropped, so that the files diff cleanly:

- every cell's source, and the text outputs of every cell;
- not kept: figures' image data (nbval does not compare images; the rendered book shows them),
  stderr streams (progress bars and warnings, which depend on whether the model cache was warm)
  and papermill's timing metadata. Execution counts stay: nbval refuses a reference cell that
  has outputs but no execution count (papermill numbers the cells in order, so they do not
  change between runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

#: Output MIME types kept in the references (images are not compared by nbval).
KEPT_MIME = ("text/plain", "text/markdown", "text/html")


def code_sources(notebook: nbformat.NotebookNode) -> list[str]:
    """The sources of a notebook's code cells, without papermill's injected-parameters cell."""
    return [
        cell.source.strip()
        for cell in notebook.cells
        if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", [])
    ]


def jupytext_sources(path: Path) -> list[str]:
    """The code cells of a Jupytext chapter source, as the chapters are executed."""
    return code_sources(jupytext.read(path))


def clean(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip a papermill-executed notebook down to what a reference keeps (see module doc)."""
    notebook.metadata.pop("papermill", None)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                if output.name == "stderr":
                    continue
            elif output.output_type in ("display_data", "execute_result"):
                data = {key: value for key, value in output.data.items() if key in KEPT_MIME}
                if not data:
                    continue
                output.data = data
                output.metadata = {}
            kept.append(output)
        cell.outputs = kept
    return notebook


def refresh(executed_dir: Path, reference_dir: Path, sources_dir: Path) -> list[Path]:
    """Write one cleaned reference per chapter source; refuse when an executed chapter is
    missing or was executed from other code than the current source."""
    written = []
    for source in sorted(sources_dir.glob("*.py")):
        executed = executed_dir / f"{source.stem}.ipynb"
        if not executed.is_file():
            raise SystemExit(f"{executed} is missing: execute the chapters first (make references)")
        notebook = nbformat.read(executed, as_version=4)
        if code_sources(notebook) != jupytext_sources(source):
            raise SystemExit(f"{executed} was executed from other code than {source}: "
                             "re-execute the chapters (make references)")
        parameters = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
        if not parameters or 'profile = "quick"' not in parameters[0].source:
            raise SystemExit(f"{executed} was not executed with the quick profile")
        target = reference_dir / executed.name
        nbformat.write(clean(notebook), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("executed", type=Path, help="folder of papermill-executed chapters")
    parser.add_argument("references", type=Path, help="folder of the committed references")
    parser.add_argument("--sources", type=Path, default=Path("notebooks"),
                        help="folder of the Jupytext chapter sources (default: notebooks)")
    args = parser.parse_args(argv)
    for path in refresh(args.executed, args.references, args.sources):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
