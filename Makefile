# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PERSONS ?= 100000
PORT    ?= 8000

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install  ## generate demo data if missing, print demo tokens, serve on 127.0.0.1:$(PORT)
	$(BIN)/sde-gateway demo --persons $(PERSONS) --port $(PORT)

test: install  ## the whole test suite
	$(BIN)/ruff check audit datasets policies gateway tests bench
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check audit datasets policies gateway tests bench
	$(BIN)/ruff format --check audit datasets policies gateway tests bench

bench: install  ## benchmarks; see docs/benchmarks.md
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/end_to_end.py

clean:
	rm -rf $(VENV) .sde-demo bench/.work .pytest_cache
