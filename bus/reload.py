"""Hot reload: validate the new configuration, then swap it in atomically.

Invalid → the running configuration stays and the errors are returned (and logged). Valid →
flows are recompiled, connectors whose type and settings did not change are kept (new or
changed ones are built and started, retired ones closed after a grace period), and the runtime
switches in one step. Messages already being processed finish on the version they started
with: the runner keeps every compiled version it has run, keyed by flow version.

Triggers: ``POST /api/v1/reload``, SIGHUP, and ``tieline run --watch`` (file changes in
flows.yaml and the mappings folder, new and deleted files included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from bus.config.loader import load_config
from bus.errors import ConfigError, TielineError
from bus.flow import compile_all
from bus.plan import Plan, plan

if TYPE_CHECKING:
    from bus.runtime import Runtime

log = structlog.get_logger("tieline.reload")
RETIRE_AFTER = 30.0  # seconds a replaced connector stays open for calls already under way


@dataclass
class ReloadResult:
    ok: bool
    errors: list[str] = field(default_factory=list)
    plan: Plan | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "plan": self.plan.to_dict() if self.plan else None}


class Reloader:
    def __init__(self, runtime: Runtime, path: str | Path, env: Mapping[str, str] | None = None):
        self.runtime = runtime
        self.path = Path(path)
        self.env = env
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def reload(self) -> ReloadResult:
        async with self._lock:
            rt = self.runtime
            try:
                config = load_config(self.path, connector_types=rt.registry.types, env=self.env)
                flows = compile_all(config)
            except ConfigError as e:
                errors = [str(i) for i in e.issues]
                log.error("reload_rejected", file=str(self.path), errors=errors)
                return ReloadResult(False, errors)
            running = [{"name": n, "version": cf.version, "from": _from(cf)} for n, cf in rt.flows.items()]
            changes = plan(running, config)
            try:
                connectors, retired = await self._connectors(config)
            except TielineError as e:
                log.error("reload_rejected", file=str(self.path), errors=[str(e)])
                return ReloadResult(False, [str(e)])
            rt.apply(config, flows, connectors)
            for old in retired:
                task = asyncio.create_task(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            log.info("reloaded", added=changes.added, removed=changes.removed, changed=changes.changed)
            return ReloadResult(True, plan=changes)

    async def _connectors(self, config: Any) -> tuple[dict[str, Any], list[Any]]:
        rt = self.runtime
        old_cfg = rt.config.connectors
        keep, fresh, retired = {}, {}, []
        for name, cc in config.connectors.items():
            before = old_cfg.get(name)
            if before is not None and before.type == cc.type and before.settings == cc.settings:
                keep[name] = rt.connectors[name]
            else:
                fresh[name] = rt.build_connector(name, cc)
        for c in fresh.values():
            await c.start()
        for name, c in rt.connectors.items():
            if name not in keep:
                retired.append(c)
        return {**keep, **fresh}, retired

    async def _retire(self, connector: Any) -> None:
        await asyncio.sleep(RETIRE_AFTER)
        await connector.close()

    async def watch(self, interval_ms: int = 300) -> None:
        """Reload whenever flows.yaml or a mapping file changes (until cancelled)."""
        from watchfiles import awatch

        mappings = self.path.parent / "mappings"
        targets = [self.path] + ([mappings] if mappings.is_dir() else [])
        async for changes in awatch(*targets, step=interval_ms):
            log.info("config_changed", files=sorted({c[1] for c in changes}))
            await self.reload()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()


def _from(cf: Any) -> str:
    from bus.plan import describe_source

    return describe_source(cf.flow)
