"""The book's one figure style: sizes, fonts, colours, and a few shared figure types.

Every chapter draws through these helpers so that figures look alike and always carry a
title and labelled axes with units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["COLORS", "use_style", "figure", "image_grid", "label"]

#: Colour-blind-safe palette (Okabe-Ito), used in this order by every chapter.
COLORS: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # green
    "#CC79A7",  # purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
)

_STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.figsize": (6.4, 4.0),
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "axes.prop_cycle": cycler(color=list(COLORS)),
    "image.cmap": "gray_r",
}


def use_style() -> None:
    """Apply the book's matplotlib settings (idempotent; call once per chapter)."""
    mpl.style.use(_STYLE)


def figure(
    ncols: int = 1, nrows: int = 1, *, width: float = 6.4, height: float = 4.0, **kwargs: Any
) -> tuple[Figure, np.ndarray]:
    """A new figure in the book's style; ``axes`` is always a 2-D array (nrows x ncols)."""
    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)
    return fig, axes


def label(ax: Axes, *, title: str, xlabel: str, ylabel: str) -> None:
    """Set a panel's title and axis labels; all three are required (units go in the labels).

    Returns nothing, so that a notebook cell ending with it shows the figure and no text.
    """
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def image_grid(
    images_NP: np.ndarray,
    *,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    suptitle: str,
    side: int = 28,
    cmap: str = "gray_r",
    symmetric: bool = False,
    panel_inches: float = 0.9,
) -> Figure:
    """Draw N flattened ``side`` x ``side`` images (pixels or decoder rows) as a grid.

    Args:
        images_NP: array of shape (N, side*side).
        titles: optional caption per image.
        suptitle: the figure's title (required: every figure says what it shows).
        symmetric: colour scale symmetric around 0 with a diverging map (for decoder rows,
            whose entries have either sign); otherwise each image uses ``cmap`` over [0, 1].
    """
    images_NP = np.asarray(images_NP, dtype=np.float32)
    if images_NP.ndim != 2 or images_NP.shape[1] != side * side:
        raise ValueError(f"images must have shape (N, {side * side}), got {images_NP.shape}")
    n = len(images_NP)
    if n == 0:
        raise ValueError("no images to draw")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_inches * ncols, panel_inches * nrows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        image = images_NP[i].reshape(side, side)
        if symmetric:
            vmax = float(np.abs(image).max()) or 1.0
            ax.imshow(image, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        else:
            ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(suptitle)
    return fig
