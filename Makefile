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

# The genuine picamera2, for the tests only (tests/requirements-picamera2.txt says why this
# version): beside the venv's packages, in a directory only tests/fakes/realpicam.py puts on
# sys.path, so nothing else in the suite sees a picamera2 without libcamera. Never installed
# by deploy/install.sh: on a unit, apt's python3-picamera2 is the one vigil uses.
PICAMERA2_REAL := $(VENV)/picamera2-real
PICAMERA2_STAMP := $(PICAMERA2_REAL)/.installed

$(PICAMERA2_STAMP): tests/requirements-picamera2.txt constraints.txt $(STAMP)
	bash tools/system-deps.sh test
	rm -rf $(PICAMERA2_REAL)
	$(VENV)/bin/pip install --quiet --no-deps --constraint constraints.txt \
		--target $(PICAMERA2_REAL) -r tests/requirements-picamera2.txt
	touch $@

run: $(STAMP)
	$(VENV)/bin/vigil run $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

test: $(STAMP) $(PICAMERA2_STAMP)
	bash tools/system-deps.sh test
	$(VENV)/bin/ruff check controller states hw tests bench
	$(VENV)/bin/mypy --strict controller states hw
	# PYTHONNODEBUGRANGES: CPython 3.11 keeps the ast module's recursion depth in global state,
	# and 3.11's tracebacks parse source lines with ast for their ^^^ markers; a thread that
	# dies with a traceback (picamera2's event loop on an unplugged camera) while another
	# thread compiles leaves it off, and every later compile fails with "SystemError: AST
	# constructor recursion depth mismatch". Without column ranges, tracebacks skip the parse.
	PYTHONNODEBUGRANGES=1 $(VENV)/bin/python -m pytest -n 2 -q

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
