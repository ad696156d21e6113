"""``tieline test``: flow tests written in YAML next to the flows (docs/flow-tests.md).

    model.py   parse and check ``*.test.yaml`` (errors with file:line:col)
    mocks.py   mock connectors answering from the test's ``given:`` script
    fast.py    compressed retry / publish / breaker delays
    run.py     a fresh bus per test; inputs through the front door; wait until settled
    check.py   expectations (``then:``) against what happened
    report.py  diffs, PASS/FAIL lines, the summary, JSON
    cli.py     the ``tieline test`` subcommand
"""

import importlib

# Loaded on first use: every `tieline` command builds its argument parser from cli.py, and
# `tieline run` should not wait for the test runner (~35 ms of start-up).
_EXPORTS = {"TestFile": "model", "load_test_file": "model", "CaseResult": "report",
            "Failure": "report", "summary": "report", "discover": "run", "run_tests": "run"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
