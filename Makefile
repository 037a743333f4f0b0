# The two commands of the README: `make demo` (main job on the sample data) and `make test`.
# `make demo` and `make lab` install the core and the notebooks extra only ($(DEMO_STAMP)); `make test` and
# `make bench` add the rest of the `dev` extra ($(STAMP): eventsourcing, PostgreSQL client, test tools).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed
SYSDEPS := $(VENV)/.system-deps

.PHONY: demo test lab bench clean

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip uv; }
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[notebooks]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml $(DEMO_STAMP)
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/es-analytics demo --lake data/sample-lake

$(SYSDEPS): $(STAMP)
	bash .ci/system-deps.sh
	touch $(SYSDEPS)

test: $(STAMP) $(SYSDEPS)
	$(BIN)/python -m pytest -q

lab: $(DEMO_STAMP)
	$(BIN)/es-analytics lab --lake data/sample-lake

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build data/sample-lake
