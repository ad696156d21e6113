"""The command implementations behind ``cli.py`` (which only parses arguments).

Exit codes: 0 success, 1 the thing asked about is wrong (invalid config, message dead,
unknown id), 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_FLOWS = "flows.yaml"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def cmd_validate(args: argparse.Namespace) -> int:
    from bus.config.loader import load_config
    from bus.errors import ConfigError
    from connectors.registry import ConnectorRegistry

    registry = ConnectorRegistry.from_entry_points()
    warnings: list = []
    try:
        cfg = load_config(args.file, connector_types=registry.types, warnings=warnings)
    except ConfigError as e:
        for issue in e.issues:
            print(f"error: {issue}", file=sys.stderr)
        print(f"{len(e.issues)} error(s) in {args.file}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.file}: ok — {len(cfg.flows)} flow(s), {len(cfg.connectors)} connector(s), "
          f"{len(cfg.mappings)} mapping(s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bus.errors import TielineError
    from bus.launch import run
    from bus.logs import configure

    configure(args.log_level, cache=True)
    try:
        cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
        if bool(cert) != bool(key):
            print("error: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        workers = getattr(args, "workers", None)
        if workers is not None and workers < 0:
            print("error: --workers takes a number >= 0", file=sys.stderr)
            return 2
        run(args.file, getattr(args, "host", None), getattr(args, "port", None),
            role=args.cmd, watch=args.watch, tls_files=(cert, key) if cert else None,
            workers=workers, log_level=args.log_level)
    except TielineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from bus.config.loader import load_config
    from connectors.registry import ConnectorRegistry

    cfg = load_config(args.config, connector_types=ConnectorRegistry.from_entry_points().types)
    mapping = cfg.mappings.get(args.name)
    if mapping is None:
        print(f"no mapping named {args.name!r}; mappings: {', '.join(sorted(cfg.mappings))}",
              file=sys.stderr)
        return 1
    data = json.loads(Path(args.input).read_text())
    view = data if args.view else {"body": data, "headers": {}, "context": {}}
    if args.explain:
        result, traces = mapping.explain(view)
        for t in traces:
            note = "  (default)" if t.used_default else ""
            print(f"{t.target} ← {t.source} = {json.dumps(t.value, default=str)}{note}")
        print()
    else:
        result = mapping.apply(view)
    _print_json(result)
    return 0


def _ops(args: argparse.Namespace, consume: bool = False):  # noqa: ANN202
    from bus.ops import operations

    return operations(Path(args.config), args.url, consume=consume)


def _print_history(info: dict) -> None:
    from bus.runner import ledger_lines
    from bus.transport.base import LedgerEntry

    msg = info["message"]
    print(f"message {msg['id']}  flow {msg['flow']}  state {msg['state']}  "
          f"attempt {msg['attempt']}")
    entries = [LedgerEntry(**e) for e in info["history"]]
    for line in ledger_lines(entries):
        print("  " + line)


async def send_cmd(args: argparse.Namespace) -> int:
    from bus.ops import wait_terminal

    body = json.loads(Path(args.data).read_text())
    async with _ops(args, consume=True) as ops:
        mid = await ops.send(args.flow, body)
        info = await wait_terminal(ops, mid, args.timeout)
    if args.json:
        _print_json(info)
    else:
        _print_history(info)
    return 0 if info["message"]["state"] in ("delivered", "filtered") else 1


async def messages_cmd(args: argparse.Namespace) -> int:
    async with _ops(args) as ops:
        info = await ops.message(args.id)
    if args.json:
        _print_json(info)
    else:
        _print_history(info)
    return 0


async def dlq_cmd(args: argparse.Namespace) -> int:
    async with _ops(args) as ops:
        if args.dlq_cmd == "list":
            dls = await ops.dead_letters(args.flow, args.limit)
            if args.json:
                _print_json(dls)
            else:
                for d in dls:
                    print(f"{d['message_id']}  {d['flow']}  {d['step']}  {d['error']}")
                print(f"{len(dls)} dead letter(s)")
        elif args.dlq_cmd == "show":
            _print_json(await ops.dead_letter(args.id))
        elif args.dlq_cmd == "replay":
            if args.all:
                ids = [d["message_id"] for d in await ops.dead_letters(args.flow, 1000)]
                done = []
                async for mid in _progress(ids, "replaying"):
                    done += await ops.replay(mid)
            elif args.id:
                done = await ops.replay(args.id)
            else:
                print("give a message id or --all", file=sys.stderr)
                return 2
            print(f"replayed {len(done)} message(s)")
            if args.all and len(done) == 1000:
                print("(1000 per run: more dead letters may remain; run it again)")
            for mid in done:
                print(f"  {mid}")
        elif args.dlq_cmd == "purge":
            if not args.ids and not args.all and not args.flow:
                print("give message ids, --flow or --all", file=sys.stderr)
                return 2
            ids = args.ids or [d["message_id"] for d in await ops.dead_letters(args.flow, 1000)]
            n = 0
            chunks = [ids[i:i + 100] for i in range(0, len(ids), 100)]
            async for chunk in _progress(chunks, "purging"):
                n += await ops.purge(chunk, None)
            print(f"purged {n} dead letter(s)")
    return 0


async def _progress(items: list, label: str):  # noqa: ANN202 - an async iterator
    """Yield ``items``, with a progress line when a person is watching (a terminal)."""
    if not sys.stdout.isatty() or len(items) < 2:
        for item in items:
            yield item
        return
    from bus.progress import ProgressLine

    with ProgressLine(label, len(items)) as bar:
        for item in items:
            yield item
            bar.advance()


def cmd_connectors(args: argparse.Namespace) -> int:
    from connectors.registry import ConnectorRegistry

    reg = ConnectorRegistry.from_entry_points()
    if getattr(args, "connectors_cmd", None) == "show":
        return _show_connector(reg, args.type)
    if args.json:
        _print_json({name: _describe(cls) for name, cls in sorted(reg.types.items())}
                    | {name: {"error": err} for name, err in reg.failures.items()})
        return 1 if reg.failures else 0
    for name, cls in sorted(reg.types.items()):
        summary = cls.description or (cls.__doc__ or "").strip().splitlines()[0:1]
        print(f"{name}: {summary if isinstance(summary, str) else ''.join(summary)}")
        if cls.actions:
            print(f"  actions: {', '.join(sorted(cls.actions))}")
        if cls.events:
            print(f"  events:  {', '.join(sorted(cls.events))}")
    for name, err in sorted(reg.failures.items()):
        print(f"{name}: FAILED TO LOAD — {err}")
    return 1 if reg.failures else 0


def _describe(cls: Any) -> dict:
    return {
        "description": cls.description or (cls.__doc__ or "").strip(),
        "config_schema": cls.config_schema,
        "events": dict(cls.events),
        "actions": {
            name: {"description": a.description, "input_schema": a.input_schema}
            for name, a in cls.actions.items()
        },
        "secret_fields": sorted(cls.secret_fields),
    }


def _show_connector(reg: Any, type_name: str) -> int:
    import yaml

    cls = reg.types.get(type_name)
    if cls is None:
        err = reg.failures.get(type_name)
        if err:
            print(f"connector type {type_name!r} failed to load: {err}", file=sys.stderr)
        else:
            print(f"no connector type {type_name!r}; installed: {', '.join(sorted(reg.types))}",
                  file=sys.stderr)
        return 1
    info = _describe(cls)
    example = getattr(cls, "example_settings", None)
    if example:
        info["example"] = {"connectors": {f"my_{type_name}": {"type": type_name, "settings": example}}}
    class Plain(yaml.SafeDumper):  # shared schema fragments print in full, not as &anchors
        def ignore_aliases(self, data: Any) -> bool:
            return True

    print(yaml.dump({type_name: info}, Dumper=Plain, sort_keys=False, allow_unicode=True, width=100))
    return 0


def _load(path: str):  # noqa: ANN202
    from bus.config.loader import load_config
    from connectors.registry import ConnectorRegistry

    return load_config(path, connector_types=ConnectorRegistry.from_entry_points().types)


def cmd_graph(args: argparse.Namespace) -> int:
    from bus.graph import mermaid

    text = mermaid(_load(args.file))
    print(f"```mermaid\n{text}```" if args.markdown else text, end="")
    return 0


async def plan_cmd(args: argparse.Namespace) -> int:
    import httpx

    from bus.ops import bus_url
    from bus.plan import plan

    new = _load(args.file)
    url = await bus_url(Path(args.file), args.url)
    if url is None:
        print(f"no running bus answers for {args.file}; start it or give --url", file=sys.stderr)
        return 1
    async with httpx.AsyncClient(timeout=10) as c:
        running = (await c.get(url + "/api/v1/flows")).json()["flows"]
    result = plan(running, new)
    if args.json:
        _print_json(result.to_dict())
    else:
        print("\n".join(result.lines()))
    return 0


async def status_cmd(args: argparse.Namespace) -> int:
    import httpx

    from bus.ops import bus_url

    url = await bus_url(Path(args.config), args.url)
    if url is None:
        print(f"no running bus answers for {args.config}", file=sys.stderr)
        return 1
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        flows = (await c.get("/api/v1/flows")).json()["flows"]
        stats = (await c.get("/api/v1/stats")).json()
    if args.json:
        _print_json({"url": url, "flows": flows, "stats": stats})
        return 0
    window = stats["windows"]["5m"]
    print(f"bus at {url}")
    print(f"{'flow':32} {'ver':12} {'backlog':>8} {'dead':>6} {'5m ok':>7} {'5m p95':>8}")
    for f in flows:
        s = window["flows"].get(f["name"], {})
        rate = s.get("success_rate")
        dead = stats["dead_letters"].get(f["name"], {}).get("depth", 0)
        print(f"{f['name']:32} {f['version']:12} {f['backlog']:>8} {dead:>6} "
              f"{'-' if rate is None else f'{rate:.0%}':>7} {s.get('p95_ms') or '-':>8}")
    for name, s in window["connectors"].items():
        rate = s.get("success_rate")
        print(f"connector {name}: {s['count']} calls, "
              f"{'-' if rate is None else f'{rate:.0%}'} ok, p95 {s.get('p95_ms')} ms")
    return 0


def as_sync(fn):  # noqa: ANN001, ANN202
    def run(args: argparse.Namespace) -> int:
        from bus.ops import OpsError

        try:
            return asyncio.run(fn(args))
        except OpsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    return run
