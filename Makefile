# The README's two commands are `make run` and `make test`; both install what they need first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
STORE  ?= ./data

.PHONY: deps run test bench lint clean

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/install-deps $(wildcard scripts/install-pyfuse3 patches/*.patch)
	bash scripts/install-deps
	touch $(STAMP)

# The main job. Until the mount exists (issue 3) it initialises the store and shows its state.
run: deps
	@test -f $(STORE)/store.toml || $(PY) -m vfsd init --store $(STORE)
	$(PY) -m vfsd stats --store $(STORE)

test: deps
	$(PY) -m pytest -q

bench: deps
	$(PY) bench/store.py

lint: deps
	$(VENV)/bin/pip install -q ruff mypy
	$(VENV)/bin/ruff check vfsd gateway tests bench
	$(VENV)/bin/mypy vfsd/store

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
