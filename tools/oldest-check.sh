#!/usr/bin/env bash
# Run part of the suite against the oldest versions pyproject.toml's bounds admit
# (constraints-oldest.txt: numpy 1.24 as on Raspberry Pi OS Bookworm, PyAV 18.0, pydantic 2.6,
# ...), in .venv-oldest. The test tools themselves come at the versions in constraints.txt.
# .ci/run calls this after `make test`; it takes a minute or two once the venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-oldest
stamp=$venv/.installed
python=${PYTHON:-python3}

stale=0
[ -f "$stamp" ] || stale=1
for input in pyproject.toml constraints.txt constraints-oldest.txt; do
  [ "$stale" -eq 1 ] || [ "$input" -nt "$stamp" ] && stale=1
done
if [ "$stale" -eq 1 ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  mapfile -t tools < <(grep -iE '^(pytest|pytest-timeout|pytest-xdist|hypothesis|prometheus_client)==' constraints.txt)
  "$venv/bin/pip" install --quiet --constraint constraints-oldest.txt -e . "${tools[@]}"
  touch "$stamp"
fi

# The venv must hold exactly the oldest versions, or this step would test something else.
"$venv/bin/python" - constraints-oldest.txt <<'PY'
import sys
from importlib.metadata import version

wrong = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, wanted = line.split("==")
        if version(name) != wanted:
            wrong.append(f"{name} {version(name)} (wanted {wanted})")
if wrong:
    sys.exit("oldest-versions venv holds other versions: " + ", ".join(wrong))
print("oldest versions installed:", ", ".join(l.strip() for l in open(sys.argv[1]) if l[:1].isalpha()))
PY

# The parts that lean on numpy, PyAV, pydantic and FastAPI: encoding, muxing, merging, the
# config models, every camera backend, doctor, a recording process, the HTTP API and its
# connection guard (a subclass of uvicorn's httptools protocol), and paho-mqtt
# 2.0's callbacks against a real mosquitto.
# PYTHONNODEBUGRANGES=1: as in the Makefile's test target (CPython 3.11's global ast state).
PYTHONNODEBUGRANGES=1 "$venv/bin/python" -m pytest -q -n 2 -p no:randomly \
  tests/unit/test_encoder.py tests/unit/test_encoder_choice.py tests/unit/test_writer.py \
  tests/unit/test_merge.py tests/unit/test_config.py tests/unit/test_validate.py \
  tests/contract/test_camera_contract.py tests/contract/test_doctor.py \
  tests/contract/test_picamera2_unavailable.py tests/e2e/test_run.py tests/e2e/test_api.py \
  tests/e2e/test_mqtt.py tests/e2e/test_port.py
