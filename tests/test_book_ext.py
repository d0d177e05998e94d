"""Tests of book/_ext/mdl_book.py (the landing page's headline, launch-button targets, links
derived from repository.url) and of the book configuration that keeps the site offline."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_extension():
    spec = importlib.util.spec_from_file_location("mdl_book", REPO / "book" / "_ext" / "mdl_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mdl_book = _load_extension()


def test_headline_says_not_yet_computed_without_committed_results(tmp_path):
    sentence, found = mdl_book.headline(tmp_path / "results" / "full", profile="quick")
    assert not found
    assert sentence.startswith("**Not yet computed.**") and "`quick`" in sentence
    assert not re.search(r"\d", sentence), "no number may be shown when nothing was computed"


def _study_summary(resolved, tie, complete):
    from dataclasses import asdict

    from mdl_utils.study_plan import study_settings

    seed = {"complete": True, "n_trained": 4, "n_at_epoch_cap": 0, "reachable": False}
    return {
        "format_version": 2, "settings": asdict(study_settings("quick")), "epsilon": 0.015,
        "n_saes_trained": 40, "training_time_s": 100.0, "devices": ["cpu"],
        "widths": [{"width": w, "seeds": {"0": seed}} for w in (64, 128, 256)],
        "dl_star": [{"width": 64, "mean": 90.0, "n_seeds": 1, "seed_std": None, "boot_ci": [89.0, 91.0],
                     "dl_by_seed": {"0": 90.0}},
                    {"width": 128, "mean": 70.25, "n_seeds": 3, "seed_std": 0.5, "boot_ci": [69.5, 71.0],
                     "dl_by_seed": {"0": 70.0, "1": 70.25, "2": 70.5}},
                    {"width": 256, "mean": 71.0, "n_seeds": 2, "seed_std": 0.1, "boot_ci": None,
                     "dl_by_seed": {"0": 71.0, "1": 71.0}}],
        "resolution": {"optimum": 128, "resolved": resolved, "tie_set": tie, "margins": {},
                       "pooled_rel_seed_std": None, "z": 2.0},
        "rereads": {}, "points": {}, "remaining": [] if complete else [[1024, 0], [128, 1]],
        "complete": complete, "machine": "2-core CPU", "date": "2026-12-02", "code_version": "abc",
    }


def test_headline_from_the_study_states_the_resolution_and_what_remains(tmp_path):
    path = tmp_path / "mnist-mdl" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_study_summary(False, [128, 256], False)))
    # Other results files beside it are not read.
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": [{"width": 16, "dl_bits": 1.0}]}))
    sentence, found = mdl_book.headline(tmp_path)
    assert found and "**70.2 bits per test digit** at width 128" in sentence
    assert "**not resolved**: it cannot be told apart from width(s) 256" in sentence
    assert "69.5 to 71.0" in sentence and "3 seed(s)" in sentence
    assert "3 (width, seed) searches so far, 2 remain" in sentence
    assert "16" not in sentence.split("(Read from")[0].replace("2026-12-02", "")
    provisional = _study_summary(False, [128], False)
    provisional["resolution"]["provisional"] = True
    path.write_text(json.dumps(provisional))
    sentence, _ = mdl_book.headline(tmp_path)
    assert "**provisional**" in sentence and "resolved: width" not in sentence
    path.write_text(json.dumps(_study_summary(True, [128], True)))
    sentence, _ = mdl_book.headline(tmp_path)
    assert "**resolved: width 128**" in sentence and "the study is complete" in sentence
    assert "not resolved" not in sentence
    # Resolved by its margins, but nothing wider than the optimum has a DL*: the same rule as
    # the chapters (mdl_utils.resolution.judge_optimum) says not resolved.
    open_wide = _study_summary(True, [128], True)
    open_wide["dl_star"] = open_wide["dl_star"][:2]
    path.write_text(json.dumps(open_wide))
    sentence, _ = mdl_book.headline(tmp_path)
    assert "**not resolved**: the minimum is not bracketed, since no wider width has a DL*" in sentence


def test_headline_refuses_a_study_summary_in_another_format(tmp_path):
    path = tmp_path / "mnist-mdl" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**_study_summary(True, [128], True), "format_version": 1}))
    with pytest.raises(ValueError, match="results format 1"):
        mdl_book.headline(tmp_path)
    # Results other than the study's do not make a headline.
    path.unlink()
    (tmp_path / "meta.json").write_text(json.dumps({"machine": "x", "rows": [{"width": 8, "dl_bits": 3.0}]}))
    assert mdl_book.headline(tmp_path)[1] is False
    broken = _study_summary(True, [128], True)
    del broken["dl_star"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="is not a study summary.*dl_star"):
        mdl_book.headline(tmp_path)


def test_build_record_sums_papermill_durations_and_names_the_profile(tmp_path):
    for name, seconds in [("a", 40.0), ("b", 80.0)]:
        notebook = {"metadata": {"papermill": {"duration": seconds, "parameters": {"profile": "full"}}}}
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(notebook))
    profile, sentence = mdl_book.build_record(tmp_path)
    assert profile == "full"
    assert "2 chapters" in sentence and "`full`" in sentence and "2.0 minutes" in sentence


def test_launch_target_maps_executed_chapters_to_their_committed_sources(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_background.py").write_text("# %%\n")
    assert mdl_book.launch_target("book/chapters/01_background", tmp_path) == "notebooks/01_background.ipynb"
    assert mdl_book.launch_target("book/chapters/99_missing", tmp_path) is None
    assert mdl_book.launch_target("book/index", tmp_path) is None


def test_binder_url_is_derived_from_the_repository_url():
    url = mdl_book.binder_url("https://mybinder.org/", "https://github.com/someone/fork.git", "dev",
                              "notebooks/02_two_part_code.ipynb")
    assert url == ("https://mybinder.org/v2/gh/someone/fork/dev"
                   "?urlpath=lab/tree/notebooks/02_two_part_code.ipynb")
    with pytest.raises(ValueError, match="OWNER/NAME"):
        mdl_book.repository_parts("https://gitlab.com/someone/fork")


def _config():
    return yaml.safe_load((REPO / "_config.yml").read_text())


def test_repository_url_is_set_once_and_nothing_else_names_the_repository():
    config = _config()
    url = config["repository"]["url"]
    owner, name = mdl_book.repository_parts(url)
    assert (REPO / "_config.yml").read_text().count(f"{owner}/{name}") == 1
    for page in (REPO / "book").glob("*.md"):
        assert "github.com" not in page.read_text(), f"{page.name} must use {{{{ repository_link }}}}"


def test_math_is_served_from_the_site_and_no_launcher_loads_code_from_a_cdn():
    config = _config()
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    mathjax_path = config["sphinx"]["config"]["mathjax_path"]
    assert "://" not in mathjax_path and mathjax_path.startswith("mathjax/")
    assert config["launch_buttons"]["thebe"] is False
    assert not config["launch_buttons"].get("colab_url")
    assert "jupytext --to ipynb notebooks/*.py" in (REPO / "postBuild").read_text()


def test_api_page_documents_every_committed_module_of_mdl_utils():
    try:
        tracked = subprocess.run(["git", "ls-files", "mdl_utils/*.py"], cwd=REPO, check=True,
                                 capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    modules = {Path(p).stem for p in tracked} - {"__init__", "__main__"}
    api = (REPO / "book" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. automodule:: mdl_utils\.(\w+)$", api, flags=re.M))
    assert documented <= {p.stem for p in (REPO / "mdl_utils").glob("*.py")}
    missing = sorted(modules - documented)
    assert not missing, f"add these modules to book/api.md (an automodule block each): {missing}"


def test_class_references_to_documented_type_aliases_resolve_and_others_stay_missing(monkeypatch):
    from types import SimpleNamespace

    import sphinx.util.nodes

    data = SimpleNamespace(objtype="data", docname="book/api", node_id="mdl_utils.array_types.Latents")
    cls = SimpleNamespace(objtype="class", docname="book/api", node_id="mdl_utils.sae.BatchTopKSAE")
    objects = {"mdl_utils.array_types.Latents": data, "mdl_utils.sae.BatchTopKSAE": cls,
               "mdl_utils.a.Twice": data, "mdl_utils.b.Twice": data}
    env = SimpleNamespace(get_domain=lambda name: SimpleNamespace(objects=objects))
    made = []
    monkeypatch.setattr(sphinx.util.nodes, "make_refnode",
                        lambda builder, fromdoc, todoc, target, child, title: made.append((todoc, target)) or "ref")
    app = SimpleNamespace(builder=None)

    def resolve(target, reftype="class", domain="py"):
        node = {"refdomain": domain, "reftype": reftype, "reftarget": target, "refdoc": "book/api"}
        return mdl_book._resolve_type_alias(app, env, node, None)

    assert resolve("mdl_utils.array_types.Latents") == "ref"
    assert resolve("Latents") == "ref"  # a bare name, when one alias has it
    assert made == [("book/api", "mdl_utils.array_types.Latents")] * 2
    assert resolve("Twice") is None  # ambiguous: left to the strict build to report
    assert resolve("mdl_utils.sae.BatchTopKSAE") is None  # a class Sphinx failed on: not ours to fix
    assert resolve("Unknown") is None and resolve("Latents", reftype="func") is None
    assert resolve("Latents", domain="std") is None
