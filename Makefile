# Two entry points (see README): `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,triton]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/memplan lower memplan/examples/tiny_cnn.onnx --target cpu --emit ir,python,plan,report -o out/demo
	$(BIN)/memplan show out/demo/tiny_cnn.mir
	$(BIN)/memplan show out/demo/tiny_cnn.plan.json

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache
