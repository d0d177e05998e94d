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
# # The two-part code
#
# If an SAE is a code for activations, we should be able to say exactly how many bits it
# spends. This chapter does the accounting for SAEs trained on MNIST, following
# {cite:t}`ayonrinde2024mdl`, and then checks it against a real entropy coder: the bits
# are not a formula but a file that can be written and read back.
#
# MDL measures a model by a *two-part code* {cite:p}`rissanen1978modeling,grunwald2007mdl`:
# first the model, then the data described with the model's help. For an SAE the first part
# is the decoder (its $D \times d$ dictionary and its bias), sent once. The second part is,
# for each of the $N$ inputs, its sparse latents $z$. The total is
#
# $$
# \text{bits}(N) = \underbrace{\text{bits}(\text{decoder})}_{\text{once}}
#   + N \cdot \mathrm{DL}(z),
# $$
#
# so per input the decoder's share falls like $1/N$ and, for the amounts of data SAEs are
# trained on, the description length per input is essentially $\mathrm{DL}(z)$.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"

# %% tags=["hide-input"]
import numpy as np
import torch

from IPython.display import display

from mdl_utils import plots
from mdl_utils.dl import decode_latents, description_length, effective_precision, encode_latents, quantize
from mdl_utils.mdl import decoder_fn, latents
from mdl_utils.protocol import quantised_latents
from mdl_utils.profiles import cache_dir, choose, results_dir
from mdl_utils.study_store import load_selected_sae
from mdl_utils.cache import load_cached_sae, train_cached
from mdl_utils.data import DataSpec, prepare_data
from mdl_utils.tables import Table
from mdl_utils.toys import binary_entropy
from mdl_utils.train import TrainConfig

torch.set_num_threads(1)  # one thread: the numbers do not depend on the core count, and chapters run side by side
plots.use_style()
EPSILON = 0.015  # the paper's tolerance: test MSE per pixel, pixels in [0, 1]
WEIGHT_BITS = 16  # decoder weights sent as 16-bit floats
data = prepare_data(DataSpec(
    source="mnist",
    n_train=choose(profile, quick=10_000, full=None),
    n_test=choose(profile, quick=2_000, full=None),
))
x_test = data.split("test")
saes, rows = {}, {}
if profile == "full":
    # The converged, DL-optimal SAEs of chapter 3's study (seed 0), read from the repository
    # rather than retrained: the same SAEs as chapter 3, each with its test MSE below EPSILON.
    study_dir = results_dir() / "full" / "mnist-mdl"
    x_t = torch.from_numpy(np.array(x_test, dtype=np.float32))
    for width in (64, 256, 1024):
        saes[width] = load_selected_sae(study_dir, width, 0)
        with torch.no_grad():
            mse = float((saes[width].decode(saes[width].encode(x_t)) - x_t).pow(2).mean())
        rows[width] = {"mse_test": mse}
else:
    # (width, k) pairs chosen so that every SAE's test MSE is below EPSILON, but not far below.
    for width, k in [(64, 40), (256, 20), (1024, 18)]:
        row = train_cached(TrainConfig(width=width, k=k, seed=0, progress=False, max_epochs=40, patience=3),
                           data, cache_dir())
        saes[width], rows[width] = load_cached_sae(cache_dir(), row["key"]), row


# %% [markdown]
# ## Effective precision
#
# Latents are real numbers, and a real number has no finite description: before counting
# bits we must decide how precisely each value is sent. The paper's answer is to use the
# coarsest precision that the task tolerates. We quantise every non-zero latent of a
# feature to one of $2^B$ equal bins spanning that feature's range (zero stays exactly
# zero), decode the bin centres, and increase $B$ until the test MSE is back under the
# tolerance $\epsilon = 0.015$ {cite:p}`ayonrinde2024mdl`. Below, the middle SAE
# (256 features).

# %%
featured = 256
z_test = latents(saes[featured], x_test)
precision = effective_precision(z_test, decoder_fn(saes[featured]), x_test, tolerance=EPSILON)
# The search stops at the first precision that passes; for the figure, the whole curve.
curve_bits = np.arange(1, 9)
curve_mse = [
    float(np.mean((decoder_fn(saes[featured])(quantised_latents(z_test, int(b))) - x_test) ** 2))
    for b in curve_bits
]

# %%
# NBVAL_CHECK_OUTPUT
print(f"SAE with {featured} features: unquantised test MSE {precision.mse_unquantised:.5f}")
print(f"effective precision: {precision.bits} bits per non-zero value, "
      f"test MSE {precision.mse:.5f} (tolerance {EPSILON})")

# %% tags=["hide-input"]
fig, axes = plots.figure()
ax = axes[0, 0]
ax.plot(curve_bits, curve_mse, "o-", label="quantised latents")
ax.axhline(precision.mse_unquantised, color=plots.COLORS[2], ls=":", label="unquantised latents")
ax.axhline(EPSILON, color=plots.COLORS[1], ls="--", label=f"tolerance $\\epsilon$ = {EPSILON}")
ax.plot([precision.bits], [precision.mse], "s", ms=12, mfc="none", color=plots.COLORS[1],
        label=f"effective precision: {precision.bits} bits")
ax.legend()
plots.label(ax, title=f"Quantising the latents of a {featured}-feature SAE",
            xlabel="B, bits per non-zero latent value", ylabel="test MSE per pixel")

# %% [markdown]
# ## Entropy against the bound
#
# Once quantised, each feature $i$ has a distribution $p_i$ over its values, zero included,
# and an entropy coder needs on average $H(p_i)$ bits per input to send it. Coding each
# feature on its own, as independent additivity asks, gives
# $\mathrm{DL}(z) = \sum_i H(p_i)$ bits per input {cite:p}`shannon1948mathematical`.
# Chapter 1 used the distribution-free bound $L_0 (B + \log_2 D)$ instead. The entropy can
# be split the same way: whether feature $i$ fires costs $H_b(\text{rate}_i)$ bits (the
# binary entropy of its firing rate) and, when it fires, its value costs the entropy of its
# values, at most $B$. The bound charges every firing $\log_2 D$ bits for its name and $B$
# for its value; the entropy is lower because features fire at unequal rates and their
# values are not spread evenly over the $2^B$ bins.

# %%
comparison = []
for width, sae in saes.items():
    z = latents(sae, x_test)
    bits = effective_precision(z, decoder_fn(sae), x_test, tolerance=EPSILON).bits
    dl = description_length(z, bits=bits)
    codes = quantize(z, bits=bits)
    rate_F = (codes != 0).mean(axis=0)
    firing_bits = float(np.sum(binary_entropy(rate_F)))  # which features fire, each on its own
    comparison.append(dict(width=width, mse=rows[width]["mse_test"], bits=bits, l0=dl.l0,
                           dl=dl.dl_bits, firing=firing_bits, values=dl.dl_bits - firing_bits,
                           bound=dl.upper_bound_bits, bound_names=dl.l0 * np.log2(width),
                           bound_values=dl.l0 * bits))

# %%
# NBVAL_CHECK_OUTPUT
display(Table(["width", "test MSE", "B (bits)", "L0", "DL (bits)", "bound (bits)", "DL / bound"],
              [[c["width"], f"{c['mse']:.5f}", c["bits"], f"{c['l0']:.2f}", f"{c['dl']:.1f}", f"{c['bound']:.1f}",
                f"{c['dl'] / c['bound']:.2f}"] for c in comparison]))

# %% tags=["hide-input"]
fig, axes = plots.figure(width=7.0)
ax = axes[0, 0]
positions = np.arange(len(comparison))
ax.bar(positions - 0.2, [c["firing"] for c in comparison], 0.4, label="entropy: which features fire")
ax.bar(positions - 0.2, [c["values"] for c in comparison], 0.4,
       bottom=[c["firing"] for c in comparison], label="entropy: their values")
ax.bar(positions + 0.2, [c["bound_names"] for c in comparison], 0.4, label="bound: $L_0 \\log_2 D$")
ax.bar(positions + 0.2, [c["bound_values"] for c in comparison], 0.4,
       bottom=[c["bound_names"] for c in comparison], label="bound: $L_0 B$")
ax.set_xticks(positions, [f"D = {c['width']}\n$L_0$ = {c['l0']:.1f}" for c in comparison])
ax.legend(ncols=2, fontsize=8)
plots.label(ax, title="Description length of the latents: entropy (left) and bound (right)",
            xlabel="SAE width D and its test $L_0$", ylabel="bits per test digit")

# %% [markdown]
# ## The bits are real
#
# An entropy is what an ideal coder would achieve. To check that nothing is lost in the
# translation, we code the quantised test latents of the featured SAE with an actual
# entropy coder (asymmetric numeral systems, from the `constriction` library), one
# independent model per feature, decode the bytes again and compare. The coded stream must
# be close to $N \cdot \mathrm{DL}$. The coder also has to send its probability tables
# (which codes each feature uses and how often): they are part of the model, the first part
# of the two-part code, next to the decoder weights.

# %%
codes_test = quantize(z_test, bits=precision.bits)
encoded = encode_latents(codes_test)
round_trip = decode_latents(encoded.blob)
n_test = len(x_test)
dl_featured = description_length(z_test, bits=precision.bits).dl_bits

# %%
# NBVAL_CHECK_OUTPUT
print(f"decoded codes identical to the originals: {np.array_equal(round_trip, codes_test)}")
print(f"N x DL = {n_test:,} x {dl_featured:.2f} = {n_test * dl_featured:,.0f} bits")
print(f"coded payload: {encoded.payload_bits:,} bits "
      f"({encoded.payload_bits / (n_test * dl_featured):.4f} x N x DL)")
print(f"probability tables: {encoded.table_bits:,} bits, header: {encoded.header_bits} bits")

# %% [markdown]
# ## The decoder's share vanishes
#
# Finally the first part of the code. Sending the featured SAE's decoder at 16-bit precision
# costs $16 (D d + d)$ bits, plus the coder's tables. Spread over $N$ inputs, that is a
# large overhead for a few digits and a vanishing one for the hundreds of millions of
# activations a language-model SAE is trained on. MNIST, with 60,000 training digits, sits
# in between: the printout says how large the model's share still is there, which is worth
# remembering when chapter 3 compares SAEs of very different widths by DL alone. (We keep
# the tables' size as measured on the test digits; it grows only slowly with $N$.)

# %%
d_in = saes[featured].d_in
decoder_bits = WEIGHT_BITS * (featured * d_in + d_in)
model_bits = decoder_bits + encoded.table_bits
n_grid = np.logspace(0, 8, 200)
per_sample = model_bits / n_grid + dl_featured
n_train_full = 60_000
share_at_train = (model_bits / n_train_full) / (model_bits / n_train_full + dl_featured)

# %%
# NBVAL_CHECK_OUTPUT
print(f"decoder: {decoder_bits:,} bits; with the coder's tables: {model_bits:,} bits")
print(f"share of the model in bits per digit at N = 60,000 (all of MNIST's training set): "
      f"{share_at_train:.1%}")

# %% tags=["hide-input"]
fig, axes = plots.figure()
ax = axes[0, 0]
ax.loglog(n_grid, per_sample, label="decoder + tables, shared over N, plus DL")
ax.axhline(dl_featured, color=plots.COLORS[1], ls="--", label=f"DL = {dl_featured:.1f} bits")
ax.axvline(n_train_full, color=plots.COLORS[2], ls=":", label="N = 60,000")
ax.legend()
plots.label(ax, title=f"Two-part code of a {featured}-feature SAE",
            xlabel="number of inputs N", ylabel="total bits per input")

# %% [markdown]
# ## The $\epsilon$-MDL-optimal SAE
#
# Putting the pieces together gives the criterion the rest of the book uses
# {cite:p}`ayonrinde2024mdl`. Fix a tolerance $\epsilon$ on the loss (here the test MSE per
# pixel). Among SAEs whose loss is below $\epsilon$, each with its latents sent at the
# coarsest precision that keeps the loss below $\epsilon$, the **$\epsilon$-MDL-optimal SAE**
# is the one whose latents have the smallest description length
# $\mathrm{DL}(z) = \sum_i H(p_i)$. In the large-data regime the decoder's cost drops out,
# so no term for it appears. Chapter 3 searches for this SAE across widths and sparsities.
