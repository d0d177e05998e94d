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
# The MDL recipe of {cite:t}`ayonrinde2024mdl` fixes a few choices for simplicity: one float
# precision shared by every feature, one tolerance $\epsilon$, and a comparison of SAEs at that
# tolerance only. Their discussion raises what happens when each choice is relaxed. This
# chapter takes three of those questions to the SAEs of the chapter-3 sweep:
#
# 1. **Per-feature precision.** Some features are close to on/off switches, others carry a
#    graded intensity. Does giving each feature its own number of bits shorten the
#    description at the same test MSE, and does it change which SAE wins?
# 2. **Rate-distortion curves.** Each SAE traces a curve of DL against MSE as its precision
#    varies. If the curves of two SAEs cross, the answer to "which is better" depends on the
#    tolerance; if no pair crosses, the ranking is the same at every tolerance.
# 3. **The optimum against $\epsilon$.** Rerunning the whole selection at several
#    tolerances shows how the MDL-optimal width, L0 and DL move, and whether a simple power
#    law describes the movement.
#
# All three use the library: {py:func}`mdl_utils.dl.allocate_bits` for the bit allocation and
# {py:mod}`mdl_utils.beyond` for the rest. The `full` profile reads results computed once by
# `python -m mdl_utils beyond --profile full` (committed under `results/full/beyond/`); the
# `quick` profile recomputes everything from chapter 3's quick sweep, training only the SAEs
# that the other tolerances need.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"
# With profile="full": recompute instead of reading results/full/beyond/ (about an hour of
# CPU training once chapter 3's SAEs are cached, see the README).
retrain = False

# %% tags=["hide-input"]
import numpy as np
import torch

from IPython.display import display

from mdl_utils import plots
from mdl_utils.tables import Table
from mdl_utils.beyond import NEAR_OPTIMAL, load_beyond, pareto_front, run_beyond
from mdl_utils.profiles import cache_dir, choose, results_dir

torch.set_num_threads(1)
plots.use_style()
committed = results_dir() / "full" / "beyond"
if profile == "full" and not retrain:
    beyond = load_beyond(committed)
else:
    out_dir = choose(profile, quick=cache_dir() / "beyond" / "quick", full=results_dir() / "full" / "beyond")
    sweep_dir = choose(profile, quick=cache_dir() / "mnist-sweep" / "quick", full=results_dir() / "full")
    beyond = run_beyond(profile, out_dir, sweep_dir=sweep_dir, scan_dir=out_dir / "scan")
eps = beyond["epsilon"]
allocs = beyond["allocations"]
curves = beyond["curves"]
widths = [a["width"] for a in allocs]
optimum_width = beyond["sweep_optimum_width"]

# %% [markdown]
# ## 1. One precision per feature
#
# Chapter 2 chose a single precision $B$ for all features: the fewest bits per non-zero value
# that keep the test MSE at or below $\epsilon$. Here each feature gets its own precision. A
# greedy search takes precision away, each time from the feature whose loss of it raises the
# MSE least per bit of DL saved, until no further removal keeps the MSE under the ceiling.
# Because halving the precision merges bins in pairs, no removal can raise a feature's
# entropy. A greedy is not guaranteed to find the best allocation, so it runs twice: once
# from a generous precision for every feature, once from the uniform allocation itself, and
# the shorter result is kept. The second start makes sure the per-feature DL is never above
# the uniform one. The decoder must also be told each feature's precision: a fixed-length
# number per live feature, sent once and spread over the test digits, counted in the totals
# below (both settings are printed under the tables).
#
# Two comparisons. **At the same MSE**, the ceiling is the MSE that the uniform precision
# itself reaches, so both codes reconstruct the digits at least as well and only the bits
# differ. **At the tolerance**, the ceiling is $\epsilon$, as in the MDL selection, so the
# per-feature allocation may use up the slack that a whole-bit uniform precision leaves
# below $\epsilon$.

# %%
# NBVAL_CHECK_OUTPUT
def saving(a, dl):
    return f"{100 * (a['uniform_dl_bits'] - dl) / a['uniform_dl_bits']:.2f}%"


display(Table(
    ["width", "B (bits)", "uniform DL (bits)", "MSE", "per-feature DL (bits)", "+ table (bits)", "saving", "start"],
    [[a["width"], a["uniform_bits"], f"{a['uniform_dl_bits']:.1f}", f"{a['uniform_mse']:.5f}",
      f"{a['same_mse']['entropy_bits']:.1f}", f"{a['same_mse']['dl_bits']:.1f}", saving(a, a["same_mse"]["dl_bits"]),
      a["same_mse"]["started_from"]] for a in allocs],
    caption="At the same MSE (ceiling: the uniform precision's own MSE)"))
display(Table(
    ["width", "uniform DL (bits)", "per-feature DL (bits)", "+ table (bits)", "saving", "MSE", "start"],
    [[a["width"], f"{a['uniform_dl_bits']:.1f}", f"{a['entropy_bits']:.1f}", f"{a['dl_bits']:.1f}",
      saving(a, a["dl_bits"]), f"{a['mse']:.5f}", a["started_from"]] for a in allocs],
    caption=f"At the tolerance (ceiling: epsilon = {eps})"))
print(f"generous start: {allocs[0]['start_bits']} bits for every feature; precision table: "
      f"{allocs[0]['table_bits'] / allocs[0]['n_live']:g} bits per live feature")
never_above = all(a["same_mse"]["entropy_bits"] <= a["allocator_uniform"]["entropy_bits"] + 1e-9 for a in allocs)
rank_uniform = [a["width"] for a in sorted(allocs, key=lambda a: (a["uniform_dl_bits"], a["width"]))]
rank_per_feature = [a["width"] for a in sorted(allocs, key=lambda a: (a["dl_bits"], a["width"]))]
savings_same = [100 * (a["uniform_dl_bits"] - a["same_mse"]["dl_bits"]) / a["uniform_dl_bits"] for a in allocs]
savings_eps = [100 * (a["uniform_dl_bits"] - a["dl_bits"]) / a["uniform_dl_bits"] for a in allocs]
print(f"per-feature DL at the same MSE never above uniform: {never_above}")
print(f"mean saving (with the table): {np.mean(savings_same):.2f}% at the same MSE, "
      f"{np.mean(savings_eps):.2f}% at epsilon")
print(f"ranking by uniform DL:                  {rank_uniform}")
print(f"ranking by per-feature DL at epsilon:   {rank_per_feature}")
print(f"optimum: width {rank_uniform[0]} (uniform) vs width {rank_per_feature[0]} (per-feature)")

# %% [markdown]
# All numbers are bits per test digit. "DL" is the sum of the features' entropies, "+table"
# adds the precision table, and the saving is that total's against the uniform DL. "start"
# says which of the greedy's two starts won; where the uniform start wins, the generous
# greedy on its own would have ended higher. When the greedy can remove nothing from the uniform start, the allocation *is* the
# uniform one and the table makes the total a fraction of a bit dearer; a coder would then
# send the uniform code with a one-bit flag instead. The MSE at $\epsilon$ is that of the
# per-feature allocation, which the greedy drives up to the tolerance. The ranking uses the
# per-feature totals at $\epsilon$, the quantity MDL selection would compare.
#
# The two savings measure different things. The one at the same MSE is what per-feature
# precision buys by itself. The one at $\epsilon$ adds what it buys by spending the slack a
# whole-bit uniform precision leaves between its MSE and the tolerance, which a finer uniform
# grid (fractional bits, or the bin width itself as the precision) could also recover.
#
# Where do the bits go? For the MDL-optimal SAE of chapter 3, the histogram of precisions the
# greedy settled on, and, more telling, how many bits each feature's *value* carries once the
# feature is known to be on, $H(\text{value} \mid \text{active}) = (H(p_i) - H_b(f_i)) / f_i$
# with $f_i$ its firing rate. A value entropy near zero means the feature is, in effect,
# binary: it costs little more than the bits that say it fired.

# %% tags=["hide-input"]
best = next(a for a in allocs if a["width"] == optimum_width)
bits_live = np.array([b for b, v in zip(best["bits"], best["value_bits"]) if v is not None])
value_bits = np.array([v for v in best["value_bits"] if v is not None])
fig, axes = plots.figure(ncols=2, width=11.0, height=3.8)
ax = axes[0, 0]
levels = np.arange(0, best["start_bits"] + 1)
ax.bar(levels, [int((bits_live == b).sum()) for b in levels], color=plots.COLORS[0])
ax.axvline(best["uniform_bits"], color=plots.COLORS[1], ls="--", label=f"uniform B = {best['uniform_bits']}")
ax.legend()
plots.label(ax, title=f"Precision per feature, width-{optimum_width} SAE",
            xlabel="bits per non-zero value", ylabel="live features (count)")
ax = axes[0, 1]
ax.hist(value_bits, bins=np.arange(0, value_bits.max() + 0.5, 0.25), color=plots.COLORS[2])
plots.label(ax, title="Bits carried by a feature's value when it fires",
            xlabel="H(value | active) (bits)", ylabel="live features (count)")

# %%
# NBVAL_CHECK_OUTPUT
for a in allocs:
    v = np.array([x for x in a["value_bits"] if x is not None])
    b = np.array([x for x, y in zip(a["bits"], a["value_bits"]) if y is not None])
    print(f"width {a['width']:5d}: {a['n_live']:5d} live features; value entropy < 0.5 bit: "
          f"{int((v < 0.5).sum()):4d} ({100 * np.mean(v < 0.5):4.1f}%); median precision "
          f"{int(np.median(b))} bits (uniform {a['uniform_bits']}); at 0 bits (on/off only): {int((b == 0).sum())}")

# %% [markdown]
# A feature that keeps the generous start's full precision is not necessarily precise: when
# its entropy does not drop as bits are removed (for instance a feature that takes one
# value), precision costs it nothing, and the greedy leaves it alone. The value entropy is the fairer measure of how
# binary a feature is.
#
# ## 2. Rate-distortion curves
#
# For each SAE of the sweep, the test MSE and DL at every uniform precision from 1 to 12
# bits. Each curve is drawn through its Pareto points (those not beaten on both MSE and DL by
# another point of the same curve). The dashed line is the tolerance of chapter 3; the
# greedy's path for the optimal SAE (per-feature precision) is the dotted grey line.

# %% tags=["hide-input"]
fig, axes = plots.figure(width=7.5, height=4.5)
ax = axes[0, 0]
for i, c in enumerate(curves):
    front = pareto_front(c["mse"], c["dl_bits"])
    ax.plot(np.array(c["mse"])[front], np.array(c["dl_bits"])[front], "o-", ms=3,
            color=plots.COLORS[i % len(plots.COLORS)], label=f"width {c['width']}")
ax.plot(best["path_mse"], best["path_entropy_bits"], ":", color="grey", lw=2,
        label=f"width {optimum_width}, per-feature (greedy path)")
ax.axvline(eps, color="grey", ls="--")
ax.set_xscale("log")
ax.legend(fontsize=8)
plots.label(ax, title="DL against test MSE as the precision varies",
            xlabel="test MSE (per pixel, log scale)", ylabel="DL (bits per test digit)")

# %% [markdown]
# Crossings are counted between the curves as drawn (straight segments in log MSE), within
# the MSE range that both curves of a pair cover:

# %%
# NBVAL_CHECK_OUTPUT
counts = np.array(beyond["crossing_counts"])
print("crossings between rate-distortion curves (rows, columns: width)")
print("       " + "".join(f"{w:>6d}" for w in widths))
for w, row in zip(widths, counts):
    print(f"{w:6d} " + "".join(f"{c:6d}" for c in row))
n_pairs = len(widths) * (len(widths) - 1) // 2
n_crossing = int((np.triu(counts, 1) > 0).sum())
print(f"\n{n_crossing} of {n_pairs} pairs cross at least once")
for entry in beyond["crossings"]:
    if entry["mse"]:
        print(f"  widths {entry['widths'][0]} and {entry['widths'][1]}: at MSE "
              + ", ".join(f"{m:.4f}" for m in entry["mse"]))

# %% [markdown]
# Which of these SAEs has the shortest description then depends on the tolerance whenever
# a pair crosses inside the range of MSE one cares about. Read along the curves (no
# retraining): at each tolerance of section 3, the SAE and precision with the least DL whose
# MSE is within it.

# %%
# NBVAL_CHECK_OUTPUT
def best_on_curves(tol):
    options = [(dl, c["width"], b) for c in curves for m, dl, b in zip(c["mse"], c["dl_bits"], c["bits"]) if m <= tol]
    return min(options) if options else None


for entry in beyond["epsilon_scan"]:
    found = best_on_curves(entry["epsilon"])
    text = "no SAE of the sweep reaches it" if found is None else (
        f"width {found[1]} at {found[2]} bits, DL {found[0]:.1f} bits per digit")
    print(f"epsilon {entry['epsilon']:.3f}: {text}")

# %% [markdown]
# ## 3. The optimum as the tolerance changes
#
# Here the SAEs are retrained: the chapter-3 sweep is run again with only $\epsilon$
# changed, so that at each tolerance the compared SAEs all have test MSE in
# $[0.95\,\epsilon, \epsilon]$. SAEs whose training configuration coincides across tolerances
# are trained once. The search over k stops at k = 1 (one active feature per digit on
# average): where even that leaves the MSE below the band, the sweep keeps the k = 1 SAE and
# the table says so. Such a tolerance is looser than anything the swept SAEs can be made to
# fit, so its optimum is set by the floor on k rather than by $\epsilon$.

# %%
# NBVAL_CHECK_OUTPUT
scan = beyond["epsilon_scan"]
table = []
for entry in scan:
    o = entry["optimum"]
    if o is None:
        table.append([f"{entry['epsilon']:.3f}", 0, "no width reaches this tolerance", None, None, None, None])
        continue
    notes = []
    if len(o["near_widths"]) > 1:
        notes.append(f"within {NEAR_OPTIMAL:.0%}: " + ", ".join(str(w) for w in o["near_widths"]))
    if o["at_edge"]:
        notes.append("at the edge of the widths that reached it")
    if not o["in_band"]:
        notes.append(f"below the band: k = {o['k']:g} over-delivers at {o['n_below_band']} of "
                     f"{o['n_reached']} widths")
    table.append([f"{o['epsilon']:.3f}", o["n_reached"], o["width"], f"{o['l0']:.2f}", f"{o['dl_bits']:.1f}",
                  o["bits"], "; ".join(notes)])
display(Table(["epsilon", "widths reaching it", "width*", "L0*", "DL* (bits)", "B (bits)", "note"], table))
flat = [o["epsilon"] for o in (e["optimum"] for e in scan) if o is not None and len(o["near_widths"]) > 1]
print(f"tolerances where several widths come within {NEAR_OPTIMAL:.0%} of the least DL: "
      + (", ".join(f"{e:g}" for e in flat) if flat else "none"))
at_eps = next(e["optimum"] for e in scan if abs(e["epsilon"] - eps) < 1e-12)
print(f"at epsilon = {eps}: optimum width {at_eps['width']}; chapter 3's: {optimum_width}")

# %% [markdown]
# How to read the notes: "within 5%" lists the widths whose DL is within 5% of the least one
# at that tolerance. Where there are several, the DL curve is flat around its minimum and the
# single optimal width is fragile: the DL moves in whole bits of precision, so one SAE
# needing one bit fewer than its neighbours can decide the winner. An optimum "at the edge"
# is the narrowest or widest width that reached the tolerance, so a wider or narrower sweep
# could move it. The L0 and DL at the optimum are less sensitive to these ties than the
# width is, because near-optimal SAEs have similar values of both.

# %% tags=["hide-input"]
optima = [e["optimum"] for e in scan if e["optimum"] is not None]
e_arr = np.array([o["epsilon"] for o in optima])
fig, axes = plots.figure(ncols=3, width=12.0, height=3.8)
panels = [("width", "Optimal width", "optimal width D* (features)"),
          ("l0", "L0 at the optimum", "L0 (active features per digit)"),
          ("dl_bits", "DL at the optimum", "DL (bits per test digit)")]
for ax, (name, title, ylabel) in zip(axes[0], panels):
    y = np.array([o[name] for o in optima])
    in_band = np.array([o["in_band"] for o in optima], dtype=bool)
    ax.plot(e_arr[in_band], y[in_band], "o", color=plots.COLORS[0], label="measured (fitted)")
    if not in_band.all():
        ax.plot(e_arr[~in_band], y[~in_band], "o", mfc="none", color=plots.COLORS[0],
                label="below the band (k = 1, not fitted)")
    fit = beyond["fits"].get(name)
    if fit is not None:
        grid = np.geomspace(e_arr[in_band].min(), e_arr[in_band].max(), 50)
        ax.plot(grid, fit["prefactor"] * grid ** fit["exponent"], "-", color=plots.COLORS[1],
                label=f"fit: exponent {fit['exponent']:.2f}, $R^2$ {fit['r_squared']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(e_arr, [f"{e:g}" for e in e_arr])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    plots.label(ax, title=f"{title} against epsilon",
                xlabel="tolerance epsilon (test MSE per pixel)", ylabel=ylabel)

# %% [markdown]
# A power law $y = c\,\epsilon^{\alpha}$ is fitted by least squares in log-log to each
# quantity. We call a law *supported* when it rests on at least four tolerances, explains at
# least 90% of the variance in log space ($R^2 \ge 0.9$), and no optimum sits at the edge of
# the widths that reached its tolerance (where the true optimum could lie outside the sweep).
# Tolerances whose optimum sits below the band are left out of the fit. The optimal width
# moves in powers of two, so its fit is coarse by construction.

# %%
# NBVAL_CHECK_OUTPUT
fitted = [o for o in optima if o["in_band"]]
left_out = [o["epsilon"] for o in optima if not o["in_band"]]
print(f"fitted on {len(fitted)} tolerances; left out (optimum below the band): "
      + (", ".join(f"{e:g}" for e in left_out) if left_out else "none"))
edge = any(o["at_edge"] for o in fitted)
for name in ("width", "l0", "dl_bits"):
    fit = beyond["fits"].get(name)
    if fit is None:
        print(f"{name:>8s}: too few tolerances reached to fit")
        continue
    r2 = fit["r_squared"]
    fits_well = fit["n_points"] >= 4 and np.isfinite(r2) and r2 >= 0.9
    verdict = ("not supported by these data" if not fits_well else
               "fits, but provisional: some optima sit at the edge of the sweep" if edge else "supported")
    print(f"{name:>8s}: exponent {fit['exponent']:+.2f} +/- {fit['exponent_stderr']:.2f}, "
          f"R^2 {r2:.3f}, {fit['n_points']} points -> {verdict}")

# %% [markdown]
# ## Provenance

# %%
print(f"profile: {profile}; epsilon scan: {[e['epsilon'] for e in scan]}")
print(f"machine: {beyond['machine']}; date: {beyond['date']}; code version: {beyond['code_version']}")
print(f"wall time of the run that wrote these results: {beyond['wall_time_s'] / 60:.1f} min "
      "(SAEs already in the model cache are not retrained)")
print(f"training time behind the epsilon scan (all tolerances, CPU): "
      f"{beyond['scan_training_time_s'] / 60:.1f} min")
