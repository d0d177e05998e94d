# MDL-SAE: two commands, `make book` and `make test` (see README.md).
#
#   make book [PROFILE=full|quick]   set up .venv, execute every chapter once, build the HTML book
#                                    (default full: paper-scale results, read from results/full/
#                                    where training would take hours)
#   make test                        the same set-up and execution (quick profile), then pytest,
#                                    nbval against the committed references (tests/reference/),
#                                    a strict book build, and the built book checked in headless
#                                    Chromium (make browser)
#   make references                  refresh tests/reference/ on purpose (review the diff)
#
# Chapters are Jupytext sources in notebooks/. Each is converted, executed once by papermill
# with `profile` injected, and written to book/chapters/, which the book renders (Jupyter Book
# never re-executes). An executed chapter is rebuilt whenever its source, the mdl_utils package,
# the installed dependencies or the profile change, so stored outputs cannot go stale.

PROFILE ?= full
# Targets run side by side, JOBS at a time (default: one per CPU core). Every chapter, like the
# unit tests, runs torch on one thread, so running them together changes no number, only the
# wall time (two-thread processes side by side on two cores were several times slower).
# Each target's output is printed in one piece when it ends. `make test JOBS=1` runs one at a time.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
MAKEFLAGS += --jobs=$(JOBS) --output-sync=target
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# The venv's tools (and its Jupyter kernel) come first.
export PATH := $(BIN):$(PATH)
# Trained SAEs are cached here (mdl_utils.profiles.cache_dir); `make clean` removes them.
export MDL_CACHE_DIR ?= $(CURDIR)/_build/cache
# torch picks its CPU kernels by the vector instructions it finds, and a training run ends in
# other last digits on an AVX-512 machine than on an AVX2-only one (chapter 7's classifier: test
# accuracy 0.9824 against 0.9816), so references written on one failed on the other. Every x86-64
# machine we build on has AVX2: pin torch's kernels to it there, and all of them agree.
ifeq ($(shell uname -m),x86_64)
export ATEN_CPU_CAPABILITY ?= avx2
endif

SOURCES := $(sort $(wildcard notebooks/*.py))
EXECUTED := $(patsubst notebooks/%.py,book/chapters/%.ipynb,$(SOURCES))
# The committed quick-profile outputs that nbval checks against (refresh: make references).
REFERENCES := $(patsubst notebooks/%.py,tests/reference/%.ipynb,$(SOURCES))
PACKAGE := $(sort $(wildcard mdl_utils/*.py))
# Committed paper-scale results, which the full profile reads instead of retraining.
RESULTS := $(shell find results -type f 2>/dev/null | sort)
PROFILE_STAMP := _build/profile

.PHONY: all book test chapters unit nbval references html browser setup lock clean FORCE
.DELETE_ON_ERROR:

all: book

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml requirements.lock
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	@touch $@

# Regenerate the lock file from the current .venv (after changing pins in pyproject.toml).
lock: $(INSTALLED)
	@{ echo "# Exact versions of every package the project installs (pip freeze of a working .venv, Python 3.11)."; \
	   echo "# Regenerate with: make lock"; \
	   $(VENV)/bin/python -m pip freeze --exclude-editable; } > requirements.lock

# Rewritten only when the profile differs from the last run's, so changing it re-executes.
$(PROFILE_STAMP): FORCE
	@mkdir -p $(@D)
	@echo "$(PROFILE)" | cmp -s - $@ || echo "$(PROFILE)" > $@

book/chapters/%.ipynb: notebooks/%.py $(PACKAGE) $(RESULTS) $(INSTALLED) $(PROFILE_STAMP) Makefile
	@mkdir -p book/chapters _build/prepared
	jupytext --quiet --to ipynb --output _build/prepared/$*.ipynb $<
	papermill --cwd book/chapters --kernel python3 --no-progress-bar \
	    -p profile "$$(cat $(PROFILE_STAMP))" _build/prepared/$*.ipynb _build/prepared/$*.executed.ipynb
	mv _build/prepared/$*.executed.ipynb $@

chapters: $(EXECUTED)

# Chapter 6 continues chapter 3's study (the quick profile's, in the model cache) at its
# reference tolerance, so it must not start before chapter 3 has finished it.
book/chapters/06_beyond.ipynb: book/chapters/03_mnist_mdl_sweep.ipynb

html: chapters
	jupyter-book build . --quiet -W -n --keep-going

book: html
	@echo "The book is in _build/html/index.html"

# Static checks first (ruff and mypy, configured in pyproject.toml): lint over the package,
# tests, benchmarks, book extension and chapter sources (unused imports, undefined names, ...), format and types
# over the package (every function annotated, checked bodies).
unit: $(INSTALLED)
	python -m ruff check mdl_utils tests benchmarks book/_ext notebooks
	python -m ruff format --check mdl_utils
	python -m mypy
	python -m pytest tests -m "not executed_chapters"

# nbval re-executes the committed references (tests/reference/, the quick-profile chapters with
# their outputs) and compares every cell marked NBVAL_CHECK_OUTPUT with the stored output, after
# the rules in tests/reference/sanitize.cfg (times, dates and paths masked; decimal numbers to 4
# significant digits). It runs after `chapters`, so the trained models come from the cache.
# tests/test_references.py checks that the references hold the current chapter code. First, the
# unit tests marked executed_chapters check the chapters just executed (their code is their source's,
# no cell failed); `unit` leaves them out, since it may run while the chapters execute.
nbval: chapters
	python -m pytest -p no:cacheprovider -m executed_chapters tests/test_project.py
	python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider \
	    --nbval-sanitize-with tests/reference/sanitize.cfg $(REFERENCES)

# Refresh the references on purpose after a change that moves a checked output: execute the
# chapters with the quick profile, then store them (outputs cleaned) for review and commit.
references: PROFILE := quick
references: chapters
	python tests/reference/refresh.py book/chapters tests/reference

# The built book in Debian's Chromium, headless (tests/browser): every page loads from 127.0.0.1
# with no console error, failed request or request to another host, its images load and its
# math is typeset; full-page screenshots go to _build/screenshots/. Installs chromium when it
# is missing (as root, or through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser: html
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	rm -rf _build/screenshots
	MDL_BOOK_BROWSER=1 python -m pytest -p no:cacheprovider tests/browser

test: PROFILE := quick
test: chapters unit nbval html browser

clean:
	rm -rf _build book/chapters
