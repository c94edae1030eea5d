# minimoe: `make lab` to learn, `make test` to check everything. Both install what they need.
#
#   make lab        install the course into .venv and open JupyterLab on notebooks/
#   make test       install, then run the unit tests and nbval over every notebook
#   make notebooks  re-execute lecture and solution notebooks in place (stores outputs), then release
#   make release    point Colab links and install cells at REPO/REF; write exercises/ and the course map
#
# TORCH_SPEC is what `pip install` gets for torch, word for word (CI: TORCH_SPEC=torch==2.13.0).

PYTHON       ?= python3
VENV         ?= .venv
TORCH_SPEC   ?= torch
JUPYTER_ARGS ?=
PYTEST_ARGS  ?=
JOBS         ?= auto
CELL_TIMEOUT ?= 300

BIN   := $(VENV)/bin
STAMP := $(VENV)/.minimoe-installed
# What the installed environment was made from: reinstall when any of it changes.
WANT  := $(TORCH_SPEC) $(shell cat pyproject.toml 2>/dev/null | cksum)
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: lab test notebooks release install clean

install:
	@if [ ! -x "$(BIN)/python" ]; then \
	  echo "creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv "$(VENV)" || { echo "could not create $(VENV): is python3-venv installed?"; exit 1; }; \
	fi
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(WANT)" ]; then \
	  echo "installing minimoe into $(VENV) (torch: $(TORCH_SPEC))"; \
	  $(BIN)/python -m pip install -q --upgrade pip && \
	  $(BIN)/python -m pip install -q $(TORCH_SPEC) && \
	  $(BIN)/python -m pip install -q -e ".[course,dev]" && \
	  echo "$(WANT)" > $(STAMP); \
	fi

# tools/lab.py starts `jupyter lab` and prints the address to open (without a screen it opens no browser).
lab: install
	$(BIN)/python tools/lab.py $(ROOT_FLAG) --ServerApp.root_dir=. notebooks/00_setup_and_tour.ipynb $(JUPYTER_ARGS)

# One thread per process: pytest's workers and the notebooks' kernels share the CPU's cores.
# The last line says what ran (tests/conftest.py).
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MINIMOE_TEST_LABEL="make test" $(BIN)/python -m pytest -n $(JOBS) --dist loadfile \
	  --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
	  --nbval-cell-timeout $(CELL_TIMEOUT) \
	  tests notebooks solutions exercises $(PYTEST_ARGS)

notebooks: install
	$(BIN)/python tools/execute_notebooks.py notebooks/*.ipynb solutions/*.ipynb
	$(MAKE) release

# REPO=OWNER/NAME REF=TAG point every Colab link and install cell there (default: origin's repo, same ref).
release: install
	$(BIN)/minimoe release $(if $(REPO),--repo $(REPO)) $(if $(REF),--ref $(REF))

clean:
	rm -rf graded .pytest_cache build *.egg-info
