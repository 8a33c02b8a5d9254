"""A local SQLite record of submitted jobs, so that other processes can attach to them."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    tag TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    job_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    is_array INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    ranks INTEGER NOT NULL,
    function TEXT NOT NULL,
    submit_time REAL NOT NULL,
    container TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    site TEXT NOT NULL,
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    tag TEXT NOT NULL,
    task INTEGER NOT NULL,
    last_state TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (site, job_id, position)
);
CREATE INDEX IF NOT EXISTS jobs_by_tag ON jobs (tag);
CREATE TABLE IF NOT EXISTS usage (
    site TEXT NOT NULL,
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    usage TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (site, job_id, position)
);
"""


_READY: Set[str] = set()  # registry files whose schema this process has created or seen


def _private_file(path: str) -> None:
    """Create ``path`` (mode 0600) and its folder (0700) if missing; an existing folder we own is made 0700."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(folder, 0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def home() -> str:
    """hpcbridge's client-side directory (``$HPCBRIDGE_HOME`` or ``~/.hpcbridge``)."""
    return os.environ.get("HPCBRIDGE_HOME") or os.path.expanduser("~/.hpcbridge")


class Registry:
    """Jobs this user submitted from this machine: site, job id, folder, function, submit time, last state."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or os.path.join(home(), "registry.sqlite")

    def _connect(self) -> sqlite3.Connection:
        # The default rollback journal, not WAL: the registry usually lives in an NFS home, and WAL's shared
        # memory does not work across the hosts (login node, jobs) that open it.
        if self.path not in _READY:
            _private_file(self.path)  # job ids, functions and folders are nobody else's business
        conn = sqlite3.connect(self.path, timeout=60)
        if self.path not in _READY:
            for attempt in range(20):
                try:
                    conn.executescript(_SCHEMA)
                    break
                except sqlite3.OperationalError as exc:  # another process is creating it right now
                    if "locked" not in str(exc) or attempt == 19:
                        raise
                    time.sleep(0.1 * (attempt + 1))
            _add_columns(conn)
            _READY.add(self.path)
        return conn

    def record(
        self,
        *,
        tag: str,
        site: str,
        job_id: str,
        folder: str,
        is_array: bool,
        chunks: List[int],
        ranks: int,
        function: str,
        submit_time: float,
        task_ids: List[str],
        container: Optional[str] = None,
    ) -> None:
        """Record a submission; ``container``: its image's record (JSON: runtime, image, digest), if it has one."""
        now = time.time()
        rows: List[Tuple[str, str, int, str, int, str, float]] = []
        for task, (task_id, size) in enumerate(zip(task_ids, chunks)):
            rows.extend((site, task_id, pos, tag, task, "PENDING", now) for pos in range(size))
        conn = self._connect()
        try:
            with conn:
                # columns by name: a registry that a newer hpcbridge extended (more columns, with defaults) stays
                # writable by this one
                conn.execute(
                    "INSERT OR REPLACE INTO submissions (tag, site, job_id, folder, is_array, chunks, ranks, function, "
                    "submit_time, container) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (tag, site, job_id, folder, int(is_array), json.dumps(chunks), ranks, function, submit_time,
                     container),
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO jobs (site, job_id, position, tag, task, last_state, updated) "
                    "VALUES (?,?,?,?,?,?,?)",
                    rows,
                )
        finally:
            conn.close()

    def _write_many(self, statement: str, rows: List[Tuple[Any, ...]]) -> None:
        """Run one statement for every row in a single transaction (nothing when there are no rows)."""
        if not rows:
            return
        conn = self._connect()
        try:
            with conn:
                conn.executemany(statement, rows)
        finally:
            conn.close()

    def update_states(self, site: str, updates: Iterable[Tuple[str, int, str]]) -> None:
        """``(job_id, position, state)`` rows."""
        now = time.time()
        self._write_many("UPDATE jobs SET last_state=?, updated=? WHERE site=? AND job_id=? AND position=?",
                         [(state, now, site, job_id, pos) for job_id, pos, state in updates])

    def update_attempts(self, site: str, updates: Iterable[Tuple[str, int, str]]) -> None:
        """``(job_id, position, attempts as JSON)`` rows: a requeued job's runs (docs/requeue.md)."""
        self._write_many("UPDATE jobs SET runs=? WHERE site=? AND job_id=? AND position=?",
                         [(runs, site, job_id, pos) for job_id, pos, runs in updates])

    def store_usage(self, site: str, rows: Iterable[Tuple[str, int, str]]) -> None:
        """``(job_id, position, usage JSON)`` rows (:meth:`hpcbridge.usage.Usage.to_json`): a finished job's usage,
        kept for ``attach(...).usage()`` and ``hpcbridge report``. Its own table: an older registry gains it when
        first opened (``CREATE TABLE IF NOT EXISTS``), and an older hpcbridge ignores it."""
        now = time.time()
        self._write_many("INSERT OR REPLACE INTO usage (site, job_id, position, usage, updated) VALUES (?,?,?,?,?)",
                         [(site, job_id, pos, text, now) for job_id, pos, text in rows])

    def usage(self, site: str, job_id: str, position: int = 0) -> Optional[str]:
        """The stored usage JSON of a job, or None."""
        rows = self._select("SELECT usage FROM usage WHERE site=? AND job_id=? AND position=?",
                            (site, job_id, position))
        return str(rows[0]["usage"]) if rows else None

    def usages(self, site: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every stored usage with its job's row (as :meth:`jobs`, plus ``usage``: the JSON), newest first."""
        where, args = (" WHERE j.site=?", (site,)) if site else ("", ())
        return self._select(
            _LISTING.replace("FROM jobs j", "FROM jobs j JOIN usage u ON u.site = j.site AND u.job_id = j.job_id "
                             "AND u.position = j.position", 1).replace("SELECT ", "SELECT u.usage, ", 1)
            + where + " ORDER BY s.submit_time DESC, j.task, j.position", args
        )

    def _select(self, query: str, args: Tuple[Any, ...]) -> List[Dict[str, Any]]:
        conn = self._connect()
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(query, args).fetchall()]
        finally:
            conn.close()

    def find(self, site: str, job_id: str) -> List[Dict[str, Any]]:
        """Rows for ``job_id`` (several when calls were bundled into one task), with their submission."""
        return self._select(
            "SELECT j.position, j.task, j.last_state, s.* FROM jobs j JOIN submissions s ON j.tag = s.tag "
            "WHERE j.site=? AND j.job_id=? ORDER BY j.position",
            (site, job_id),
        )

    def jobs(self, site: Optional[str] = None, limit: int = 1000) -> List[Dict[str, Any]]:
        """The most recent jobs, newest first."""
        where, args = (" WHERE j.site=?", (site,)) if site else ("", ())
        return self._select(
            _LISTING + where + " ORDER BY s.submit_time DESC, j.task, j.position LIMIT ?", args + (limit,)
        )

    def lookup(self, job_id: str, site: Optional[str] = None) -> List[Dict[str, Any]]:
        """Rows (as :meth:`jobs`) whose job id or whose array job's id is ``job_id``, on any site or on ``site``."""
        query = _LISTING + " WHERE (j.job_id=? OR s.job_id=?)"
        args: Tuple[Any, ...] = (job_id, job_id)
        if site:
            query += " AND j.site=?"
            args += (site,)
        return self._select(query + " ORDER BY j.site, j.task, j.position", args)


#: one row per call, with its submission's fields (for status listings)
_LISTING = (
    "SELECT j.site, j.job_id, j.position, j.task, j.last_state, j.updated, j.runs, s.function, s.folder, "
    "s.submit_time, s.tag, s.job_id AS submission_id, s.is_array, s.container FROM jobs j JOIN submissions s "
    "ON j.tag = s.tag"
)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Columns newer than a registry file, added to an older one: ``submissions.container`` (a job's image and
    digest), ``jobs.runs`` (a requeued job's runs, ``job.attempts`` as JSON)."""
    for table, column, kind in (("submissions", "container", "TEXT"), ("jobs", "runs", "TEXT")):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column in columns:
            continue
        try:
            with conn:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:  # another process added it meanwhile
            if "duplicate column" not in str(exc):
                raise
