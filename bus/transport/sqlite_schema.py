"""The tables of the embedded transport's file, and how a file of an older version is upgraded.

Version 1: messages, ledger, dedupe keys, dead letters. Version 2 adds what several processes
sharing one file need (``sqlite_shared``). ``create_schema`` runs once per start, before any
other SQL; ``sqlite_store`` and ``sqlite_claims`` hold the SQL over these tables.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    state TEXT NOT NULL,
    envelope BLOB NOT NULL,
    available_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    correlation_id TEXT,
    error TEXT,
    lease_owner TEXT
);
CREATE INDEX IF NOT EXISTS messages_state_flow ON messages(state, flow);
CREATE INDEX IF NOT EXISTS messages_correlation ON messages(correlation_id);
CREATE INDEX IF NOT EXISTS messages_created ON messages(created_at);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    flow TEXT NOT NULL DEFAULT '',
    step TEXT,
    attempt INTEGER,
    outcome TEXT,
    error TEXT,
    detail BLOB
);
CREATE INDEX IF NOT EXISTS ledger_message ON ledger(message_id);
CREATE TABLE IF NOT EXISTS dedupe (
    key TEXT PRIMARY KEY,
    message_ids BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    message_id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    step TEXT,
    error TEXT NOT NULL,
    error_chain BLOB NOT NULL,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_flow_at ON dead(flow, dead_at);
"""

# Version 2: what several processes sharing one file need (bus/transport/sqlite_shared.py).
# ``lease_owner`` names the process running a claimed message; ``messages_ready`` finds due
# messages per flow; ``backlog`` counts queued messages per flow, kept exact by triggers, so
# every process reads the same bound without counting rows; ``doorbells`` lists how to wake
# each consuming process (bus/transport/sqlite_doorbell.py).
SCHEMA_V2 = """
CREATE INDEX IF NOT EXISTS messages_ready ON messages(flow, available_at) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS backlog (flow TEXT PRIMARY KEY, queued INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS backlog_insert AFTER INSERT ON messages
WHEN NEW.state = 'queued' BEGIN
    INSERT OR IGNORE INTO backlog VALUES (NEW.flow, 0);
    UPDATE backlog SET queued = queued + 1 WHERE flow = NEW.flow;
END;
CREATE TRIGGER IF NOT EXISTS backlog_state AFTER UPDATE OF state ON messages
WHEN OLD.state IS NOT NEW.state AND 'queued' IN (OLD.state, NEW.state) BEGIN
    UPDATE backlog SET queued = queued - 1 WHERE flow = OLD.flow AND OLD.state = 'queued';
    INSERT OR IGNORE INTO backlog VALUES (NEW.flow, 0);
    UPDATE backlog SET queued = queued + 1 WHERE flow = NEW.flow AND NEW.state = 'queued';
END;
CREATE TABLE IF NOT EXISTS doorbells (owner TEXT PRIMARY KEY, address TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS backlog_delete AFTER DELETE ON messages
WHEN OLD.state = 'queued' BEGIN
    UPDATE backlog SET queued = queued - 1 WHERE flow = OLD.flow;
END;
CREATE INDEX IF NOT EXISTS messages_finished ON messages(updated_at)
WHERE state IN ('delivered', 'filtered', 'purged');
CREATE INDEX IF NOT EXISTS dedupe_expires ON dedupe(expires_at);
"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if missing, upgrade a version 1 file; refuse a newer schema.

    Inside one IMMEDIATE transaction, version read included: processes starting together on
    one file take turns, and only the first upgrades it.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this tieline understands "
                f"({SCHEMA_VERSION}); upgrade tieline or point the transport at another file"
            )
        script = SCHEMA + SCHEMA_V2  # IF NOT EXISTS throughout: a no-op on a current file
        if version == 1:  # a file of an earlier tieline: add the lease column, count the backlog
            script = (
                "ALTER TABLE messages ADD COLUMN lease_owner TEXT;" + SCHEMA_V2 +
                "INSERT INTO backlog SELECT flow, count(*) FROM messages WHERE state = 'queued'"
                " GROUP BY flow;"
            )
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into statements (triggers hold semicolons, so ask SQLite where they end);
    ``executescript`` would commit the open transaction first."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return [s for s in out if s.strip(" ;\n")]
