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
# # The MNIST MDL sweep
#
# This chapter will train BatchTopK SAEs {cite:p}`bussmann2024batchtopk` of many widths on
# MNIST, all at the paper's reconstruction tolerance of 0.015 mean squared error per pixel,
# and find the one with the shortest description {cite:p}`ayonrinde2024mdl`. As a first
# yardstick it computes how far the crudest possible dictionary, one mean image per digit
# class, is from that tolerance.

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
x_test, y_test = load_mnist("test")
x_train, y_train = x_train[:n_digits], y_train[:n_digits]
class_means = np.stack([x_train[y_train == digit].mean(axis=0) for digit in range(10)])
mse_class_mean = float(((x_test - class_means[y_test]) ** 2).mean())

# %%
# NBVAL_CHECK_OUTPUT
print(f"test MSE per pixel when each digit is replaced by its class mean: {mse_class_mean:.4f}")
print("the paper's tolerance: 0.0150")

# %%
fig = plots.image_grid(
    class_means, ncols=10, titles=[f"mean {d}" for d in range(10)],
    suptitle="A ten-feature dictionary: the mean training image of each class (intensity 0 to 1)",
)
