"""The audit log: who replayed or purged what, when, and how many. Append-only JSON lines.

Kept beside the transport's data (``<data_dir>/audit.jsonl``) so operators can also read it
with ordinary tools; the management API serves it at ``GET /api/v1/audit``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson


class AuditLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._lock = asyncio.Lock()

    async def record(self, actor: str, action: str, **detail: Any) -> dict[str, Any]:
        entry = {"at": self.clock(), "actor": actor, "action": action, **detail}
        line = orjson.dumps(entry) + b"\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)
        return entry

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(line)
            f.flush()

    async def read(self, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        if not self.path.exists():
            return []
        lines = (await asyncio.to_thread(self.path.read_bytes)).splitlines()
        out = []
        for raw in reversed(lines):
            entry = orjson.loads(raw)
            if action is None or entry.get("action") == action:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out
