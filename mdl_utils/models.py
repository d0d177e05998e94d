"""A small MNIST classifier whose hidden layer the SAEs of chapter 7 explain.

The paper's method (section 4 of the paper brief, step 1) accepts two tolerances: the SAE's
reconstruction MSE, or the increase of the *model's own* loss when the SAE's reconstruction
replaces the real activations. This module supplies the model for the second one: an MLP
``784 -> 256 -> ReLU -> 256 -> ReLU -> 10``, split explicitly into two halves at the first
hidden layer,

- :meth:`MLPClassifier.to_hidden`: pixels -> hidden activations ``h_NH`` (after the ReLU,
  so non-negative, ``H = hidden[0]`` units);
- :meth:`MLPClassifier.from_hidden`: hidden activations -> logits (the rest of the network,
  itself non-linear),

so that running the model "with the SAE spliced in" is ``from_hidden(sae(to_hidden(x)))``.
:func:`splice_loss` measures what the splice costs: the increase of the test cross-entropy in
nats per sample, with the accuracy beside it.

Training is seeded (initialisation and batch order) and runs on the CPU; :func:`save_classifier`
writes ``<stem>.safetensors`` (weights, float32 or float16) and ``<stem>.json`` (config,
metrics), and :func:`load_classifier` reads them back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "ClassifierConfig",
    "MLPClassifier",
    "SpliceResult",
    "ClassifierHistory",
    "train_classifier",
    "hidden_activations",
    "cross_entropy",
    "accuracy",
    "splice_loss",
    "save_classifier",
    "load_classifier",
    "train_or_load_classifier",
    "CLASSIFIER_FORMAT_VERSION",
]

#: Bumped whenever the saved layout or the meaning of a saved field changes.
CLASSIFIER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that determines a trained classifier (with the data).

    Attributes:
        hidden: widths of the hidden layers; the SAEs see the first one (after its ReLU).
        epochs: passes over the training digits.
        batch_size: digits per Adam step.
        lr: Adam's peak learning rate; it decays linearly to zero over training.
        weight_decay: decoupled weight decay (AdamW).
        seed: seeds the initialisation and the batch order.
        n_train: training digits used (first n of the 60,000; ``None`` = all).
    """

    hidden: tuple[int, ...] = (256, 256)
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    n_train: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive integers, got {self.hidden!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.n_train is not None and (not isinstance(self.n_train, int) or self.n_train < 1):
            raise ValueError(f"n_train must be a positive integer or None, got {self.n_train!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def key(self) -> str:
        """A short hash of the config (the cache folder's name)."""
        payload = json.dumps({"format": CLASSIFIER_FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class MLPClassifier(nn.Module):
    """An MLP ``d_in -> hidden[0] -> ReLU -> ... -> hidden[-1] -> ReLU -> n_classes``.

    Split into two halves at the first hidden layer: ``to_hidden`` (the first linear layer and
    its ReLU) and ``from_hidden`` (everything after it). ``forward(x)`` is
    ``from_hidden(to_hidden(x))``.
    """

    def __init__(
        self, hidden: tuple[int, ...] = (256, 256), *, d_in: int = 784, n_classes: int = 10, seed: int | None = None
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must list at least one positive width, got {hidden!r}")
        if d_in < 1 or n_classes < 2:
            raise ValueError(f"need d_in >= 1 and n_classes >= 2, got {d_in}, {n_classes}")
        self.d_in, self.hidden, self.n_classes = d_in, hidden, n_classes
        if seed is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        self.to_hidden_net = nn.Sequential(nn.Linear(d_in, hidden[0]), nn.ReLU())
        rest: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:]):
            rest += [nn.Linear(a, b), nn.ReLU()]
        rest.append(nn.Linear(hidden[-1], n_classes))
        self.from_hidden_net = nn.Sequential(*rest)
        if seed is not None:
            torch.random.set_rng_state(state)

    @property
    def d_hidden(self) -> int:
        """Width of the spliced hidden layer (the SAEs' ``d_in``)."""
        return self.hidden[0]

    def to_hidden(self, x_NP: Tensor) -> Tensor:
        """Hidden activations ``h_NH`` (after the ReLU) of pixels ``x_NP``."""
        if x_NP.ndim != 2 or x_NP.shape[1] != self.d_in:
            raise ValueError(f"pixels must have shape (samples, {self.d_in}), got {tuple(x_NP.shape)}")
        return self.to_hidden_net(x_NP)

    def from_hidden(self, h_NH: Tensor) -> Tensor:
        """Logits ``(N, n_classes)`` from hidden activations ``h_NH`` (real or reconstructed)."""
        if h_NH.ndim != 2 or h_NH.shape[1] != self.d_hidden:
            raise ValueError(f"hidden activations must have shape (samples, {self.d_hidden}), got {tuple(h_NH.shape)}")
        return self.from_hidden_net(h_NH)

    def forward(self, x_NP: Tensor) -> Tensor:
        """Logits ``(N, n_classes)`` of pixels ``x_NP``: ``from_hidden(to_hidden(x_NP))``."""
        return self.from_hidden(self.to_hidden(x_NP))

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this classifier's shape."""
        return {"hidden": list(self.hidden), "d_in": self.d_in, "n_classes": self.n_classes}


@dataclass(frozen=True)
class SpliceResult:
    """The classifier's test loss with and without an SAE reconstruction spliced in.

    Attributes:
        ce_clean: mean cross-entropy of the unmodified model, nats per sample.
        ce_spliced: mean cross-entropy with the reconstruction in place of the hidden layer.
        ce_increase: ``ce_spliced - ce_clean`` (nats per sample; the downstream tolerance's loss).
        accuracy_clean, accuracy_spliced: fraction of samples classified correctly.
        mse: reconstruction MSE per hidden unit (mean over samples and units).
        n_samples: number of samples.
    """

    ce_clean: float
    ce_spliced: float
    ce_increase: float
    accuracy_clean: float
    accuracy_spliced: float
    mse: float
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tensor(x: Any, name: str, *, cols: int | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
    t = t.detach().to(torch.float32)
    if t.ndim != 2 or t.shape[0] == 0 or (cols is not None and t.shape[1] != cols):
        want = f"(samples, {cols})" if cols is not None else "(samples, dimension)"
        raise ValueError(f"{name} must be a non-empty {want} array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _labels(y: Any, n: int, n_classes: int) -> Tensor:
    t = y if isinstance(y, Tensor) else torch.from_numpy(np.array(y))
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"labels must be a 1-D array of {n} class indices, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    t = t.to(torch.long)
    if n and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {int(t.min())}..{int(t.max())}")
    return t


@dataclass
class ClassifierHistory:
    """Per-epoch training loss (nats per sample) and wall time."""

    train_ce: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_classifier(config: ClassifierConfig, x_train: Any, y_train: Any) -> tuple[MLPClassifier, ClassifierHistory]:
    """Train :class:`MLPClassifier` with AdamW (learning rate decaying linearly to 0), seeded.

    The same config, data and torch thread count give bit-identical weights.
    """
    x = _tensor(x_train, "x_train")
    y = _labels(y_train, len(x), 10)
    if config.n_train is not None:
        x, y = x[: config.n_train], y[: config.n_train]
    model = MLPClassifier(config.hidden, d_in=x.shape[1], seed=config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
    gen = torch.Generator().manual_seed(config.seed)
    history = ClassifierHistory()
    start = time.perf_counter()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        total_loss = 0.0
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        history.train_ce.append(total_loss / len(x))
    model.eval()
    history.seconds = time.perf_counter() - start
    return model, history


@torch.no_grad()
def hidden_activations(model: MLPClassifier, x: Any, *, batch_size: int = 8192) -> np.ndarray:
    """The spliced layer's activations ``h_NH`` of pixels ``x`` (N, 784), float32 numpy."""
    x_NP = _tensor(x, "pixels", cols=model.d_in)
    parts = [model.to_hidden(x_NP[i : i + batch_size]).numpy() for i in range(0, len(x_NP), batch_size)]
    return np.concatenate(parts)


@torch.no_grad()
def _logits_from_hidden(model: MLPClassifier, h: Any, batch_size: int) -> Tensor:
    h_NH = _tensor(h, "hidden activations", cols=model.d_hidden)
    return torch.cat([model.from_hidden(h_NH[i : i + batch_size]) for i in range(0, len(h_NH), batch_size)])


def cross_entropy(model: MLPClassifier, h: Any, y: Any, *, batch_size: int = 8192) -> float:
    """Mean cross-entropy (nats per sample) of the classifier run from hidden activations ``h``."""
    logits = _logits_from_hidden(model, h, batch_size)
    labels = _labels(y, len(logits), model.n_classes)
    return float(nn.functional.cross_entropy(logits.double(), labels))


def accuracy(model: MLPClassifier, x: Any, y: Any, *, batch_size: int = 8192) -> float:
    """Fraction of digits ``x`` (pixels, N x 784) classified correctly."""
    with torch.no_grad():
        x_NP = _tensor(x, "pixels", cols=model.d_in)
        logits = torch.cat([model(x_NP[i : i + batch_size]) for i in range(0, len(x_NP), batch_size)])
    labels = _labels(y, len(logits), model.n_classes)
    return float((logits.argmax(1) == labels).double().mean())


def splice_loss(model: MLPClassifier, h: Any, h_hat: Any, y: Any, *, batch_size: int = 8192) -> SpliceResult:
    """What replacing the hidden activations ``h`` by ``h_hat`` costs the classifier.

    Args:
        model: the classifier.
        h: the real hidden activations of the samples (N, H) (from :func:`hidden_activations`).
        h_hat: their replacement, e.g. an SAE's reconstruction (N, H).
        y: the samples' labels (N,).

    Returns:
        :class:`SpliceResult`: cross-entropy clean and spliced (nats per sample), their
        difference, both accuracies and the reconstruction MSE per hidden unit.
    """
    h_t = _tensor(h, "h", cols=model.d_hidden)
    h_hat_t = _tensor(h_hat, "h_hat", cols=model.d_hidden)
    if h_t.shape != h_hat_t.shape:
        raise ValueError(f"h {tuple(h_t.shape)} and h_hat {tuple(h_hat_t.shape)} differ in shape")
    labels = _labels(y, len(h_t), model.n_classes)
    clean = _logits_from_hidden(model, h_t, batch_size).double()
    spliced = _logits_from_hidden(model, h_hat_t, batch_size).double()
    ce_clean = float(nn.functional.cross_entropy(clean, labels))
    ce_spliced = float(nn.functional.cross_entropy(spliced, labels))
    return SpliceResult(
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        ce_increase=ce_spliced - ce_clean,
        accuracy_clean=float((clean.argmax(1) == labels).double().mean()),
        accuracy_spliced=float((spliced.argmax(1) == labels).double().mean()),
        mse=float((h_hat_t.double() - h_t.double()).pow(2).mean()),
        n_samples=len(h_t),
    )


def _stem(path: str | os.PathLike[str]) -> Path:
    stem = Path(path)
    return stem.with_suffix("") if stem.suffix in {".safetensors", ".json"} else stem


def save_classifier(
    model: MLPClassifier,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (weights in ``dtype``) and ``<path>.json`` (config, metadata).

    Each file goes to a temporary name first and is moved into place, so a reader never sees a
    half-written file. Returns the two paths.
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.parent / (stem.name + ".safetensors")
    meta_path = stem.parent / (stem.name + ".json")
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    for target, write in (
        (weights, lambda tmp: save_file(tensors, tmp)),
        (
            meta_path,
            lambda tmp: Path(tmp).write_text(
                json.dumps(
                    {
                        "format_version": CLASSIFIER_FORMAT_VERSION,
                        "class": type(model).__name__,
                        "config": model.config(),
                        "dtype": str(dtype).removeprefix("torch."),
                        "metadata": metadata or {},
                    },
                    indent=2,
                    sort_keys=True,
                )
            ),
        ),
    ):
        fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return weights, meta_path


def load_classifier(path: str | os.PathLike[str]) -> tuple[MLPClassifier, dict[str, Any]]:
    """Read a classifier written by :func:`save_classifier` (weights as float32) and its metadata.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the file was written by another format version.
    """
    stem = _stem(path)
    meta_path = stem.parent / (stem.name + ".json")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != CLASSIFIER_FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has classifier format {meta.get('format_version')}, "
            f"this code reads {CLASSIFIER_FORMAT_VERSION}"
        )
    cfg = meta["config"]
    model = MLPClassifier(tuple(cfg["hidden"]), d_in=int(cfg["d_in"]), n_classes=int(cfg["n_classes"]), seed=0)
    state = {k: v.to(torch.float32) for k, v in load_file(str(stem.parent / (stem.name + ".safetensors"))).items()}
    model.load_state_dict(state)
    model.eval()
    return model, meta.get("metadata", {})


def train_or_load_classifier(
    config: ClassifierConfig, cache: str | os.PathLike[str]
) -> tuple[MLPClassifier, dict[str, Any]]:
    """The classifier for ``config``, trained on MNIST once and cached under ``cache/<key>``.

    Returns the model and its metadata: the config, the training time, and the test
    accuracy and cross-entropy measured right after training.
    """
    from mdl_utils.data import load_mnist

    stem = Path(cache) / f"classifier-{config.key()}" / "classifier"
    if (stem.parent / "classifier.json").is_file():
        return load_classifier(stem)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    model, history = train_classifier(config, x_train, y_train)
    h_test = hidden_activations(model, x_test)
    metadata = {
        "config": config.to_dict(),
        "train_seconds": round(history.seconds, 1),
        "train_ce_last_epoch": history.train_ce[-1],
        "test_accuracy": accuracy(model, x_test, y_test),
        "test_ce": cross_entropy(model, h_test, y_test),
    }
    save_classifier(model, stem, metadata=metadata)
    return load_classifier(stem)
