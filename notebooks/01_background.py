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
# This chapter will introduce sparse autoencoders (SAEs), the sparsity measure L0 that is
# usually used to judge them, and the argument of {cite:t}`ayonrinde2024mdl` that the real
# goal is a *short description* of the activations. Its worked example will be MNIST digits;
# for now it shows the data the book works with.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"

# %%
import numpy as np

from mdl_utils import plots
from mdl_utils.data import load_mnist
from mdl_utils.profiles import choose

n_digits = choose(profile, quick=2_000, full=60_000)
x_train, y_train = load_mnist("train")
x_train, y_train = x_train[:n_digits], y_train[:n_digits]

# %% [markdown]
# Each MNIST digit is a 28 x 28 image, read here as a vector of 784 pixel intensities in
# [0, 1]. These vectors play the role of the "activations" an SAE explains.

# %%
# NBVAL_CHECK_OUTPUT
print(f"digits used: {len(x_train)}, pixels per digit: {x_train.shape[1]}")
print(f"mean pixel intensity: {x_train.mean():.4f}")

# %%
first_of_each = [int(np.flatnonzero(y_train == digit)[0]) for digit in range(10)]
fig = plots.image_grid(
    x_train[first_of_each], ncols=10, titles=[f"label {d}" for d in range(10)],
    suptitle="One training digit per class (pixel intensity 0 = white, 1 = black)",
)
