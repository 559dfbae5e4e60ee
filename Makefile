# Everything runs from a project-local virtual environment made on first use.
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 3000
PY := $(VENV)/bin/python

.PHONY: setup serve test train-defaults

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
# The kserve SDK's model classes check deploy/kserve (tests/test_kserve.py). Without its dependencies:
# they are its model server's (FastAPI, gRPC tools, pandas<3, psutil<6), ~30 packages, some downgraded.
	$(PY) -m pip install --quiet --no-deps "kserve==0.21.0"
	touch $@

train-defaults: setup
	$(PY) -m training.defaults

serve: train-defaults
	$(VENV)/bin/bentoml serve service.app:SeqServe --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest

# Load tests need a running service or start one themselves (see README, "Load tests").
.PHONY: loadtest bench
loadtest: train-defaults
	$(PY) -m loadtests run --users 64 --spawn-rate 16 --duration 60s

bench: setup
	$(PY) -m loadtests bench

# Build the bento and an OCI image of it (container/README.md). Settings: VARIANT=cpu|gpu,
# BASE_IMAGE=local (a Debian base made here, no registry needed) or an image name, IMAGE=name:tag.
.PHONY: image
image: setup
	$(PY) container/build.py $(if $(VARIANT),--variant $(VARIANT)) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(IMAGE),--tag $(IMAGE))
