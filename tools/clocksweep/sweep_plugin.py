"""pytest plugin for the clock sweep (see sitecustomize.py):

    PYTHONPATH=tools/clocksweep .venv/bin/python -m pytest -p sweep_plugin -n 2 [tests...]

SWEEP_PER=module moves the clock once per module (module-scoped fixtures keep one clock);
the default moves it before every test, which also jumps the clock of a module's shared
recorder back (false failures in modules with a recording fixture: run those per module).
"""

import os

import pytest
import sitecustomize as sweep

DAY = 86_400
_last: list[str | None] = [None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    key = item.module.__name__ if os.environ.get("SWEEP_PER") == "module" else item.nodeid  # type: ignore[attr-defined]
    if key == _last[0]:
        return
    _last[0] = key
    real = sweep._real_time()
    target = (real // DAY + 1) * DAY - float(os.environ.get("SWEEP_LEAD", "6"))
    os.environ["VIGIL_SWEEP_OFFSET"] = str(target - real)
