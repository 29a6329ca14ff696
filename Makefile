# The README's two commands are `make run` and `make test`; both install what they need first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
STORE  ?= ./data
MNT    ?= ./mnt

.PHONY: deps run test bench lint clean

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/install-deps $(wildcard scripts/install-libfuse scripts/install-pyfuse3 patches/*.patch)
	bash scripts/install-deps
	touch $(STAMP)

# The main job: create the store if missing and mount it on $(MNT) in the foreground.
# Ctrl-C flushes, unmounts and stops.
run: deps
	$(PY) -m vfsd up --store $(STORE) --mnt $(MNT)

test: deps
	$(PY) -m pytest -q

bench: deps
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/store.py
	$(PY) bench/fs.py
	$(PY) bench/snap.py
	$(PY) bench/s3.py
	$(PY) bench/vm.py

lint: deps
	$(VENV)/bin/pip install -q ruff==0.17.6 mypy==2.4.1
	$(VENV)/bin/ruff check vfsd gateway tests bench
	$(VENV)/bin/mypy vfsd/store

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
