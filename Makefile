# Two commands matter on a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/.coevo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

setup: $(BIN)/.coevo-installed

demo: setup
	$(BIN)/coevo demo --out runs/demo --force

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: setup
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python benchmarks/inference.py

clean:
	rm -rf $(VENV) runs .pytest_cache
