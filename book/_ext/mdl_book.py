"""Sphinx glue for the MDL-SAE book (loaded through ``sphinx.local_extensions`` in _config.yml).

Its jobs, each driven by what is in the repository rather than by typed-in text:

- the landing page's headline result, read at build time from the committed chapter-3 study
  (``results/full/mnist-mdl/summary.json``, through the study's own reader, so a summary in
  another format fails the build) (substitution ``{{ headline }}``), or a plain
  "not yet computed" when there is none;
- how long this build's chapters took to execute, and with which profile, read from the
  executed notebooks (substitution ``{{ build_timing }}``);
- links derived from the one ``repository.url`` setting in _config.yml (substitutions
  ``{{ repository_link }}`` and ``{{ binder_link }}``), so a fork changes one line;
- launch buttons that open something the repository holds. The executed chapters in
  ``book/chapters/`` are build outputs and are never committed, so the theme's default target
  (``book/chapters/NAME.ipynb``) would not exist on Binder. Each chapter's source is
  ``notebooks/NAME.py`` (Jupytext); the repository's ``postBuild`` converts those sources to
  ``notebooks/NAME.ipynb`` when Binder builds the image, and the buttons open that notebook.

- the book's stylesheet (``book/_static/mdl_book.css``): long code lines and printed outputs
  wrap at the page width rather than being cut off, and wide result tables scroll in their box.

It also repairs three things for the strict (``-W -n``) build and the browser test: duplicate
inline scripts that throw on page load, napoleon's reading of prose attribute comments, and
links from signatures to the library's type aliases (``mdl_utils.array_types.Latents``):
autodoc documents an alias as data but links to it as a class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Where ``make book PROFILE=full`` results are committed (issue 6), relative to the book root.
RESULTS_DIR = Path("results") / "full"
#: Where the executed chapters live in the book, and where their committed sources live.
CHAPTER_DIR = "book/chapters/"
SOURCE_DIR = "notebooks/"

NOT_COMPUTED = (
    "**Not yet computed.** The paper-scale sweep (`make book PROFILE=full`) has no committed "
    "results in `results/full/` yet, so this page has no headline number to show. The chapters "
    "below are built with the `{profile}` profile and compute their own numbers as they run."
)

#: The chapter-3 study under the resolved protocol (mdl_utils.study), relative to RESULTS_DIR.
STUDY_SUMMARY = Path("mnist-mdl") / "summary.json"


def study_headline(summary_path: Path) -> str:
    """The headline sentence from the chapter-3 study's ``summary.json`` (mdl_utils.study).

    States the optimum as the study's resolution rule gives it: one width when resolved, else
    the set of widths it cannot tell apart, and how much of the study the committed rows cover.
    """
    from mdl_utils.study_summary import read_summary

    # The study's own reader: a summary in another format stops the strict build here.
    summary = read_summary(summary_path)
    res = summary.resolution
    done = sum(1 for s in summary.searches.values() if s.complete)
    status = ("the study is complete" if summary.complete else
              f"the committed rows cover {done} (width, seed) searches so far, "
              f"{len(summary.remaining)} remain")
    if res is None:
        return (f"**In progress.** The chapter-3 study has trained {summary.n_saes_trained} SAEs; "
                f"no width has a finished search yet ({status}).")
    widths = [e.width for e in summary.dl_star]
    best = summary.dl_star_of(res.optimum)
    ci_text = f" (bootstrap 95% interval {best.boot_ci[0]:.1f} to {best.boot_ci[1]:.1f})" if best.boot_ci else ""
    tie = ", ".join(str(w) for w in res.tie_set)
    # The library's one rule (mdl_utils.resolution.judge_optimum), as chapter 3 prints it.
    verdict = summary.verdict
    assert verdict is not None  # a resolution exists, so the bracket and the verdict do too
    if res.provisional:
        opt = (f"this is **provisional**, as the study is incomplete (so far widths {tie} "
               "cannot be told apart)")
    elif verdict.resolved:
        opt = f"the optimum is **resolved: width {res.optimum}**"
    else:
        opt = f"the optimum is **not resolved**: {verdict.reason}"
    source = (RESULTS_DIR / STUDY_SUMMARY).as_posix()
    meta = summary.metadata
    return (
        f"At a test MSE of {summary.epsilon:g} per pixel, among {len(widths)} widths measured "
        f"({min(widths)} to {max(widths)}), the smallest mean description length is "
        f"**{best.mean:.1f} bits per test digit** at width {res.optimum}{ci_text}, over "
        f"{best.n_seeds} seed(s); {opt}. Of {summary.n_saes_trained} SAEs trained, "
        f"{status}. (Read from `{source}`; machine: {meta.get('machine')}, date: "
        f"{meta.get('date')}, code version: {meta.get('code_version')}.)"
    )


def headline(results_dir: Path, profile: str = "quick") -> tuple[str, bool]:
    """The landing page's headline sentence (MyST Markdown) and whether results were found.

    The headline is the chapter-3 study's (:func:`study_headline`), read from
    ``results_dir/mnist-mdl/summary.json``; without that file the page says the paper-scale
    results are not computed yet.
    """
    if (results_dir / STUDY_SUMMARY).is_file():
        return study_headline(results_dir / STUDY_SUMMARY), True
    return NOT_COMPUTED.format(profile=profile), False


def build_record(chapters_dir: Path) -> tuple[str, str]:
    """The profile the executed chapters ran with, and a sentence on how long they took.

    Both come from the metadata papermill writes into each executed notebook
    (``metadata.papermill.parameters.profile`` and ``metadata.papermill.duration`` in seconds).
    """
    profiles, seconds, count = set(), 0.0, 0
    for path in sorted(chapters_dir.glob("*.ipynb")):
        record = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        if isinstance(record.get("duration"), (int, float)):
            seconds += record["duration"]
            count += 1
        profiles.add(record.get("parameters", {}).get("profile", "quick"))
    if not count:
        return "quick", "The chapters of this build carry no record of their execution time."
    profile = " and ".join(sorted(profiles))
    minutes = f"{seconds / 60:.1f} minutes" if seconds >= 90 else f"{seconds:.0f} seconds"
    return profile, (
        f"This build executed its {count} chapters with the `{profile}` profile in "
        f"{minutes} of kernel time in all (papermill's record in each executed notebook; "
        "installing the dependencies on a clean machine takes longer than that)."
    )


def repository_parts(url: str) -> tuple[str, str]:
    """``(owner, name)`` of a ``https://github.com/OWNER/NAME`` repository URL."""
    prefix = "https://github.com/"
    rest = url.strip().removesuffix("/").removesuffix(".git")
    if not rest.startswith(prefix) or len(rest[len(prefix):].split("/")) != 2:
        raise ValueError(f"repository.url must look like {prefix}OWNER/NAME, got {url!r}")
    owner, name = rest[len(prefix):].split("/")
    return owner, name


def binder_url(binderhub: str, repository_url: str, branch: str, path: str | None = None) -> str:
    """The Binder link that builds ``repository_url`` at ``branch`` and opens ``path`` in
    JupyterLab (the repository's root when ``path`` is None)."""
    owner, name = repository_parts(repository_url)
    url = f"{binderhub.rstrip('/')}/v2/gh/{owner}/{name}/{branch}"
    return url + (f"?urlpath=lab/tree/{path}" if path else "")


def launch_target(pagename: str, srcdir: Path) -> str | None:
    """The repository path a chapter's launch button opens, or None for a page with none.

    ``book/chapters/NAME`` (executed, not committed) maps to ``notebooks/NAME.ipynb``, which
    the repository's ``postBuild`` makes on Binder from the committed ``notebooks/NAME.py``.
    """
    if not pagename.startswith(CHAPTER_DIR):
        return None
    stem = pagename[len(CHAPTER_DIR):]
    if not (srcdir / SOURCE_DIR / f"{stem}.py").is_file():
        return None
    return f"{SOURCE_DIR}{stem}.ipynb"


def _theme_options(config: Config) -> dict:
    return config.html_theme_options or {}


def _substitutions(app: Sphinx, config: Config) -> None:
    options = _theme_options(config)
    repo = options.get("repository_url", "")
    branch = options.get("repository_branch", "main")
    binderhub = options.get("launch_buttons", {}).get("binderhub_url", "")
    profile, timing = build_record(Path(app.srcdir) / CHAPTER_DIR)
    try:
        sentence, _ = headline(Path(app.srcdir) / RESULTS_DIR, profile)
    except (ValueError, json.JSONDecodeError) as error:
        logger.warning(f"headline result: {error}", type="mdl_book", subtype="headline")
        sentence = NOT_COMPUTED.format(profile=profile)
    subs = dict(config.myst_substitutions or {})
    subs["headline"] = sentence
    subs["build_timing"] = timing
    subs["repository_link"] = f"[{repo.removeprefix('https://')}]({repo})"
    subs["binder_link"] = (
        f"[Binder]({binder_url(binderhub, repo, branch)})" if binderhub else "Binder"
    )
    config.myst_substitutions = subs


def _retarget_launch_buttons(app: Sphinx, pagename: str, templatename: str, context: dict,
                             doctree: Any) -> None:
    """Point each chapter's launch buttons at ``notebooks/NAME.ipynb`` (see module docstring)."""
    groups = [b for b in context.get("header_buttons", []) if b.get("label") == "launch-buttons"]
    if not groups:
        return
    target = launch_target(pagename, Path(app.srcdir))
    if target is None:
        context["header_buttons"] = [b for b in context["header_buttons"] if b not in groups]
        return
    options = _theme_options(app.config)
    repo = options.get("repository_url", "")
    branch = options.get("repository_branch", "main")
    binderhub = options.get("launch_buttons", {}).get("binderhub_url", "")
    for group in groups:
        for button in group["buttons"]:
            if button.get("text") == "Binder":
                button["url"] = binder_url(binderhub, repo, branch, target)
            elif button.get("type") == "link":
                logger.warning(
                    f"{pagename}: launch button {button.get('text')!r} would open "
                    f"{CHAPTER_DIR}*.ipynb, which the repository does not hold; "
                    "only Binder is supported (see book/_ext/mdl_book.py)",
                    type="mdl_book", subtype="launch",
                )


def _drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict,
                            doctree: Any) -> None:
    """Keep one copy of each script. sphinx-thebe adds its inline configuration (``const
    THEBE_JS_URL = ...``) when the environment is read; Sphinx 7 then holds it twice, once with
    filename None and once with filename '', so its own de-duplication misses it, and the
    second copy throws "Identifier has already been declared" on every page."""
    if "script_files" not in context:
        return
    seen, kept = set(), []
    for script in context["script_files"]:
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


_PROSE_MEMBERS = ("attribute", "data", "property")
_stashed_docstrings: dict[str, list[str]] = {}


def _stash_attribute_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                               lines: list[str]) -> None:
    if what in _PROSE_MEMBERS:
        _stashed_docstrings[name] = list(lines)


def _restore_attribute_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                                 lines: list[str]) -> None:
    """Undo napoleon on attributes and constants. Their ``#:`` comments in mdl_utils are prose
    ("Part of every cache key: bump when ..."), which napoleon would split at the first colon
    into an invented type and a description. Their real types come from the annotations."""
    if what in _PROSE_MEMBERS and name in _stashed_docstrings:
        lines[:] = _stashed_docstrings.pop(name)


def _add_stylesheet(app: Sphinx, config: Config) -> None:
    static = (Path(__file__).resolve().parent.parent / "_static").as_posix()
    if static not in config.html_static_path:
        config.html_static_path = [*config.html_static_path, static]


def _resolve_type_alias(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Link a ``py:class`` reference that names a documented module-level alias (``py:data``),
    by its full name or, when exactly one alias has it, by its bare name (``Latents``)."""
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py" or node.get("reftype") not in {"class", "obj"}:
        return None
    target = node.get("reftarget", "")
    objects = env.get_domain("py").objects
    found = objects.get(target)
    if found is None and "." not in target:
        matches = [(name, obj) for name, obj in objects.items()
                   if name.startswith("mdl_utils.") and name.endswith("." + target) and obj.objtype == "data"]
        found = matches[0][1] if len(matches) == 1 else None
    if found is None or found.objtype != "data":
        return None
    return make_refnode(app.builder, node["refdoc"], found.docname, found.node_id, contnode, target)


def setup(app: Sphinx) -> dict:
    app.connect("missing-reference", _resolve_type_alias)
    app.connect("config-inited", _substitutions)
    app.connect("config-inited", _add_stylesheet)
    app.add_css_file("mdl_book.css")
    # Around sphinx.ext.napoleon's own handler, which runs at the default priority (500).
    app.connect("autodoc-process-docstring", _stash_attribute_docstring, priority=400)
    app.connect("autodoc-process-docstring", _restore_attribute_docstring, priority=600)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    # After sphinx-book-theme has built the buttons (its handler runs at priority 501).
    app.connect("html-page-context", _retarget_launch_buttons, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
