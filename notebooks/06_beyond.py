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
# # Beyond the paper
#
# To keep the recipe simple, {cite:t}`ayonrinde2024mdl` make three choices that their
# discussion leaves open: every feature shares one precision, SAEs are compared at one
# tolerance $\epsilon$, and that tolerance is fixed in advance. This chapter relaxes each,
# using chapter 3's protocol throughout, so that a difference is only reported when it stands
# out of the noise the protocol measures:
#
# 1. **Per-feature precision.** Can giving each feature its own number of bits shorten the
#    description at the *same* test MSE as one shared precision?
# 2. **Rate-distortion curves.** Each SAE's DL falls as the tolerance loosens. If the curves
#    of two widths cross, "which SAE is better" depends on the tolerance. We count a crossing
#    only when each width is shorter than the other, by more than the seed spread, on its
#    side of it.
# 3. **The optimum against $\epsilon$.** Chapter 3's study rerun at several tolerances: how
#    do the optimal width, its L0 and its DL move, and does a power law describe it?
#
# Everything here uses chapter 3's converged SAEs and its rules: the continuous precision that
# puts each SAE's quantised MSE *at* the tolerance, DL minimised over k at each width, several
# seeds, and the rule that an optimum is resolved only when it beats every other width by
# more than the combined uncertainty. The library parts are {py:mod}`mdl_utils.epsilon_scan`
# and {py:mod}`mdl_utils.allocation`. The `full` profile reads
# `results/full/epsilon-scan/scan.json`, written from the committed rows and SAEs by
# `python -m mdl_utils epsilon-scan --profile full` (resumable, like chapter 3's study). The
# `quick` profile reruns it at two tolerances on chapter 3's quick study.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"
# With profile="full": run (or resume) the scan instead of reading the committed summary.
retrain = False

# %% tags=["hide-input"]
import collections

import numpy as np
import torch

from IPython.display import display

from mdl_utils import plots
from mdl_utils.data import load_mnist
from mdl_utils.epsilon_scan import (
    EPSILONS, EXTEND_DOWN_TO, QUICK_EPSILONS, QUICK_SEEDS, REPLICATE_WITHIN, STOP_WIDENING, load_scan,
    run_epsilon_scan,
    study_dir_for,
)
from mdl_utils.protocol import sparse_latents
from mdl_utils.study_store import load_selected_sae, load_study
from mdl_utils.profiles import cache_dir, choose, results_dir
from mdl_utils.study_plan import study_settings
from mdl_utils.tables import Table

torch.set_num_threads(1)
plots.use_style()
base = study_settings(profile)
scan_dir = choose(profile, quick=cache_dir() / "epsilon-scan" / "quick", full=results_dir() / "full" / "epsilon-scan")
reference_dir = choose(profile, quick=cache_dir() / "mnist-mdl" / "quick", full=results_dir() / "full" / "mnist-mdl")
if profile == "full" and not retrain:
    scan = load_scan(scan_dir)
else:
    scan = run_epsilon_scan(
        base,
        scan_dir,
        epsilons=choose(profile, quick=QUICK_EPSILONS, full=EPSILONS),
        reference_dir=reference_dir,
        seeds=choose(profile, quick=QUICK_SEEDS, full=None),
        progress=False,
    )
eps = scan.reference_epsilon
allocs = scan.allocations
curves = scan.curves
entries = scan.entries

# %% [markdown]
# ## 1. One precision per feature, compared at equal loss
#
# Chapter 2's code gives every feature the same precision. Some features are close to on/off
# switches and others carry a graded intensity, so a precision per feature might say the same
# thing in fewer bits. {py:func}`mdl_utils.allocation.allocate_bits` finds one greedily: starting from
# generous whole-bit precisions (and, separately, from the best uniform whole-bit precision),
# it keeps taking bits from the feature whose loss raises the MSE least per bit of DL saved,
# until no removal fits under $\epsilon$. The greedy only removes bits, so it can stop where
# one feature finer and another coarser would do better;
# {py:func}`mdl_utils.allocation_checks.swap_refine` then tries exactly those swaps, with the MSE
# change of every candidate computed exactly.
#
# The greedy ends a little below $\epsilon$, and a uniform code with whole bits ends
# somewhere else again. To compare like with like, the uniform code is measured at the
# continuous precision that puts its MSE at exactly the MSE the per-feature code reached
# (within $10^{-4}$ relative; the line under the table gives the largest gap). The saving below is then the DL difference at equal loss. The
# per-feature code must also tell the decoder each feature's precision; that table, spread
# over the test digits, is shown beside and not included in the saving.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for a in sorted(allocs, key=lambda a: (a.width, a.seed)):
    g, u, s = a.greedy, a.uniform_at_greedy_mse, a.swaps
    rows.append([a.width, a.seed, f"{a.uniform_at_epsilon.dl_bits:.2f}", f"{g.mse:.6f}",
                 f"{u.dl_bits:.2f}", f"{g.entropy_bits:.2f}", f"{100 * a.greedy_saving:+.2f}%",
                 s.n_swaps, f"{s.gain_bits:.3f}", f"{100 * a.swap_saving:+.2f}%",
                 f"{g.table_bits_per_sample:.3f}"])
display(Table(
    ["width", "seed", "uniform DL at eps", "per-feature MSE", "uniform DL at that MSE", "per-feature DL",
     "saving", "swaps", "swap gain (bits)", "saving after swaps", "table (bits)"],
    rows, caption=f"Per-feature against uniform precision at equal MSE (epsilon = {eps}; DL in bits per test digit)"))
gaps = [1 - u.mse / g.mse for a in allocs
        for u, g in ((a.uniform_at_greedy_mse, a.greedy), (a.uniform_at_swap_mse, a.swaps))]
missed = sum(u.status != "in_band" for a in allocs for u in (a.uniform_at_greedy_mse, a.uniform_at_swap_mse))
if allocs:
    print(f"equal loss: the uniform code's MSE lies at most {max(gaps):.1e} (relative) below the per-feature "
          f"code's; {missed} of {len(gaps)} readings could not reach the 1e-4 band (their quantised MSE "
          "jumps across it), each leaving the uniform code a little more precise than needed")

# %%
# NBVAL_CHECK_OUTPUT
by_width = {}
for a in allocs:
    by_width.setdefault(a.width, []).append(100 * a.swap_saving)
for w, v in sorted(by_width.items()):
    spread = f" +/- {np.std(v, ddof=1):.2f} (seed std, {len(v)} seeds)" if len(v) > 1 else " (1 seed)"
    print(f"width {w:5d}: saving at equal MSE {np.mean(v):+.2f}%{spread}")
gains = [a.swaps.gain_bits for a in allocs]
rel = [a.swaps.gain_bits / a.greedy.entropy_bits for a in allocs]
if allocs:
    print(f"swap move: at most {max(gains):.3f} bits per digit over the greedy ({100 * max(rel):.2f}% of its DL); "
          f"{sum(a.swaps.n_swaps > 0 for a in allocs)} of {len(allocs)} SAEs changed")
    verdict = {w: ("saves" if np.mean(v) - 2 * (np.std(v, ddof=1) if len(v) > 1 else 0) > 0 else
                   "costs" if np.mean(v) + 2 * (np.std(v, ddof=1) if len(v) > 1 else 0) < 0 else "unresolved")
               for w, v in by_width.items()}
    print("per-feature whole bits against uniform continuous precision, by width (mean +/- 2 seed std): "
          + ", ".join(f"{w}: {v}" for w, v in sorted(verdict.items())))

# %% [markdown]
# A negative saving means the per-feature code is *longer* than the uniform one at the same
# MSE. That is possible here because the two use different scales: the per-feature code gives
# each feature a whole number of bits, while the uniform code's precision is continuous and
# can stop exactly where the loss allows. Whole bits per feature gain flexibility across
# features but lose it within each; which effect wins is a property of the width, and the
# verdict line says which, or that the seeds cannot tell.
#
# ## 2. Rate-distortion curves on the continuous scale
#
# Each stored SAE of chapter 3 (the DL-optimal SAE of every width and seed) is reread at a
# range of tolerances around $\epsilon$, with its continuous precision found afresh at each.
# The SAEs are not retrained, so this asks how a *fixed* dictionary trades bits for loss.
# Curves are drawn as the seed mean with the seed spread as error bars.

# %% tags=["hide-input"]
fig, axes = plots.figure(width=7.5, height=4.5)
ax = axes[0, 0]
curve_widths = sorted({c.width for c in curves})
for i, w in enumerate(curve_widths):
    mine = [c for c in curves if c.width == w]
    tol = np.array(mine[0].tolerances)
    dl = np.array([[np.nan if v is None else v for v in c.dl_bits] for c in mine], dtype=float)
    ok = ~np.isnan(dl).any(axis=0)
    err = dl[:, ok].std(axis=0, ddof=1) if len(mine) > 1 else None
    ax.errorbar(tol[ok], dl[:, ok].mean(axis=0), yerr=err, fmt="o-", ms=3, capsize=2,
                color=plots.COLORS[i % len(plots.COLORS)], label=f"width {w} ({len(mine)} seeds)")
ax.axvline(eps, color="grey", ls="--", label=f"chapter 3's epsilon = {eps}")
ax.set_xscale("log")
ax.legend(fontsize=8)
plots.label(ax, title="DL of each width's selected SAEs as the tolerance varies",
            xlabel="tolerance (test MSE per pixel, log scale)", ylabel="DL (bits per test digit)")

# %% [markdown]
# These are *fixed* SAEs, each chosen (its k) to be as short as possible at $\epsilon$. Read
# at a tighter tolerance, an SAE is pushed towards its unquantised MSE, where the precision it
# needs, and so its DL, climbs steeply; how close each SAE sits to that wall depends on where
# its search over k stopped. A crossing just below $\epsilon$ therefore says as much about the
# selection as about the dictionaries. At looser tolerances every SAE has room to spare, and
# a crossing there is a statement about the dictionaries themselves.
#
# At each tolerance, the difference of two widths' seed-mean DLs is compared with the
# half-width of its 95% t interval over seeds (with three seeds, 4.3 standard errors rather
# than the normal 2). A crossing *survives* when one width is shorter by more than that
# at one tolerance and the other width at a later one; crossings of the mean curves that do
# not survive are listed as "raw" (what one seed per width would have shown).

# %%
# NBVAL_CHECK_OUTPUT
pairs = scan.crossings
raw = [p for p in pairs if p.raw_crossings]
kept = [p for p in pairs if p.crossings]
print(f"{len(pairs)} pairs of widths; mean curves cross for {len(raw)}; crossings that survive the seed spread: {len(kept)}")
for p in raw:
    status = "survives" if p.crossings else "inside the seed spread"
    where = p.crossings or p.raw_crossings
    print(f"  widths {p.widths[0]} and {p.widths[1]}: between tolerances "
          + "; ".join(f"{lo:.5f} and {hi:.5f}" for lo, hi in where) + f" ({status})")
print("does 'which SAE is better' depend on the tolerance (within the range read)? "
      + ("yes, for " + ", ".join(f"{p.widths[0]} vs {p.widths[1]}" for p in kept) if kept else
         "not shown: no crossing survives the seed spread"))

# %% [markdown]
# ## 3. The optimum as the tolerance changes
#
# Here the SAEs are retrained: chapter 3's whole study (searching k at every width, fill-in
# widths around the optimum, seeds) is run again with only $\epsilon$ changed. Loose tolerances
# need fewer than one active feature per digit. BatchTopK's k is an average over the batch
# (it keeps the $\mathrm{round}(kB)$ largest activations of a batch of $B$ digits), so k below
# 1 is meaningful, and the search may go down to $k = 1/16$. SAEs whose training configuration
# recurs at several tolerances are trained once, and the study at chapter 3's tolerance is
# chapter 3's study itself.
#
# Two rules are added at the other tolerances. The first keeps the scan within reach of a CPU:
# the doubling widths are searched narrowest first, and once two consecutive ones come out longer
# than the best narrower width by more than a fixed fraction (printed below), no wider width is
# trained ({py:func}`mdl_utils.study_plan.doubling_widths`). The fraction was fixed from
# chapter 3 alone, before any SAE of the scan was trained: there DL* rises at every doubling
# past the optimum, the seeds differ by a few per cent at most, and the two widest
# dictionaries took most of the training time. An optimum is therefore resolved *among the
# widths searched*; the widths the rule left out are listed with each tolerance.
#
# The second concerns the other end: a loose tolerance can put the optimum below the grid's
# narrowest width, where it cannot be resolved. So when every planned width has
# its first seed's search finished and the narrowest of them is that seed's optimum, half that
# width is searched as well, and so on down to a floor (printed below;
# {py:func}`mdl_utils.study_plan.narrower_widths`). This rule was added during the scan, when
# at the loosest tolerance only the grid's narrowest width had a finished search and no wider
# one had been read. "At the grid edge" in the table means the optimum is the narrowest or widest
# width searched (that reaches the tolerance).
#
# The third decides where the further seeds go. They search only the widths whose first-seed
# DL* is within the same fraction of the best first-seed DL*; the other widths keep one seed,
# and when the optimum is compared with them they borrow the relative seed spread pooled over
# the widths that have several ({py:func}`mdl_utils.study_plan.widths_one_seed`). This rule
# too was added during the scan, for cost, after the first seed had finished every planned
# width at every tolerance, so it was chosen with those curves in view; it changes which widths
# get more seeds, not how the optimum is read. Chapter 3, where every width has every seed,
# measures what it could miss: how far the first seed can sit above the best of the others
# (printed below, beside each single-seed width's distance from the best).

# %%
print(f"width rule: stop after two consecutive doubling widths more than {STOP_WIDENING:.0%} "
      "longer than the best narrower one (tolerances other than chapter 3's)")
print(f"narrow end: halve the narrowest width while it is the optimum, down to width {EXTEND_DOWN_TO}")
print(f"further seeds: only at widths whose first-seed DL* is within {REPLICATE_WITHIN:.0%} of the best "
      "(tolerances other than chapter 3's)")
first = base.seeds[0]
ref_entry = next(e for e in entries if np.isclose(e.epsilon, eps))
offsets = {d.width: d.dl_by_seed[first] / min(v for s, v in d.dl_by_seed.items() if s != first) - 1
           for d in ref_entry.dl_star if first in d.dl_by_seed and len(d.dl_by_seed) > 1}
if offsets:
    w_max = max(offsets, key=lambda w: offsets[w])
    print(f"  chapter 3 (epsilon {eps:g}): the first seed's DL* is at most {offsets[w_max]:+.1%} relative to the best other "
          f"seed's (width {w_max}; {len(offsets)} widths with several seeds)")
else:
    print(f"  chapter 3 (epsilon {eps:g}): no width has several seeds here, so that offset is not measured")
for e in entries:
    # A width can train before the rule fires (it ran ahead of a narrower search): it stays in
    # the table with its first seed's DL*, but no further seed trains it.
    trained = {d.width for d in e.dl_star}
    left = ", ".join(f"{w} (trained before the rule fired; first seed only)" if w in trained else str(w)
                     for w in e.widths_not_searched) or "none"
    below = ", ".join(str(w) for w in e.widths_below_grid) or "none"
    print(f"  epsilon {e.epsilon:g}: widths ruled out: {left}; widths added below the grid: {below}")
    dl0 = {d.width: d.dl_by_seed[first] for d in e.dl_star if first in d.dl_by_seed}
    if e.widths_one_seed:
        print("    one seed only (first-seed DL* relative to the best first-seed DL*): "
              + ", ".join(f"{w} ({dl0[w] / min(dl0.values()) - 1:+.1%})" for w in e.widths_one_seed))
    if e.widths_capped:
        print("    DL* only an upper bound (a k search used up its trainings with DL still falling): "
              + ", ".join(str(w) for w in e.widths_capped))

# %% [markdown]
# The table puts each tolerance beside the variance of the test digits. An "SAE" that answered
# the mean digit every time would reach an MSE equal to that variance, so a tolerance at a large
# share of it asks for little more than a rough sketch of each digit: compare the optimal
# widths and L0 at the two ends with that in mind.

# %%
# NBVAL_CHECK_OUTPUT
# Each tolerance as a fraction of the test digits' variance (per pixel, mean over pixels): the
# MSE an SAE that always answered the mean digit would reach.
variance = float(load_mnist("test")[0][: base.n_test].var(axis=0).mean())
print(f"variance of the test digits: {variance:.4f} per pixel; the tolerances are "
      + ", ".join(f"{e.epsilon / variance:.1%}" for e in entries) + " of it")
table = []
for e in entries:
    o = e.optimum
    share = f"{e.epsilon / variance:.1%}"
    if o is None:
        table.append([f"{e.epsilon:g}", share, e.n_saes_trained, e.state, None, None, None, None, None])
        continue
    verdict = o.verdict.replace("provisional", "provisional (study unfinished)")
    spread = "" if o.seed_std is None else f" +/- {o.seed_std:.2f}"
    table.append([f"{e.epsilon:g}", share, e.n_saes_trained, e.state, o.width, verdict,
                  f"{o.dl_bits:.2f}{spread}", f"{o.l0:.2f}", "yes" if e.at_edge else "no"])
display(Table(["epsilon", "of the variance", "SAEs trained", "study", "optimal width", "verdict",
               "DL* (bits, mean +/- seed std)", "L0 at the optimum", "at the grid edge"], table,
              caption="The epsilon-MDL optimum at each tolerance"))

# %% [markdown]
# L0 is an average over digits, and BatchTopK lets the count differ from digit to digit. How
# the selected SAEs meet a loose tolerance shows in the spread of that count: below, each
# tolerance's optimal width, its first seed's stored SAE, and the test digits by number of
# active features. A digit with none is reconstructed as the decoder's bias alone, one learned
# image shared by every digit, and its code names no feature.

# %%
# NBVAL_CHECK_OUTPUT
x_test = load_mnist("test")[0][: base.n_test]
seed0 = base.seeds[0]
table = []
for e in entries:
    if e.optimum is None:
        table.append([f"{e.epsilon:g}", None, None, None, None, None, "no optimum yet"])
        continue
    try:
        sae = load_selected_sae(study_dir_for(scan_dir, e.epsilon, base, reference_dir), e.optimum.width, seed0)
    except FileNotFoundError:
        # Not yet stored (its search is unfinished) or over the repository's file limit.
        table.append([f"{e.epsilon:g}", e.optimum.width, None, None, None, None, "SAE not stored here"])
        continue
    active = np.diff(sparse_latents(sae, x_test).indptr)
    table.append([f"{e.epsilon:g}", e.optimum.width, f"{sae.k:g}", f"{active.mean():.2f}",
                  f"{np.mean(active == 0):.1%}", int(active.max()), ""])
display(Table(["epsilon", "optimal width", f"k (seed {seed0})", "mean active features per digit",
               "digits with none active", "most active in one digit", "note"], table,
              caption=f"How the optimal SAE (seed {seed0}) spends its features over the {len(x_test)} test digits"))

# %% tags=["hide-input"]
fig, axes = plots.figure(ncols=3, width=12.0, height=3.8)
panels = [("width", "Optimal width", "optimal width (features)"),
          ("l0", "L0 at the optimum", "L0 (active features per digit)"),
          ("dl_bits", "DL at the optimum", "DL (bits per test digit)")]
fits = scan.fits
seeds_seen = sorted({s for e in entries for s in e.seed_optima}, key=int)
for ax, (name, title, ylabel) in zip(axes[0], panels):
    for i, seed in enumerate(seeds_seen):
        pts = [(e.epsilon, e.seed_optima[seed].value(name)) for e in entries if seed in e.seed_optima]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "o", color=plots.COLORS[i % len(plots.COLORS)], label=f"seed {seed}")
    f = fits[name]
    used = [e.epsilon for e in entries if e.seed_optima]
    if f.mean is not None and len(used) >= 2:
        # Drawn through the geometric mean of all the seeds' optima, with the mean exponent.
        ys = [e.seed_optima[s].value(name) for e in entries for s in e.seed_optima]
        xs = [e.epsilon for e in entries for s in e.seed_optima]
        c = np.exp(np.mean(np.log(ys)) - f.mean * np.mean(np.log(xs)))
        grid = np.geomspace(min(used), max(used), 50)
        ax.plot(grid, c * grid ** f.mean, "-", color="grey", label=f"mean exponent {f.mean:+.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    plots.label(ax, title=f"{title} against epsilon",
                xlabel="tolerance epsilon (test MSE per pixel)", ylabel=ylabel)

# %% [markdown]
# Each seed's own optimum at each tolerance gives one point per seed. A power law
# $y = c\,\epsilon^{\alpha}$ is fitted to each seed's points by least squares in log-log, and
# the exponent's 95% interval is the t interval over the seeds' exponents (with one seed,
# the least-squares standard error of its fit). We call a law **supported** only when that
# interval excludes zero *and* at every tolerance used the study is complete, its optimum is
# resolved and not at the edge of the width grid, and no width's DL* is only an upper bound (a
# $k$ search that used up its trainings with DL still falling, which the rules listing above
# would name). Otherwise the line below says why not.

# %%
# NBVAL_CHECK_OUTPUT
for name, f in fits.items():
    interval = "no interval" if f.low is None or f.high is None else f"95% interval [{f.low:+.2f}, {f.high:+.2f}]"
    alpha = "no fit" if f.mean is None else f"exponent {f.mean:+.2f}"
    print(f"{name:>8s}: {alpha}, {interval} ({f.method}, {len(f.exponents)} seeds, "
          f"{f.n_epsilons} tolerances) -> {'supported' if f.supported else 'not supported'}")
    for reason in f.reasons:
        print(f"          - {reason}")

# %% [markdown]
# ### How the scan's SAEs stopped training
#
# Every SAE here trains under chapter 3's recipe: a plateau schedule that cuts the learning
# rate after a run of epochs without a better validation MSE and stops after the last cut's
# run, keeping the weights of the best validation epoch. The table says, per tolerance, how
# the trainings ended, where their best epochs fell, and how far the validation MSE of the
# last epoch lies above the best one; the last column gives the best epochs of the SAEs each
# seed selected at the optimal width. The lines under it look at the SAEs whose best epoch
# came early: epoch 10 or sooner, a cut chosen after a first look at these rows.
# They give how far the validation MSE stays above its minimum for the rest of the run and
# how much the training MSE falls meanwhile: the many epochs after the best one found no
# better SAE by the criterion every SAE of the book is kept by, which is why the schedule
# stopped them as converged.
#
# The two MSEs are read differently. The training MSE is BatchTopK's: a batch of $B$ digits
# keeps its $\mathrm{round}(kB)$ largest activations. The validation MSE uses the inference
# threshold, a running average learned during training, and the number of features it lets
# through per digit need not equal $k$. The last line compares the two counts through the
# kept SAEs' test L0 over their $k$, for the early SAEs and for the others at the same
# tolerances. Where the early ones run well above $k$, part of their lower validation MSE
# was likely bought with extra active features (a row keeps the L0 of its kept epoch only,
# so the later epochs' counts cannot be shown here). That does not make their description lengths wrong, since DL is
# computed from the L0 each SAE measures on the test digits and the search over $k$ compares
# SAEs by DL. It does mean that, at these $k$, choosing the epoch by validation MSE alone
# favours a threshold that lets more features through.

# %%
# NBVAL_CHECK_OUTPUT
EARLY_EPOCH = 10  # a best epoch at or before this one counts as early
table, early, rows_by_eps = [], [], {}
for e in entries:
    summary_e, rows_e = load_study(study_dir_for(scan_dir, e.epsilon, base, reference_dir))
    rows_by_eps[e.epsilon] = rows_e
    best = [r.train.best_epoch for r in rows_e if r.train.best_epoch is not None]
    stops = collections.Counter(r.train.stop_reason for r in rows_e)
    rise = [r.train.curve.val_mse[-1] / min(r.train.curve.val_mse) - 1 for r in rows_e if r.train.curve]
    early += [(e.epsilon, r) for r in rows_e if r.train.best_epoch is not None and r.train.best_epoch <= EARLY_EPOCH]
    chosen = "" if e.optimum is None else ", ".join(
        str(summary_e.searches[(e.optimum.width, s)].selected.best_epoch) for s in base.seeds
        if (e.optimum.width, s) in summary_e.searches and summary_e.searches[(e.optimum.width, s)].selected)
    table.append([f"{e.epsilon:g}", len(rows_e), ", ".join(f"{n} {why}" for why, n in sorted(stops.items())),
                  f"{np.median(best):.0f} [{min(best)}, {max(best)}]" if best else None,
                  sum(b <= EARLY_EPOCH for b in best),
                  f"{100 * np.median(rise):.2f} / {100 * max(rise):.2f}" if rise else None, chosen])
display(Table(["epsilon", "SAEs", "stop reasons", "best epoch: median [min, max]", f"best epoch <= {EARLY_EPOCH}",
               "last-epoch val MSE above best (%): median / max", "best epochs at the optimum (per seed)"], table,
              caption="How the scan's trainings ended (all rows of each tolerance's study)"))
if early:
    ks = [r.k for _, r in early]
    after = [np.median(r.train.curve.val_mse[r.train.best_epoch:]) / min(r.train.curve.val_mse) - 1
             for _, r in early if r.train.curve and r.train.best_epoch < len(r.train.curve.val_mse)]
    fall = [1 - r.train.curve.train_mse[-1] / r.train.curve.train_mse[r.train.best_epoch - 1]
            for _, r in early if r.train.curve]
    print(f"best epoch <= {EARLY_EPOCH}: {len(early)} SAEs, at epsilon "
          + ", ".join(f"{x:g}" for x in sorted({x for x, _ in early}))
          + f"; k from {min(ks):.3g} to {max(ks):.3g}; widths {sorted({r.width for _, r in early})}")
    if after and fall:
        print(f"  after their best epoch: validation MSE a median {100 * np.median(after):.2f}% above its minimum "
              f"(median over epochs, then over SAEs; largest {100 * max(after):.2f}%), while the training MSE "
              f"falls a further {100 * np.median(fall):.2f}% (median) by the last epoch")
    early_eps = {x for x, _ in early}
    rest = [r for x in early_eps for r in rows_by_eps[x]
            if r.train.best_epoch is not None and r.train.best_epoch > EARLY_EPOCH]

    def ratio(rs):
        return f"{np.median([r.measure.l0 / r.k for r in rs]):.3f}"

    print(f"  test L0 / k (median): {ratio([r for _, r in early])} for these {len(early)} SAEs, "
          + (f"{ratio(rest)} for the other {len(rest)} at the same tolerances" if rest else
             "no other SAE at the same tolerances"))
else:
    print(f"no SAE has its best epoch at or before epoch {EARLY_EPOCH}")

# %% [markdown]
# ## Provenance

# %%
run = scan.metadata
print(f"profile: {profile}; tolerances: {[e.epsilon for e in entries]}")
print(f"machine: {run['machine']}; date: {run['date']}; code version: {run['code_version']}")
print(f"SAEs trained across the scan: {scan.n_saes_trained}; their training time: "
      f"{scan.training_time_s / 3600:.2f} hours (summed over trainings); devices: "
      f"{sorted({d for e in entries for d in e.devices})}")
print(f"wall time of the run that wrote scan.json: {run['wall_time_s'] / 60:.1f} min")
