# Fresh-machine entry points: `make test` and `make demo` do all set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
SHARED ?= ../shared
INDEX  ?= indexes/flickr8k-tiny
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test test-fast demo bench clean

# venv + pinned install. constraints.txt pins torch==2.13.0 in every pip call: an unpinned
# resolve would pull a multi-GB CUDA build. The torchvision shim lives in retrieval/_compat.py.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra --ignore=tests/test_build.py

# With ../shared (this project's fixtures): index Flickr 1k with the tiny fixture CLIP, then search.
# Elsewhere: `make demo CORPUS=/path/to/corpus` uses open_clip ViT-B-32 laion2b weights from the hub.
demo: setup
	$(PY) scripts/demo.py --shared $(SHARED) --out $(INDEX) $(if $(CORPUS),--corpus $(CORPUS),)

bench: setup
	$(PY) scripts/bench_build.py

clean:
	rm -rf $(VENV) indexes/*/ .pytest_cache
