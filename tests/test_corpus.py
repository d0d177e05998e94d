"""Tests for mdl_utils.corpus: the prose is taken from Sphinx's main body without code, split
by document from a hash of the page's name, and the Debian package is checked before use."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from mdl_utils.corpus import (
    HTML_SUBDIR,
    CorpusError,
    Document,
    fetch_corpus,
    page_text,
    read_documents,
    split_documents,
)

PAGE = """<html><body>
<div class="sphinxsidebar">Navigation text that is not part of the page at all.</div>
<div class="body" role="main">
<h1>4. More Control Flow Tools<a class="headerlink">\u00b6</a></h1>
<p>Besides the <code class="docutils">while</code> statement just introduced, Python uses the
   usual flow control statements.</p>
<div class="highlight-python3 notranslate"><div class="highlight"><pre>
for x in range(10): print("this is code and must not appear")
</pre></div></div>
<ul><li><p>A list item that is long enough to count as prose.</p></li><li>Too short.</li></ul>
<div class="toctree-wrapper compound"><ul><li>A table of contents entry with many words in it</li></ul></div>
<p>After the block, the text goes on &amp; ends here.</p>
</div>
<div class="footer">Copyright notice with plenty of words in it as well.</div>
</body></html>"""


def test_page_text_keeps_the_main_prose_and_drops_code_navigation_and_fragments():
    assert page_text(PAGE) == [
        "4. More Control Flow Tools",
        "Besides the while statement just introduced, Python uses the usual flow control statements.",
        "A list item that is long enough to count as prose.",
        "After the block, the text goes on & ends here.",
    ]


def _docs(n: int) -> list[Document]:
    return [Document(f"page{i}.html", ("one two three four five",)) for i in range(n)]


def test_split_is_by_document_from_a_hash_of_its_name_alone():
    docs = _docs(400)
    split = split_documents(docs)
    assert sorted(d.name for part in split.values() for d in part) == sorted(d.name for d in docs)
    # By hand: the first 8 bytes of SHA-256 of the name, as a fraction of 2**64, against 0.8, 0.9.
    for name, part in split.items():
        for d in part:
            u = int.from_bytes(hashlib.sha256(d.name.encode()).digest()[:8], "big") / 2**64
            assert name == ("train" if u < 0.8 else "val" if u < 0.9 else "test")
    # Shares near the targets (binomial: 400 pages, 3 standard deviations).
    assert abs(len(split["train"]) / 400 - 0.8) < 3 * (0.8 * 0.2 / 400) ** 0.5
    # A page's split does not depend on which other pages exist.
    fewer = split_documents(docs[::3])
    assert {d.name: k for k, v in fewer.items() for d in v}.items() <= {
        d.name: k for k, v in split.items() for d in v
    }.items()
    with pytest.raises(ValueError, match="sum to 1"):
        split_documents(docs, (("train", 0.5), ("test", 0.4)))


def test_a_given_folder_is_read_as_it_is_and_an_empty_one_is_refused(tmp_path, monkeypatch):
    html = tmp_path / "corpus" / HTML_SUBDIR / "tutorial"
    html.mkdir(parents=True)
    (html / "a.html").write_text(PAGE)
    monkeypatch.setenv("MDL_CORPUS_DIR", str(tmp_path / "corpus"))
    corpus = fetch_corpus()
    assert corpus.root == tmp_path / "corpus" / HTML_SUBDIR and corpus.n_pages == 1 and corpus.package is None
    (doc,) = read_documents(corpus)
    assert doc.name == "tutorial/a.html" and doc.n_words == sum(len(p.split()) for p in page_text(PAGE))
    # The fingerprint follows the bytes of the pages.
    (html / "a.html").write_text(PAGE.replace("ends here", "ends there"))
    assert fetch_corpus().fingerprint != corpus.fingerprint
    monkeypatch.setenv("MDL_CORPUS_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no HTML pages"):
        fetch_corpus()


def _fake_tools(bin_dir: Path, deb_bytes: bytes, recorded_sha: str) -> None:
    """apt-cache, apt-get and dpkg-deb stand-ins: the index records ``recorded_sha``, the
    download gives ``deb_bytes``, and unpacking writes one HTML page."""
    bin_dir.mkdir()
    scripts = {
        "apt-cache": f'#!/bin/sh\necho "Package: python3.11-doc"\necho "SHA256: {recorded_sha}"\n',
        "apt-get": f"#!/bin/sh\nprintf '%s' '{deb_bytes.decode()}' > python3.11-doc_x_all.deb\n",
        "dpkg-deb": f'#!/bin/sh\nmkdir -p "$3/{HTML_SUBDIR}"\nprintf "%s" \'{PAGE}\' > "$3/{HTML_SUBDIR}/p.html"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_download_is_checked_against_apts_record(tmp_path, monkeypatch):
    monkeypatch.delenv("MDL_CORPUS_DIR", raising=False)
    good = b"a debian package"
    _fake_tools(tmp_path / "bin", good, hashlib.sha256(good).hexdigest())
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    corpus = fetch_corpus(tmp_path / "ok", progress=False)
    assert corpus.deb_sha256 == hashlib.sha256(good).hexdigest() and corpus.n_pages == 1
    shutil.rmtree(tmp_path / "bin")
    _fake_tools(tmp_path / "bin", good, "0" * 64)
    with pytest.raises(CorpusError, match="differs from apt's record"):
        fetch_corpus(tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "package.txt").exists()  # nothing half-made is kept


def test_without_apt_the_message_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("MDL_CORPUS_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-cache here
    with pytest.raises(CorpusError, match="MDL_CORPUS_DIR"):
        fetch_corpus(tmp_path / "c", progress=False)


def _stale_index_tools(bin_dir: Path, deb: bytes, update_works: bool) -> Path:
    """apt stand-ins whose index lacks the pinned version until ``apt-get update`` has run
    (which fails when ``update_works`` is false); the candidate is an older version."""
    from mdl_utils.corpus import PINNED_VERSION

    marker = bin_dir / "updated"
    sha = hashlib.sha256(deb).hexdigest()
    bin_dir.mkdir()
    scripts = {
        "apt-cache": f"""#!/bin/sh
if [ "$1" = policy ]; then echo "  Candidate: 0.old"; exit 0; fi
case "$2" in *={PINNED_VERSION}) [ -e "{marker}" ] || exit 100;; esac
echo "SHA256: {sha}"
""",
        "apt-get": f"""#!/bin/sh
if [ "$1" = update ]; then {"touch " + str(marker) if update_works else "exit 1"}; exit 0; fi
echo "$2" > {bin_dir / "asked"}
printf '%s' '{deb.decode()}' > python3.11-doc_x_all.deb
""",
        "dpkg-deb": f'#!/bin/sh\nmkdir -p "$3/{HTML_SUBDIR}"\nprintf "%s" \'{PAGE}\' > "$3/{HTML_SUBDIR}/p.html"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir / "asked"


@pytest.mark.skipif(os.geteuid() != 0, reason="the refresh runs apt-get directly only as root")
@pytest.mark.parametrize("update_works", [True, False])
def test_a_stale_index_is_refreshed_before_another_version_is_used(tmp_path, monkeypatch, update_works):
    from mdl_utils.corpus import PINNED_VERSION

    monkeypatch.delenv("MDL_CORPUS_DIR", raising=False)
    asked = _stale_index_tools(tmp_path / "bin", b"a debian package", update_works)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    corpus = fetch_corpus(tmp_path / "c", progress=False)
    want = PINNED_VERSION if update_works else "0.old"
    assert corpus.version == want and asked.read_text().strip() == f"python3.11-doc={want}"


def test_two_fetches_into_one_folder_take_turns_and_download_once(tmp_path, monkeypatch):
    """Chapter 8 and the unit tests may fetch into the same cache side by side (`make test`
    runs targets in parallel): the second waits for the first and reuses its download."""
    import threading

    monkeypatch.delenv("MDL_CORPUS_DIR", raising=False)
    deb = b"a debian package"
    _fake_tools(tmp_path / "bin", deb, hashlib.sha256(deb).hexdigest())
    calls = tmp_path / "downloads"
    slow_get = (
        f"#!/bin/sh\necho x >> {calls}\nsleep 1\nprintf '%s' '{deb.decode()}' > python3.11-doc_x_all.deb\n"
    )
    (tmp_path / "bin" / "apt-get").write_text(slow_get)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    got, errors = [], []

    def fetch() -> None:
        try:
            got.append(fetch_corpus(tmp_path / "c", progress=False))
        except Exception as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert calls.read_text().count("x") == 1  # one download; the other fetch found it done
    assert got[0].fingerprint == got[1].fingerprint and got[0].n_pages == 1
