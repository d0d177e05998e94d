"""Real English prose for chapter 8, installed by package name from a registry.

The text is the Python 3.11 documentation as Debian ships it (the package ``python3.11-doc``,
about 530 HTML pages of prose, tutorials and reference). :func:`fetch_corpus` downloads the
package with ``apt-get download`` (no root needed), checks its SHA-256 against the one apt's
index records, and unpacks it with ``dpkg-deb -x``; :func:`read_documents` turns each page's
main text into a :class:`Document` (paragraphs only: code blocks, navigation and tables of
contents are dropped); :func:`split_documents` splits them into train, validation and test *by
document* (a page never straddles two splits), from a hash of its path, so adding or removing
a page moves no other page between splits.

Where ``apt-get`` is not available (macOS, Windows), point ``MDL_CORPUS_DIR`` at an unpacked
copy of the package (or at any folder of Sphinx HTML pages) and nothing is downloaded.

Every file read is checksummed: :attr:`Corpus.fingerprint` is a SHA-256 over the relative paths
and contents of the pages, so activations computed from the text can be cached and reused
safely (:mod:`mdl_utils.text_activations`).
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PACKAGE",
    "PINNED_VERSION",
    "Corpus",
    "CorpusError",
    "Document",
    "fetch_corpus",
    "corpus_dir",
    "page_text",
    "read_documents",
    "split_documents",
]

#: The Debian package that carries the text.
PACKAGE = "python3.11-doc"
#: The version the committed results were computed from (Debian 12's security update 9). If
#: the mirror no longer has it, the candidate version is used and recorded instead.
PINNED_VERSION = "3.11.2-6+deb12u9"
#: Where the HTML pages lie inside the unpacked package.
HTML_SUBDIR = Path("usr/share/doc/python3.11/html")
#: Paragraphs shorter than this many words are dropped (headings, captions, fragments).
MIN_WORDS = 5
#: Splits and their shares of the documents.
SPLITS: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))


class CorpusError(RuntimeError):
    """The text cannot be had: no ``apt-get``, no such package, a bad checksum, an empty folder."""


@dataclass(frozen=True)
class Document:
    """One page's prose: ``name`` is its path relative to the HTML root (``library/os.html``),
    ``paragraphs`` its paragraphs in order, whitespace normalised."""

    name: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)

    @property
    def n_words(self) -> int:
        return sum(len(p.split()) for p in self.paragraphs)


@dataclass(frozen=True)
class Corpus:
    """Where the pages are and what they are.

    Attributes:
        root: the HTML folder.
        package, version, deb_sha256: the Debian package the pages came from (``None`` for a
            folder given by ``MDL_CORPUS_DIR`` that is not an unpacked package).
        fingerprint: SHA-256 over every page's relative path and bytes.
        n_pages: HTML pages under ``root``.
    """

    root: Path
    package: str | None
    version: str | None
    deb_sha256: str | None
    fingerprint: str
    n_pages: int


# --------------------------------------------------------------------------------------------
# Getting the package
# --------------------------------------------------------------------------------------------


def corpus_dir() -> Path:
    """Where the unpacked package is kept: ``$MDL_CORPUS_DIR`` if set, else
    ``$MDL_CACHE_DIR/corpus`` (default ``~/.cache/mdl-sae/corpus``)."""
    env = os.environ.get("MDL_CORPUS_DIR")
    if env:
        return Path(env).expanduser()
    from mdl_utils.profiles import cache_dir

    return cache_dir() / "corpus"


def _run(args: Sequence[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise CorpusError(
            f"`{args[0]}` is not available on this machine: chapter 8's text is Debian's {PACKAGE} "
            f"package; install it elsewhere and set MDL_CORPUS_DIR to the unpacked folder"
        ) from err
    if proc.returncode != 0:
        raise CorpusError(f"`{' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _index_sha256(version: str, cwd: Path) -> str:
    """The SHA-256 that apt's index records for ``PACKAGE=version``."""
    record = _run(["apt-cache", "show", f"{PACKAGE}={version}"], cwd)
    found = re.search(r"^SHA256: ([0-9a-f]{64})$", record, flags=re.M)
    if not found:
        raise CorpusError(f"apt's index gives no SHA-256 for {PACKAGE}={version}")
    return found.group(1)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(root: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    pages = sorted(root.rglob("*.html"))
    for page in pages:
        h.update(page.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(page.read_bytes()).digest())
    return h.hexdigest(), len(pages)


def _refresh_index(cwd: Path, progress: bool) -> bool:
    """Run ``apt-get update`` (as root, or through password-less ``sudo``); whether it ran."""
    command = ["apt-get", "update", "-qq"]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        command = ["sudo", "-n", *command]
    if progress:
        print(f"{PACKAGE}={PINNED_VERSION} is not in apt's index: refreshing it ({' '.join(command)})", flush=True)
    try:
        _run(command, cwd)
    except CorpusError:
        return False
    return True


def _choose_version(cwd: Path, progress: bool) -> tuple[str, str]:
    """The version to download and the SHA-256 apt records for it: :data:`PINNED_VERSION`
    when the index has it (refreshed once if it has not), else the candidate version."""
    try:
        return PINNED_VERSION, _index_sha256(PINNED_VERSION, cwd)
    except CorpusError:
        pass
    # A machine whose package index was never refreshed knows only the release's version:
    # refresh it once before settling for another version than the committed results used.
    if _refresh_index(cwd, progress):
        try:
            return PINNED_VERSION, _index_sha256(PINNED_VERSION, cwd)
        except CorpusError:
            pass
    policy = _run(["apt-cache", "policy", PACKAGE], cwd)
    found = re.search(r"Candidate: (\S+)", policy)
    if not found or found.group(1) == "(none)":
        raise CorpusError(f"apt knows no package {PACKAGE} (run `apt-get update`?)")
    if progress:
        print(f"{PACKAGE}={PINNED_VERSION} is not available: using the candidate {found.group(1)}", flush=True)
    return found.group(1), _index_sha256(found.group(1), cwd)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (``flock``; no lock where there is no ``fcntl``),
    so that two processes fetching into one folder (two chapters, or a chapter and a test run
    side by side) take turns instead of both refreshing apt's index and unpacking."""
    try:
        import fcntl
    except ImportError:  # Windows: no apt-get there either
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_into(folder: Path, stamp: Path, progress: bool) -> None:
    """Download the package, check its SHA-256 against apt's record and unpack it into
    ``folder``; ``stamp`` is written last, so a folder without it holds nothing usable."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        work = Path(tmp)
        version, expected = _choose_version(work, progress)
        if progress:
            print(f"downloading {PACKAGE}={version} with apt-get ...", flush=True)
        _run(["apt-get", "download", f"{PACKAGE}={version}"], work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise CorpusError(f"apt-get download {PACKAGE}={version} left {len(debs)} .deb files, not one")
        deb = debs[0]
        got = _sha256_file(deb)
        if got != expected:
            raise CorpusError(f"{deb.name}: SHA-256 {got} differs from apt's record {expected}")
        unpacked = work / "unpacked"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], work)
        target = folder / "usr"
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked / "usr", target)
        stamp.write_text(f"{PACKAGE}\n{version}\n{got}\n")


def fetch_corpus(dest: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Corpus:
    """The unpacked ``python3.11-doc`` package, downloaded and checked on first use.

    With ``MDL_CORPUS_DIR`` set (and no ``dest``), that folder is used as it is: either an
    unpacked package (its HTML under ``usr/share/doc/python3.11/html``) or an HTML folder.
    Otherwise the package is fetched into ``dest`` (default :func:`corpus_dir`): the pinned
    version if apt's index has it (the index is refreshed once, as root or through sudo,
    when it has not), else the candidate; its SHA-256 must equal apt's record.

    Raises:
        CorpusError: no ``apt-get``/``dpkg-deb``, the package is unknown, the checksum differs,
            or the folder holds no HTML pages (each message says which).
    """
    given = dest is None and bool(os.environ.get("MDL_CORPUS_DIR"))
    folder = Path(dest) if dest is not None else corpus_dir()
    stamp = folder / "package.txt"
    if given and not stamp.is_file():
        root = folder / HTML_SUBDIR if (folder / HTML_SUBDIR).is_dir() else folder
        fingerprint, n = _fingerprint(root)
        if n == 0:
            raise CorpusError(f"MDL_CORPUS_DIR={folder} holds no HTML pages")
        return Corpus(root, None, None, None, fingerprint, n)
    if not stamp.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder / ".lock"):  # a second process waits here, then finds the stamp
            if not stamp.is_file():
                _download_into(folder, stamp, progress)
    package, version, sha = stamp.read_text().split()
    root = folder / HTML_SUBDIR
    fingerprint, n = _fingerprint(root)
    if n == 0:
        raise CorpusError(f"{root} holds no HTML pages: delete {folder} to fetch the package again")
    return Corpus(root, package, version, sha, fingerprint, n)


# --------------------------------------------------------------------------------------------
# From HTML to paragraphs
# --------------------------------------------------------------------------------------------

_BLOCKS = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "blockquote", "div", "table"}
#: Left out with everything inside: code blocks and what is not text.
_SKIPPED = {"pre", "script", "style"}


class _MainText(html.parser.HTMLParser):
    """Paragraph text inside Sphinx's main body (``div role="main"``), code blocks left out
    (inline code, such as a function's name in a sentence, is kept)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.divs = 0  # divs open since (and including) the main one; 0: outside it
        self.skip_until: int | None = None  # the div depth at which a skipped div closes
        self.skip_tags = 0  # open <pre>/<script>/<style>
        self.current: list[str] = []
        self.paragraphs: list[str] = []

    @property
    def skipping(self) -> bool:
        return self.skip_until is not None or self.skip_tags > 0

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.current).replace("\u00b6", "")).strip()
        self.current = []
        if len(text.split()) >= MIN_WORDS:
            self.paragraphs.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.divs == 0:
            if tag == "div" and ("role", "main") in attrs:
                self.divs = 1
            return
        if tag in _BLOCKS and not self.skipping:
            self.flush()
        if tag == "div":
            self.divs += 1
            classes = " ".join(v or "" for k, v in attrs if k == "class")
            if self.skip_until is None and ("highlight" in classes or "toctree" in classes):
                self.skip_until = self.divs
        elif tag in _SKIPPED:
            self.skip_tags += 1

    def handle_endtag(self, tag: str) -> None:
        if self.divs == 0:
            return
        if tag in _SKIPPED and self.skip_tags:
            self.skip_tags -= 1
        if tag in _BLOCKS and not self.skipping:
            self.flush()
        if tag == "div":
            if self.skip_until == self.divs:
                self.skip_until = None
            self.divs -= 1
            if self.divs == 0:
                self.flush()

    def handle_data(self, data: str) -> None:
        if self.divs and not self.skipping:
            self.current.append(data)


def page_text(markup: str) -> list[str]:
    """The paragraphs of one Sphinx HTML page's main body, code blocks left out."""
    parser = _MainText()
    parser.feed(markup)
    parser.close()
    parser.flush()
    return parser.paragraphs


def read_documents(corpus: Corpus) -> list[Document]:
    """Every page with prose, as a :class:`Document`, sorted by name (pages without a
    paragraph of ``MIN_WORDS`` words, such as indexes, are left out)."""
    docs = []
    for page in sorted(corpus.root.rglob("*.html")):
        name = page.relative_to(corpus.root).as_posix()
        if name.startswith(("_static/", "genindex")):
            continue
        paragraphs = page_text(page.read_text(encoding="utf-8", errors="replace"))
        if paragraphs:
            docs.append(Document(name, tuple(paragraphs)))
    return docs


def _unit_interval(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_documents(
    docs: Sequence[Document], splits: Sequence[tuple[str, float]] = SPLITS
) -> dict[str, list[Document]]:
    """Train, validation and test by document: a page goes to the split whose share of
    [0, 1) holds the hash of its name, so the split of a page never depends on the others."""
    total = sum(share for _, share in splits)
    if not splits or any(share <= 0 for _, share in splits) or abs(total - 1.0) > 1e-9:
        raise ValueError(f"split shares must be positive and sum to 1; got {list(splits)}")
    out: dict[str, list[Document]] = {name: [] for name, _ in splits}
    for doc in docs:
        u, edge = _unit_interval(doc.name), 0.0
        for name, share in splits:
            edge += share
            if u < edge:
                out[name].append(doc)
                break
        else:
            out[splits[-1][0]].append(doc)
    return out
