"""Who may open an embedded file: one process alone, or any number that all share it.

A process alone keeps the order of work in memory (``sqlite_local``) and would run messages
another process has claimed; processes sharing the file claim through it
(``sqlite_shared``). An advisory lock on ``<file>.lock`` keeps the two kinds apart: the
first takes it exclusively, the others shared. The kernel drops it when the process dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bus.errors import TransportError


class FileLock:
    def __init__(self, db: Path, *, shared: bool):
        self.path = db.with_name(db.name + ".lock")
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            db = self.path.with_suffix("")
            if self.shared:
                raise TransportError(
                    f"embedded transport {db}: a tieline process has this file to itself "
                    "('tieline run' without workers); stop it, or run it with settings.workers "
                    "so the file is shared"
                ) from None
            raise TransportError(
                f"embedded transport {db}: other tieline processes use this file; stop them, "
                "or run this one sharing it too ('tieline run' with settings.workers, "
                "'tieline serve', 'tieline worker')"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
