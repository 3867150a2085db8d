# Two entry points: `make run` (Detour on config.yaml) and `make test` (the whole suite + lint + types).
# `make check-fast` is lint, types and the tiers that need no sockets (tests/unit, tests/mitm).
# Each creates .venv with the interpreter in $(PYTHON) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
REVERSE_BASE ?= 8081
# mitmweb's flow list: its default columns with Detour's comment (who served, and why) after the path.
# A list option takes one --set per item.
WEB_COLUMNS ?= tls icon path comment method status size time

.PHONY: run web test check-fast lint bench demo clean

$(BIN)/mitmdump: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/mitmdump

# System proxy on :8080, base-URL listeners on :8081 (Anthropic), :8082 (OpenAI), :8083 (Gemini).
# `detour` is the lean launcher (mitmdump's flags, only the addons Detour needs); the same proxy under
# plain mitmdump is `mitmdump -s addon/detour.py` with these arguments.
run: $(BIN)/mitmdump
	$(BIN)/detour --set detour_config=config.yaml --set listen_host=$(HOST) \
	  --mode regular@$(PORT) \
	  --mode reverse:https://api.anthropic.com@$(REVERSE_BASE) \
	  --mode reverse:https://api.openai.com@$$(($(REVERSE_BASE)+1)) \
	  --mode reverse:https://generativelanguage.googleapis.com@$$(($(REVERSE_BASE)+2))

web: $(BIN)/mitmdump
	$(BIN)/mitmweb -s addon/detour.py --set detour_config=config.yaml --set listen_host=$(HOST) --set web_port=8090 \
	  $(foreach column,$(WEB_COLUMNS),--set web_columns=$(column)) \
	  --mode regular@$(PORT) \
	  --mode reverse:https://api.anthropic.com@$(REVERSE_BASE) \
	  --mode reverse:https://api.openai.com@$$(($(REVERSE_BASE)+1)) \
	  --mode reverse:https://generativelanguage.googleapis.com@$$(($(REVERSE_BASE)+2))

lint: $(BIN)/mitmdump
	$(BIN)/ruff check addon tests bench
	$(BIN)/mypy addon

test: lint
	$(BIN)/python -m pytest -q

check-fast: lint
	$(BIN)/python -m pytest -q tests/unit tests/mitm

# Mock providers, Detour, and every coding CLI found (ARGS=--install gets the pinned ones from npm).
demo: $(BIN)/mitmdump
	$(BIN)/python tests/support/demo.py $(ARGS)

bench: $(BIN)/mitmdump
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
