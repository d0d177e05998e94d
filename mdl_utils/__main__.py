"""Command line: ``python -m mdl_utils COMMAND ...``.

Commands:
    dl      description length of a latent matrix (see ``mdl_utils.dl``)
    score   description length of a saved SAE (SAELens, dictionary_learning or this book's
            format) on a file of activations (see ``mdl_utils.scoring``)
    sweep   train a grid of SAEs, resumably (see ``mdl_utils.sweep``)
    mnist-sweep
            the chapter-3 MNIST MDL study under the resolved protocol, resumable
            (see ``mdl_utils.study``)
    epsilon-scan
            chapter 6 under the resolved protocol: chapter 3's study at several tolerances,
            power laws with intervals, rate-distortion curves per seed (resumable; see
            ``mdl_utils.epsilon_scan``)
    downstream
            chapter 7: SAEs on a classifier's hidden layer under a cross-entropy tolerance
            (see ``mdl_utils.downstream``)
    transformer
            chapter 8: the study on all-MiniLM-L6-v2's residual stream over the Python
            documentation, under fractions of variance unexplained and the embedding change
            (see ``mdl_utils.text_study``)
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "dl": "mdl_utils.dl",
    "score": "mdl_utils.scoring",
    "sweep": "mdl_utils.sweep",
    "mnist-sweep": "mdl_utils.study",
    "epsilon-scan": "mdl_utils.epsilon_scan",
    "downstream": "mdl_utils.downstream",
    "transformer": "mdl_utils.text_study",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in _COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in {"-h", "--help"} else sys.stdout)
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    module = importlib.import_module(_COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
