"""The tieline command line. Thin: parses arguments and calls into ``bus.commands``.

Exit codes: 0 success, 1 the thing asked about is wrong (invalid config, message dead,
unknown id), 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import sys

from bus.commands import (
    DEFAULT_FLOWS,
    as_sync,
    cmd_connectors,
    cmd_graph,
    cmd_map,
    cmd_run,
    cmd_validate,
    dlq_cmd,
    messages_cmd,
    plan_cmd,
    send_cmd,
    status_cmd,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tieline", description="A lightweight integration bus.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", default=DEFAULT_FLOWS, help="flows.yaml to use")
        sp.add_argument("--url", help="base URL of a running bus (default: from the config)")

    for role, text in (("run", "serve HTTP and run the flows (in worker processes with --workers)"),
                       ("serve", "HTTP ingress only; 'tieline worker' processes run the flows"),
                       ("worker", "consume and run the flows, no HTTP")):
        sp = sub.add_parser(role, help=text)
        sp.add_argument("file", nargs="?", default=DEFAULT_FLOWS)
        if role == "run":
            sp.add_argument("--workers", type=int, metavar="N",
                            help="run the flows in N worker processes beside the server, "
                                 "to use N cores (default: settings.workers, 0 = this process)")
        if role != "worker":
            sp.add_argument("--host")
            sp.add_argument("--port", type=int)
            sp.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (TLS 1.3 minimum)")
            sp.add_argument("--tls-key", help="PEM private key of --tls-cert")
        sp.add_argument("--watch", action="store_true", help="reload when flows.yaml or mappings change")
        sp.add_argument("--log-level", default="info")
        sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("validate", help="check flows.yaml and mappings; print every error")
    sp.add_argument("file", nargs="?", default=DEFAULT_FLOWS)
    sp.set_defaults(fn=cmd_validate)

    sp = sub.add_parser("map", help="apply a mapping to a JSON file")
    sp.add_argument("name")
    sp.add_argument("--input", "-i", required=True, help="JSON file: the message body")
    sp.add_argument("--view", action="store_true", help="the input holds body/headers/context")
    sp.add_argument("--explain", action="store_true", help="show each field's source and value")
    sp.add_argument("--config", "-c", default=DEFAULT_FLOWS)
    sp.set_defaults(fn=cmd_map)

    sp = sub.add_parser("send", help="put one message into a flow and print its history")
    sp.add_argument("flow")
    sp.add_argument("--data", "-d", required=True, help="JSON file: the message body")
    sp.add_argument("--timeout", type=float, default=30.0)
    sp.add_argument("--json", action="store_true")
    with_config(sp)
    sp.set_defaults(fn=as_sync(send_cmd))

    sp = sub.add_parser("messages", help="the ledger")
    msub = sp.add_subparsers(dest="messages_cmd", required=True)
    ms = msub.add_parser("show", help="print a message's history")
    ms.add_argument("id")
    ms.add_argument("--json", action="store_true")
    with_config(ms)
    ms.set_defaults(fn=as_sync(messages_cmd))

    sp = sub.add_parser("dlq", help="dead letters: list, show, replay, purge")
    dsub = sp.add_subparsers(dest="dlq_cmd", required=True)
    d = dsub.add_parser("list")
    d.add_argument("--flow")
    d.add_argument("--limit", type=int, default=100)
    d.add_argument("--json", action="store_true")
    with_config(d)
    d = dsub.add_parser("show")
    d.add_argument("id")
    with_config(d)
    d = dsub.add_parser("replay")
    d.add_argument("id", nargs="?")
    d.add_argument("--all", action="store_true")
    d.add_argument("--flow")
    with_config(d)
    d = dsub.add_parser("purge")
    d.add_argument("ids", nargs="*")
    d.add_argument("--all", action="store_true")
    d.add_argument("--flow")
    with_config(d)
    sp.set_defaults(fn=as_sync(dlq_cmd))

    from bus.flowtest import cli as flowtest_cli

    flowtest_cli.add_parser(sub)  # tieline test [PATH] [--config] [--json] [-k NAME]

    sp = sub.add_parser("graph", help="print the flows as a Mermaid diagram")
    sp.add_argument("file", nargs="?", default=DEFAULT_FLOWS)
    sp.add_argument("--markdown", action="store_true", help="wrap in a ```mermaid block")
    sp.set_defaults(fn=cmd_graph)

    sp = sub.add_parser("plan", help="what reloading FILE would change in the running bus")
    sp.add_argument("file", nargs="?", default=DEFAULT_FLOWS)
    sp.add_argument("--url")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=as_sync(plan_cmd))

    sp = sub.add_parser("status", help="flows, backlog, dead letters and connectors of a running bus")
    sp.add_argument("--json", action="store_true")
    with_config(sp)
    sp.set_defaults(fn=as_sync(status_cmd))

    sp = sub.add_parser("connectors", help="installed connector types: list, or show one")
    sp.add_argument("--json", action="store_true")
    csub = sp.add_subparsers(dest="connectors_cmd")
    cs = csub.add_parser("show", help="config schema, events, actions and an example of a type")
    cs.add_argument("type")
    sp.set_defaults(fn=cmd_connectors)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd not in ("run", "serve", "worker"):
        from bus.logs import configure

        configure("warning")  # logs go to stderr; stdout is for the command's answer
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
