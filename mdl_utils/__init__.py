"""mdl_utils: description length of sparse autoencoders (the MDL-SAE book's library).

Reproduces and extends Ayonrinde, Pearce and Sharkey (2024), *Interpretability as
Compression: Reconsidering SAE Explanations of Neural Activations with MDL-SAEs*
(arXiv:2410.11179). One module per concept:

- :mod:`mdl_utils.data`: MNIST, checked against the official checksums;
- :mod:`mdl_utils.dl`: description length of SAE latents and a real entropy coder;
- :mod:`mdl_utils.sae`, :mod:`mdl_utils.train`, :mod:`mdl_utils.sweep`: BatchTopK SAEs,
  their trainer and a resumable sweep runner;
- :mod:`mdl_utils.plots`: the book's shared figure style.

Submodules are imported on use (``import mdl_utils.dl``) so that importing the package is cheap.
"""

__version__ = "0.1.0"
