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
# # Hierarchical codes
#
# This chapter will show that a tree of features, where a child feature is only sent when
# its parent fires, can describe data in fewer bits than a flat dictionary, even though its
# L0 is higher {cite:p}`ayonrinde2024mdl`. The entropy of a binary event is the unit of
# that accounting {cite:p}`shannon1948mathematical`; here it is computed for the ten MNIST
# classes.

# %% tags=["parameters"]
# Papermill injects `profile` here: "quick" (minutes, CI) or "full" (paper scale).
profile = "quick"

# %%
import numpy as np

from mdl_utils import plots
from mdl_utils.data import load_mnist
from mdl_utils.profiles import choose

n_digits = choose(profile, quick=2_000, full=60_000)
_, y_train = load_mnist("train")
class_rate = np.bincount(y_train[:n_digits], minlength=10) / n_digits
binary_entropy_bits = -(class_rate * np.log2(class_rate) + (1 - class_rate) * np.log2(1 - class_rate))

# %%
# NBVAL_CHECK_OUTPUT
print(f"entropy of the label: {-(class_rate * np.log2(class_rate)).sum():.4f} bits per digit")
print(f"sum of the ten one-vs-rest binary entropies: {binary_entropy_bits.sum():.4f} bits per digit")

# %%
fig, axes = plots.figure()
axes[0, 0].bar(np.arange(10), binary_entropy_bits, color=plots.COLORS[0])
axes[0, 0].set_xticks(np.arange(10))
plots.label(axes[0, 0], title="Cost of sending 'is this digit a d?' for each class",
            xlabel="digit class d", ylabel="binary entropy (bits per digit)")
