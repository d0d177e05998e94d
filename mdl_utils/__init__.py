"""mdl_utils: description length of sparse autoencoders (the MDL-SAE book's library).

Reproduces and extends Ayonrinde, Pearce and Sharkey (2024), *Interpretability as
Compression: Reconsidering SAE Explanations of Neural Activations with MDL-SAEs*
(arXiv:2410.11179). One module per concept:

- :mod:`mdl_utils.data`: MNIST, checked against the official checksums, and training splits;
- :mod:`mdl_utils.dl`: description length of SAE latents and a real entropy coder;
- :mod:`mdl_utils.sae`, :mod:`mdl_utils.train`, :mod:`mdl_utils.cache`,
  :mod:`mdl_utils.sweep`: BatchTopK SAEs, their trainer, the cache of trained SAEs and a
  resumable sweep runner;
- :mod:`mdl_utils.plots`: the book's shared figure style;
- :func:`mdl_utils.score` (:mod:`mdl_utils.scoring`): the description length of a saved SAE
  (SAELens, dictionary_learning or this book's format) on a file of activations.

Submodules are imported on use (``import mdl_utils.dl``) so that importing the package is cheap.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["score"]


def __getattr__(name: str) -> Any:
    # mdl_utils.score(...) without importing torch when the package is imported.
    if name == "score":
        from mdl_utils.scoring import score

        return score
    raise AttributeError(f"module 'mdl_utils' has no attribute {name!r}")
