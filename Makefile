# Two commands do everything on a fresh clone: `make sweep` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
SPACE   ?= sweeps/smoke.yaml
CONFIG  ?= sweeps/trial.yaml
RUN     ?= results/smoke
# The offline CIFAR-10 JPEG copy beside the checkout, used when present (no dataset host is
# reachable there); elsewhere torchvision downloads CIFAR-10. Override with DATA=path or DATA=.
DATA    ?= $(wildcard ../shared/data/cifar10-jpeg.tar.gz)
DATAARG := $(if $(DATA),--set data.dataset=imagefolder --set data.root=$(abspath $(DATA)),)

.PHONY: install test sweep trial dashboard bench validate docs clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q --durations=30

sweep: install
	$(BIN)/kdtune sweep $(SPACE) $(DATAARG) $(if $(RESUME),--resume) $(ARGS)

trial: install
	$(BIN)/kdtune trial $(CONFIG) $(DATAARG) $(if $(OUT),--out $(OUT)) $(ARGS)

validate: install
	$(BIN)/kdtune validate $(SPACE)

dashboard: install
	$(BIN)/kdtune dashboard $(RUN)

bench: install
	$(BIN)/kdtune bench $(if $(DATA),--data $(abspath $(DATA))) $(ARGS)

# docs/reference.md from kdtune/config.py (tests/test_docs.py fails when it is stale)
docs: install
	$(BIN)/python -m kdtune.reference docs/reference.md

clean:
	rm -rf $(VENV) .pytest_cache
