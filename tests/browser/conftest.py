"""The browser test runs only through ``make browser`` (part of ``make test``), after the book
is built: that target sets MDL_BOOK_BROWSER=1. A plain ``pytest tests`` (``make unit``) does not
collect it, so the unit run never opens a browser on a stale or missing book."""

from __future__ import annotations

import os

if os.environ.get("MDL_BOOK_BROWSER") != "1":
    collect_ignore_glob = ["test_*.py"]
