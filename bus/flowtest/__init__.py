"""``tieline test``: flow tests written in YAML next to the flows (docs/flow-tests.md).

    model.py   parse and check ``*.test.yaml`` (errors with file:line:col)
    mocks.py   mock connectors answering from the test's ``given:`` script
    fast.py    compressed retry / publish / breaker delays
    run.py     a fresh bus per test; inputs through the front door; wait until settled
    check.py   expectations (``then:``) against what happened
    report.py  diffs, PASS/FAIL lines, the summary, JSON
    cli.py     the ``tieline test`` subcommand
"""

from bus.flowtest.model import TestFile, load_test_file
from bus.flowtest.report import CaseResult, Failure, summary
from bus.flowtest.run import discover, run_tests

__all__ = ["CaseResult", "Failure", "TestFile", "discover", "load_test_file", "run_tests", "summary"]
