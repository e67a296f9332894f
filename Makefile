# Fresh-machine entry points: `make test` and `make demo` do all set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
SHARED ?= ../shared
INDEX  ?= indexes/flickr8k-tiny
export HF_HUB_OFFLINE ?= 1

.PHONY: setup browser test test-fast demo bench serve clean

# venv + pinned install. constraints.txt pins torch==2.13.0 in every pip call: an unpinned
# resolve would pull a multi-GB CUDA build. The torchvision shim lives in retrieval/_compat.py.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,ray,comclip]'
	# clip-retrieval's real ClipClient and web front, for the drop-in tests: --no-deps, since its own
	# dependencies pin numpy<2 and an old pyarrow (nothing of it is imported by the engine)
	$(PIP) install -q --no-deps -c constraints.txt clip-retrieval
	touch $@

# The web-page test drives Debian's chromium through chromedriver; install them when missing
# (as root, or with sudo). If apt cannot install them, that one test skips with the reason.
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
	  echo "warning: could not install chromium + chromium-driver; the web-page test will skip"

setup: $(VENV)/.installed browser

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

# Serve the demo index (run `make demo` first) on http://127.0.0.1:8000
serve: setup
	$(VENV)/bin/retrieval serve $(INDEX)

clean:
	rm -rf $(VENV) indexes/*/ .pytest_cache
