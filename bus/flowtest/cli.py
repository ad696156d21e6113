"""``tieline test [PATH]``: run the flow tests; exit 0 all passed, 1 some failed, 2 malformed.

Wired into cli.py with one line: ``flowtest_cli.add_parser(sub)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import nullcontext
from typing import Any

from bus.errors import ConfigError
from bus.flowtest.report import CaseResult, as_json, lines, summary
from bus.progress import ProgressLine

PROGRESS_FROM = 8  # tests; fewer finish before a bar is worth drawing


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``test`` subcommand to an argparse ``add_subparsers()`` object."""
    sp = subparsers.add_parser("test", help="run flow tests (*.test.yaml) with mocked connectors")
    sp.add_argument("path", nargs="?", default="flowtests",
                    help="a test file or a directory of *.test.yaml (default: flowtests/)")
    sp.add_argument("--config", help="flows.yaml for test files without config: "
                                     "(default: the nearest flows.yaml above each test file)")
    sp.add_argument("--json", action="store_true", help="print the results as JSON")
    sp.add_argument("-k", dest="keyword", metavar="NAME",
                    help="run only tests whose name contains NAME (case-insensitive)")
    sp.set_defaults(fn=cmd_test)
    return sp


def cmd_test(args: argparse.Namespace) -> int:
    from bus.flowtest.run import discover, plan, run_planned
    from bus.logs import configure
    from connectors.registry import ConnectorRegistry

    configure("error")  # a dead letter a test expects is not news on stderr
    registry = ConnectorRegistry.from_entry_points()
    files = discover(args.path)
    if not files:
        print(f"{args.path}: no *.test.yaml files here (see docs/flow-tests.md)", file=sys.stderr)
        return 2
    try:
        planned = plan(files, registry, config=args.config, keyword=args.keyword)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"errors": [str(i) for i in exc.issues]}, indent=2))
        else:
            print("\n".join(str(i) for i in exc.issues), file=sys.stderr)
        return 2
    total = sum(len(p.cases) for p in planned)
    if total == 0:
        print(f"no test name contains {args.keyword!r}", file=sys.stderr)
        return 2
    show = not args.json
    bar = sys.stdout.isatty() and show and total >= PROGRESS_FROM
    with _progress(total) if bar else nullcontext(None) as step:
        def on_result(result: CaseResult) -> None:
            if show:
                (step.print if step else print)("\n".join(lines(result)))
            if step:
                step.advance()

        results = asyncio.run(run_planned(planned, registry, on_result))
    if args.json:
        print(json.dumps(as_json(results), indent=2, default=str, ensure_ascii=False))
    else:
        print(summary(results))
    return 0 if all(r.passed for r in results) else 1


def _progress(total: int) -> ProgressLine:
    return ProgressLine("flow tests", total)
