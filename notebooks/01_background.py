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
# # Background: sparse autoencoders as explanations
#
# Sparse autoencoders (SAEs) have become a standard tool for taking a neural network's
# activations apart into features a person can name
# {cite:p}`bricken2023monosemanticity,gao2024scaling`. This chapter recalls what an SAE
# computes, why its sparsity is usually taken as a proxy for how interpretable it is, and
# why {cite:t}`ayonrinde2024mdl` argue that the quantity to minimise is instead the length of
# the description the SAE gives of the activations. Everything below runs on MNIST digits
# {cite:p}`lecun1998gradient`, which stand in for activations throughout the book.
#
# ## What an SAE computes
#
# An activation vector $x \in \mathbb{R}^d$ is *encoded* into $D$ feature activations and
# *decoded* back:
#
# $$
# z = \mathrm{Enc}(x) \in \mathbb{R}^D_{\ge 0}, \qquad
# \hat x = \mathrm{Dec}(z) = \sum_{i=1}^{D} z_i \, W_{\mathrm{dec}}[i] + b_{\mathrm{dec}} .
# $$
#
# The rows $W_{\mathrm{dec}}[i]$ form a *dictionary* of directions, usually many more than
# the input has dimensions ($D \gg d$), and the encoder is trained so that only a few $z_i$
# are non-zero for any one input. The mean number of non-zero features per input is the
# SAE's **L0**. Three routes to small L0 are common: an L1 penalty on $z$ added to the
# reconstruction loss {cite:p}`bricken2023monosemanticity`; keeping only the $k$ largest
# activations of every input (TopK, {cite:t}`gao2024scaling`); and keeping the $k \cdot B$
# largest activations across a whole batch of $B$ inputs, so that inputs that need more
# features can take them from inputs that need fewer (BatchTopK,
# {cite:t}`bussmann2024batchtopk`). This book trains BatchTopK SAEs.
#
# ## Why sparsity, and why it is not the goal
#
# A sparse code is attractive because a person can read it: to understand one input, look
# at the handful of features that fire on it. So SAEs are compared by the reconstruction
# error they reach at a given L0. But L0 alone rewards the wrong thing in the limit. Give
# the SAE one feature per training example and every input is reconstructed perfectly by a
# single feature (L0 = 1): a lookup table, which explains nothing. Pushing L0 down pushes
# towards wider and wider dictionaries of ever more specific features.
#
# {cite:t}`ayonrinde2024mdl` propose to read the SAE as a *code*. To tell a friend what the
# activations were, up to some tolerated error, we send the dictionary once and then, for
# every input, which features fired and how strongly. An explanation is good when that
# message is short: the **minimum description length** (MDL) principle
# {cite:p}`rissanen1978modeling,grunwald2007mdl`. Naming one feature out of $D$ costs about
# $\log_2 D$ bits, so a gigantic lookup table pays for its L0 of 1 with a very long name per
# input, while a narrow dense code pays for every one of its many active values. The
# description length balances the two.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"

# %% tags=["hide-input"]
import math

import torch

from IPython.display import display

from mdl_utils import plots
from mdl_utils.dl import dense_dl, dl_upper_bound
from mdl_utils.profiles import cache_dir, choose
from mdl_utils.cache import load_cached_sae, train_cached
from mdl_utils.data import DataSpec, prepare_data
from mdl_utils.tables import Table
from mdl_utils.train import TrainConfig

torch.set_num_threads(1)  # one thread: the numbers do not depend on the core count, and chapters run side by side
plots.use_style()
data = prepare_data(DataSpec(
    source="mnist",
    n_train=choose(profile, quick=10_000, full=None),
    n_test=choose(profile, quick=2_000, full=None),
))
config = TrainConfig(
    width=64, k=8, seed=0,
    max_epochs=choose(profile, quick=15, full=200),
    patience=choose(profile, quick=3, full=10),
    progress=False,
)
row = train_cached(config, data, cache_dir())
sae = load_cached_sae(cache_dir(), row["key"])

# %% [markdown]
# ## An SAE's explanation of one digit
#
# We train a small BatchTopK SAE on MNIST: 64 features, on average 8 active per digit. Its
# headline numbers, measured on held-out test digits:

# %%
# NBVAL_CHECK_OUTPUT
print(f"width D = {sae.width}, training k = {sae.k:g}, trained on {len(data.train):,} digits")
print(f"test MSE per pixel: {row['mse_test']:.4f}")
print(f"test L0 (mean active features per digit): {row['l0_test']:.2f}")

# %% [markdown]
# *Independent additivity* is what makes such a code an explanation
# {cite:p}`ayonrinde2024mdl`: because the decoder is linear, the reconstruction of a digit is
# exactly the sum of what each active feature contributes, $z_i W_{\mathrm{dec}}[i]$, plus
# the fixed bias. Each feature can be understood on its own, and the explanation of the
# whole is the sum of the explanations of the parts. This is also why, later, each feature's
# description length is counted on its own and the lengths are added.

# %%
x_test = torch.from_numpy(data.split("test").copy())
digit = x_test[:1]
with torch.no_grad():
    z_1F = sae.encode(digit)
    x_hat_1D = sae.decode(z_1F)
active = torch.nonzero(z_1F[0]).flatten()
active = active[torch.argsort(z_1F[0, active], descending=True)]
contributions_AD = z_1F[0, active, None] * sae.W_dec_FD[active].detach()
rebuilt_D = sae.b_dec_D.detach() + contributions_AD.sum(dim=0)

# %%
# NBVAL_CHECK_OUTPUT
print(f"active features on this digit: {len(active)}")
gap = (rebuilt_D - x_hat_1D[0]).abs().max().item()
print(f"bias + sum of feature contributions equals the decoder output: {gap < 1e-5} "
      "(largest difference below 1e-5 per pixel)")

# %% tags=["hide-input"]
panels = [digit[0], x_hat_1D[0], sae.b_dec_D.detach()] + list(contributions_AD)
titles = ["digit", "reconstruction", "bias"] + [
    f"f{int(i)} z={z_1F[0, i]:.2f}" for i in active
]
fig = plots.image_grid(
    torch.stack(panels).numpy(), ncols=6, titles=titles, symmetric=True,
    suptitle="A test digit, its reconstruction, and the additive parts it is built from\n"
             "(pixel intensity; red positive, blue negative)",
)

# %% [markdown]
# ## Three description lengths for GPT-2
#
# The paper puts numbers on the argument with GPT-2 small, whose residual stream has
# $d = 768$ dimensions, storing each non-zero value with $B = 7$ bits (8-bit floats whose
# sign bit is not needed, as the activations are non-negative). Without knowing the
# distribution of the features, the cost of a sparse code is bounded by
# $L_0 \cdot (B + \log_2 D)$: each active feature is named ($\log_2 D$ bits) and given a
# value ($B$ bits). Three codes for the same activations:
#
# - a published SAE for layer 8 with $L_0 = 65$ and $D = 25{,}000$ features;
# - no SAE: send all $d$ values densely, $B \cdot d$ bits;
# - a one-hot "SAE" with one feature per possible input context: 128 tokens from a
#   vocabulary of 50,257, so $D = 50{,}257^{128}$ and $L_0 = 1$.
#
# For the one-hot code the paper states 13,993 bits per token. The bound above gives
# $1 \cdot (7 + 128 \log_2 50{,}257) \approx 2{,}006$ bits; the paper's number is the
# product $7 \cdot 128 \log_2 50{,}257$, in which the bits of the value multiply the bits of
# the name instead of adding to them. We show both readings. Under either one the SAE's
# description is the shortest, although the SAE is lossy (it explains about 93% of the
# variance) and the other two are exact.

# %%
B = 7
D_onehot = 50_257**128
rows = [
    ("SAE, layer 8 (L0 = 65, D = 25,000)", "L0 (B + log2 D)", dl_upper_bound(65, 25_000, B), "1405"),
    ("dense activations, no SAE (d = 768)", "B d", dense_dl(768, B), "5376"),
    ("one-hot dictionary (L0 = 1, D = 50257^128)", "L0 (B + log2 D)", dl_upper_bound(1, D_onehot, B), "-"),
    ("one-hot dictionary, the paper's reading", "B log2 D", B * math.log2(D_onehot), "13,993"),
]

# %%
# NBVAL_CHECK_OUTPUT
display(Table(["code", "formula", "ours (bits/token)", "paper states (bits/token)"],
              [[name, formula, f"{bits:,.1f}", stated] for name, formula, bits, stated in rows]))
