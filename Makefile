# The two commands a newcomer needs: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?=
ARGS ?=

.PHONY: run test bench lint venv clean docs

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "vigil needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# The versions in constraints.txt (tools/lock.sh regenerates it), not the newest of the day.
	$(VENV)/bin/pip install --quiet --constraint constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vigil run $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

test: $(STAMP)
	bash tools/system-deps.sh test
	$(VENV)/bin/ruff check controller states hw tests bench
	$(VENV)/bin/mypy --strict controller states hw
	$(VENV)/bin/python -m pytest -n 2 -q

bench: $(STAMP)
	bash tools/system-deps.sh bench
	$(VENV)/bin/python -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check controller states hw tests bench
	$(VENV)/bin/mypy --strict controller states hw

clean:
	rm -rf $(VENV) build *.egg-info

docs: $(STAMP)
	$(VENV)/bin/python tools/update_readme.py
	$(VENV)/bin/python deploy/example_config.py
