"""Tests for mdl_utils.plots: grids have the right panels and reject bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from mdl_utils import plots


def test_image_grid_draws_one_panel_per_image_and_a_title():
    fig = plots.image_grid(np.zeros((10, 784)), ncols=4, suptitle="ten blanks")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10 and len(fig.axes) == 12  # 3 rows of 4, two empty
    assert fig._suptitle.get_text() == "ten blanks"


@pytest.mark.parametrize("bad", [np.zeros((3, 100)), np.zeros(784), np.zeros((0, 784))])
def test_image_grid_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="shape|no images"):
        plots.image_grid(bad, suptitle="bad")


def test_label_sets_title_and_axes():
    fig, axes = plots.figure()
    plots.label(axes[0, 0], title="t", xlabel="x (bits)", ylabel="y (MSE)")
    assert (axes[0, 0].get_title(), axes[0, 0].get_xlabel()) == ("t", "x (bits)")
