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
# This chapter will describe an SAE as a two-part code {cite:p}`grunwald2007mdl`: the
# dictionary is sent once, then the sparse latents of every sample. It will measure each
# part in bits for trained SAEs. For now it looks at what any code for MNIST must cope with:
# most pixels are exactly zero, and the rest spread over many values.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"

# %%
import numpy as np

from mdl_utils import plots
from mdl_utils.data import load_mnist
from mdl_utils.profiles import choose

n_digits = choose(profile, quick=2_000, full=60_000)
x_train, _ = load_mnist("train")
x_train = x_train[:n_digits]
nonzero = x_train[x_train > 0]

# %%
# NBVAL_CHECK_OUTPUT
print(f"fraction of pixels exactly zero: {1 - nonzero.size / x_train.size:.4f}")
print(f"mean number of non-zero pixels per digit: {nonzero.size / len(x_train):.1f}")

# %%
fig, axes = plots.figure()
axes[0, 0].hist(nonzero, bins=64, color=plots.COLORS[0])
plots.label(axes[0, 0], title="Intensities of the non-zero MNIST pixels",
            xlabel="pixel intensity (0 to 1)", ylabel="number of pixels")
