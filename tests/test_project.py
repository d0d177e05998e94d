"""Tests of the project's layout: pins agree, the book lists every chapter, and executed
chapters are in step with their Jupytext sources."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from mdl_utils.profiles import PROFILES, choose

REPO = Path(__file__).resolve().parents[1]
#: The five sections the book must open with, in order.
CORE_CHAPTERS = [
    "01_background",
    "02_two_part_code",
    "03_mnist_mdl_sweep",
    "04_feature_splitting",
    "05_hierarchical_codes",
]
#: Every chapter: one per Jupytext source in notebooks/.
CHAPTERS = sorted(p.stem for p in (REPO / "notebooks").glob("*.py"))


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_direct_dependency_is_pinned_exactly_and_matches_the_lock():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    lock = _lock()
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        assert sep, f"{requirement} is not an exact pin"
        assert lock.get(name.lower()) == version, f"{requirement} disagrees with requirements.lock"


def test_conda_environment_installs_python_311_and_the_lock():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.lock" in pip_section


def test_toc_lists_the_chapters_in_order_and_nothing_is_orphaned():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [entry["file"] for entry in toc["chapters"]]
    chapters = [f.removeprefix("book/chapters/") for f in files if f.startswith("book/chapters/")]
    assert chapters[: len(CORE_CHAPTERS)] == CORE_CHAPTERS
    assert chapters == CHAPTERS, "chapters must appear in the table of contents in file order"
    sources = sorted(p.stem for p in (REPO / "notebooks").glob("*.py"))
    assert sorted(chapters) == sources, "every notebook source must be a chapter, and vice versa"


def test_landing_page_lists_every_chapter_in_order_by_its_title():
    """book/index.md's numbered list under "The chapters" names each chapter, in the table of
    contents' order, by the title its source opens with, up to any colon (a chapter added to the book but not
    to the landing page fails here)."""
    text = (REPO / "book" / "index.md").read_text()
    section = text.split("## The chapters", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^(\d+)\. \*\*(.+?)\*\*", section, flags=re.M)
    assert [int(n) for n, _ in listed] == list(range(1, len(CHAPTERS) + 1)), listed
    for (_, name), stem in zip(listed, CHAPTERS):
        title = jupytext.read(REPO / "notebooks" / f"{stem}.py").cells[0].source.splitlines()[0]
        short = title.removeprefix("# ").split(":")[0]  # the part before a subtitle
        assert short.lower() == name.lower(), f"{stem}: titled {title!r}, listed as {name!r}"


def test_results_readme_describes_every_committed_results_folder():
    """results/README.md has an entry for each folder under results/full/ (a job added without
    one fails here)."""
    text = (REPO / "results" / "README.md").read_text()
    folders = sorted(p.name for p in (REPO / "results" / "full").iterdir() if p.is_dir())
    assert folders, "no committed results folders"
    missing = [name for name in folders if f"`full/{name}/`" not in text]
    assert not missing, f"results/README.md does not describe: {missing}"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_has_a_parameters_cell_with_profile(stem):
    notebook = jupytext.read(REPO / "notebooks" / f"{stem}.py")
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{stem} needs exactly one cell tagged 'parameters'"
    assert re.search(r'^profile\s*=\s*"quick"', tagged[0].source, flags=re.M)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")


@pytest.mark.parametrize("stem", CHAPTERS)
def test_setup_and_plotting_cells_are_collapsed_in_the_rendered_chapter(stem):
    """Readers read results: import/set-up cells and figure-drawing cells are tagged hide-input
    (code one click away), while cells whose output nbval checks stay visible."""
    notebook = jupytext.read(REPO / "notebooks" / f"{stem}.py")
    code = [c for c in notebook.cells if c.cell_type == "code"
            and "parameters" not in c.metadata.get("tags", [])]
    shown = [c.source.splitlines()[0] for c in code
             if (re.match(r"\s*(import|from) ", c.source) or "plots.figure(" in c.source
                 or "image_grid(" in c.source)
             and "NBVAL_CHECK_OUTPUT" not in c.source
             and "hide-input" not in c.metadata.get("tags", [])]
    assert not shown, f"{stem}: set-up or plotting cells not tagged hide-input: {shown}"
    assert any("hide-input" in c.metadata.get("tags", []) for c in code)


def _code_sources(notebook) -> list[str]:
    return [
        c.source.strip()
        for c in notebook.cells
        if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]


@pytest.mark.executed_chapters
@pytest.mark.parametrize("stem", CHAPTERS)
def test_executed_chapter_matches_its_source(stem):
    executed_path = REPO / "book" / "chapters" / f"{stem}.ipynb"
    if not executed_path.exists():
        pytest.skip("chapter not executed yet (make chapters)")
    source = jupytext.read(REPO / "notebooks" / f"{stem}.py")
    executed = nbformat.read(executed_path, as_version=4)
    assert _code_sources(executed) == _code_sources(source), (
        f"book/chapters/{stem}.ipynb is stale: re-run `make chapters`"
    )
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and re.search(r"profile = \"(quick|full)\"", injected[0].source)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the pin applies on x86-64 only")
def test_make_pins_torchs_cpu_kernels_to_avx2_and_torch_obeys():
    """The chapters and their references must compute the same digits on AVX2-only and AVX-512
    machines, so every make target runs torch with its CPU kernels pinned to AVX2."""
    exported = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "JOBS=1",
            "--eval",
            "show-pin: ; @echo $$ATEN_CPU_CAPABILITY",
            "show-pin",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"},
    ).stdout.strip()
    assert exported == "avx2"
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX2")
    used = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ATEN_CPU_CAPABILITY": exported},
    ).stdout.strip()
    assert used == "AVX2"


def test_unknown_profile_is_a_clear_error():
    assert choose("quick", quick=1, full=2) == 1 and choose("full", quick=1, full=2) == 2
    for profile in PROFILES:  # every advertised profile is one that choose() accepts
        choose(profile, quick=1, full=2)
    with pytest.raises(ValueError, match="unknown profile 'huge'.*quick, full"):
        choose("huge", quick=1, full=2)


def test_job_arguments_fill_the_output_folder_from_the_profile(monkeypatch, tmp_path):
    import torch

    from mdl_utils.jobs import job_parser, parse_job

    monkeypatch.setenv("MDL_RESULTS_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        args = parse_job(job_parser(prog="job", doc="A job.", out_subdir="scan"), ["--profile", "quick"])
        assert args.out == tmp_path / "quick" / "scan" and args.threads == 1 and not args.no_progress
        assert torch.get_num_threads() == 1  # applied, so sums do not depend on the core count
        parser = job_parser(prog="job", doc="A job.", out_subdir="scan", default_profile="quick")
        parser.add_argument("--sweep")
        args = parse_job(parser, ["--out", "x", "--sweep", "y", "--threads", "2"])
        assert (args.profile, args.out, args.sweep, args.threads) == ("quick", Path("x"), "y", 2)
        for bad in (["--profile", "huge"], ["--threads", "0"], ["--budget-hours", "-1"]):
            with pytest.raises(SystemExit):
                parse_job(job_parser(prog="job", doc="A job.", out_subdir="scan"), bad)
    finally:
        torch.set_num_threads(threads)


def test_jobs_exit_codes_and_the_summary_only_path(tmp_path, capsys):
    import json

    from mdl_utils.jobs import job_parser, parse_job, run_job

    parser = job_parser(prog="job", doc="A job.", out_subdir="scan")
    trained = []

    def train(executor):
        trained.append(type(executor).__name__)
        return {"n": 1}

    def failing():
        raise FileNotFoundError("no rows in x")

    args = parse_job(parser, ["--out", str(tmp_path), "--threads", "1"])
    assert run_job(args, train=train, summarise=failing, report=lambda p: f"done {p['n']}") == 0
    assert trained == ["SerialExecutor"] and capsys.readouterr().out == "done 1\n"
    args = parse_job(parser, ["--out", str(tmp_path), "--summary-only"])
    assert run_job(args, train=train, summarise=failing, report=str) == 1
    assert "error: no rows in x" in capsys.readouterr().err and trained == ["SerialExecutor"]
    path = tmp_path / "summary.json"
    assert run_job(args, train=train, summarise=lambda: {"n": 2}, report=str, summary_path=path) == 0
    written = json.loads(path.read_text())
    assert written["n"] == 2 and written["stopped_by_budget"] is False and "code_version" in written
    # A later --summary-only keeps the record of the run that trained the rows: the file is the
    # training run's, so its machine, date, executor and budget stop must not be replaced.
    trained_by = {"machine": "the training machine", "date": "then", "code_version": "abc1234",
                  "executor": "2 local workers", "stopped_by_budget": True}
    path.write_text(json.dumps({"n": 2, **trained_by}))
    assert run_job(args, train=train, summarise=lambda: {"n": 3}, report=str, summary_path=path) == 0
    assert json.loads(path.read_text()) == {"n": 3, **trained_by}
    path.write_text("{not json")
    assert run_job(args, train=train, summarise=lambda: {"n": 3}, report=str, summary_path=path) == 1
    assert f"{path} is not valid JSON" in capsys.readouterr().err
    path.write_text("[1, 2]")
    assert run_job(args, train=train, summarise=lambda: {"n": 3}, report=str, summary_path=path) == 1
    assert f"{path} holds a JSON list, not an object" in capsys.readouterr().err
    args = parse_job(parser, ["--out", str(tmp_path), "--workers", "0"])
    assert run_job(args, train=train, summarise=failing, report=str) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_job_results_round_trip_and_bad_files_say_what_is_wrong(tmp_path):
    import json
    import time

    from mdl_utils.profiles import provenance, read_results, write_results

    started = time.time() - 2.0
    payload = {"format_version": 3, "rows": [1, 2], **provenance(started)}
    write_results(tmp_path / "sub" / "out.json", payload)  # creates the folder
    assert read_results(tmp_path / "sub" / "out.json", version=3, how_to_make="x") == payload
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["out.json"]  # no temporary file left
    assert payload["wall_time_s"] >= 2.0 and payload["date"].endswith("UTC")
    assert re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?|unknown", payload["code_version"])
    with pytest.raises(FileNotFoundError, match="run the job first"):
        read_results(tmp_path / "missing.json", version=3, how_to_make="run the job first")
    (tmp_path / "torn.json").write_text('{"format_version": 3, "rows": [1')  # a half-written file
    with pytest.raises(ValueError, match="torn.json is not valid JSON"):
        read_results(tmp_path / "torn.json", version=3, how_to_make="x")
    (tmp_path / "old.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="results format 1, this code reads 3"):
        read_results(tmp_path / "old.json", version=3, how_to_make="x")


def test_pages_workflow_parses_and_builds_with_the_makefiles_command():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    build = workflow["jobs"]["build"]
    commands = [step["run"] for step in build["steps"] if "run" in step]
    assert commands == ["make book PROFILE=full"]
    # The Makefile has that target and writes the HTML where the workflow uploads it from.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^book:", makefile, re.M) and "jupyter-book build ." in makefile
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert workflow["jobs"]["deploy"]["needs"] == "build"
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
