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
# # Feature splitting
#
# This chapter will work out when a dictionary should represent two co-occurring features
# A and B by a third, composite feature "A and B" {cite:p}`ayonrinde2024mdl`: splitting
# always lowers L0, but it lowers the description length only when A and B are correlated
# enough. The firing rates and correlations of binary features are what decides it; here we
# measure them for MNIST pixels treated as binary features ("ink above 0.5").

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
on_NP = x_train[:n_digits] > 0.5
firing_rate_P = on_NP.mean(axis=0)
# Two horizontally adjacent pixels in the middle of the image.
a, b = 14 * 28 + 14, 14 * 28 + 15
rho = float(np.corrcoef(on_NP[:, a], on_NP[:, b])[0, 1])

# %%
# NBVAL_CHECK_OUTPUT
print(f"firing rates of pixels A, B: {firing_rate_P[a]:.3f}, {firing_rate_P[b]:.3f}")
print(f"Pearson correlation of A and B: {rho:.3f}")

# %%
fig, axes = plots.figure(width=4.5, height=4.2)
image = axes[0, 0].imshow(firing_rate_P.reshape(28, 28), cmap="viridis", vmin=0, vmax=1)
fig.colorbar(image, ax=axes[0, 0], label="fraction of digits with ink > 0.5")
axes[0, 0].grid(False)
plots.label(axes[0, 0], title="How often each pixel is on",
            xlabel="pixel column", ylabel="pixel row")
