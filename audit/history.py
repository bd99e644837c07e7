"""Append-only SQLite history of audit runs (docs/audit.md, "History, cache, gate").

Tables (schema version 1; every table is append-only, enforced by triggers that abort UPDATE and DELETE):

* ``runs`` — one row per audited model version when its run starts: model, version, sha256 (of the model's
  artifacts), policy JSON + sha256, config JSON, started (Unix seconds);
* ``run_end`` — one row when the run finishes: finished, status (``passed`` / ``failed`` / ``error``), passed;
  a run without one is *incomplete* (killed, crashed) — :meth:`History.runs` reports it as such;
* ``results`` — per-case scores ``(run, check, method, metric, class, case, value)``;
* ``case_done`` — marks that every per-case score of (run, method, case) is stored; written in the *same
  transaction* as those scores, so a SIGKILL never leaves a case that looks complete but is not;
* ``summaries`` — per (run, check, method, metric): mean, median, std, CI, n;
* ``verdicts`` — per (run, criterion, method): PASS / FAIL / N/A, value, threshold, gate.

Cache and resume: per-case scores are reused across runs keyed by (model sha256, method, case, config
sha256) — :meth:`History.cached_cases` — so a re-run (or the run after a killed one) computes only what is
missing. SQLite runs in WAL mode with ``synchronous=FULL``; every write is one transaction.
No dataset identifiers are stored: cases are keyed by :func:`audit.reference.case_key`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.checks.base import CheckResult
from audit.errors import HistoryError
from audit.policy import Verdict
from audit.scores import CaseScores, Score

__all__ = ["SCHEMA_VERSION", "History", "RunRecord"]

SCHEMA_VERSION = 1

_TABLES = ("runs", "run_end", "results", "case_done", "summaries", "verdicts")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
    policy TEXT NOT NULL, policy_sha256 TEXT NOT NULL, config TEXT NOT NULL, started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_end (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    finished REAL NOT NULL, status TEXT NOT NULL, passed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id), check_name TEXT NOT NULL, method TEXT NOT NULL,
    metric TEXT NOT NULL, class TEXT NOT NULL, case_key TEXT NOT NULL, value REAL
);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id, method, case_key);
CREATE TABLE IF NOT EXISTS case_done (
    run_id INTEGER NOT NULL REFERENCES runs(id), model_sha256 TEXT NOT NULL, config_sha256 TEXT NOT NULL,
    method TEXT NOT NULL, case_key TEXT NOT NULL, PRIMARY KEY (run_id, method, case_key)
);
CREATE INDEX IF NOT EXISTS case_done_key ON case_done(model_sha256, config_sha256, method);
CREATE TABLE IF NOT EXISTS summaries (
    run_id INTEGER NOT NULL REFERENCES runs(id), check_name TEXT NOT NULL, method TEXT NOT NULL,
    metric TEXT NOT NULL, mean REAL, median REAL, std REAL, ci_low REAL, ci_high REAL, n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id INTEGER NOT NULL REFERENCES runs(id), criterion TEXT NOT NULL, method TEXT NOT NULL,
    status TEXT NOT NULL, value REAL, threshold REAL, gate INTEGER NOT NULL
);
"""


def _triggers() -> str:
    out = []
    for t in _TABLES:
        for op in ("UPDATE", "DELETE"):
            out.append(
                f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, 'the audit history is append-only'); END;"
            )
    return "\n".join(out)


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


@dataclass(frozen=True)
class RunRecord:
    """One run as :meth:`History.runs` lists it (status ``incomplete`` when it never finished)."""

    id: int
    model: str
    version: int
    sha256: str
    policy_sha256: str
    started: float
    finished: float | None
    status: str
    passed: bool | None

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


class History:
    """The audit history database at ``path`` (created with its schema on first use).

    Raises:
        HistoryError: the file is not an SQLite database or has another schema version.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._tx() as c:
                for stmt in (_SCHEMA + _triggers()).split(";\n"):
                    if stmt.strip():
                        c.execute(stmt)
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise HistoryError(f"history schema version {row[0]} is not {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"cannot open the audit history: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on error."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ writes

    def start_run(
        self, *, model: str, version: int, sha256: str, policy_json: str, policy_sha256: str, config: Mapping
    ) -> int:
        """Insert a run row; returns its id."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO runs (model, version, sha256, policy, policy_sha256, config, started) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    int(version),
                    sha256,
                    policy_json,
                    policy_sha256,
                    json.dumps(config, sort_keys=True),
                    time.time(),
                ),
            )
            return int(cur.lastrowid)

    def record_cases(
        self,
        run_id: int,
        *,
        model_sha256: str,
        config_sha256: str,
        method: str,
        cases: Mapping[str, CaseScores],
    ) -> None:
        """Store the per-case scores of several cases and mark them done, in one transaction.

        ``cases``: ``case_key -> CaseScores(class name, [Score(check, metric, value), ...])``.
        """
        with self._tx() as c:
            for case, (cls, rows) in cases.items():
                c.executemany(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, chk, method, met, cls, case, _num(v)) for chk, met, v in rows],
                )
                c.execute(
                    "INSERT OR IGNORE INTO case_done VALUES (?, ?, ?, ?, ?)",
                    (run_id, model_sha256, config_sha256, method, case),
                )

    def record_results(
        self, run_id: int, results: Iterable[CheckResult], verdicts: Sequence[Verdict]
    ) -> None:
        """Store summaries, model-level per-case scores not yet stored, and verdicts (one transaction)."""
        with self._tx() as c:
            stored = {
                (r[0], r[1], r[2])
                for r in c.execute(
                    "SELECT DISTINCT check_name, method, metric FROM results WHERE run_id=?", (run_id,)
                )
            }
            for r in results:
                for metric, per_case in r.values.items():
                    if (r.check, r.method, metric) in stored:
                        continue
                    c.executemany(
                        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [
                            (run_id, r.check, r.method, metric, r.case_class.get(k, ""), k, _num(v))
                            for k, v in per_case.items()
                        ],
                    )
                for metric, s in r.summaries.items():
                    c.execute(
                        "INSERT INTO summaries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            run_id,
                            r.check,
                            r.method,
                            metric,
                            _num(s.mean),
                            _num(s.median),
                            _num(s.std),
                            _num(s.ci_low),
                            _num(s.ci_high),
                            int(s.n),
                        ),
                    )
            c.executemany(
                "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, v.criterion, v.method, v.status, _num(v.value), _num(v.threshold), int(v.gate))
                    for v in verdicts
                ],
            )

    def finish_run(self, run_id: int, *, status: str, passed: bool) -> None:
        """Append the run's end row (``status``: passed / failed / error)."""
        with self._tx() as c:
            c.execute("INSERT INTO run_end VALUES (?, ?, ?, ?)", (run_id, time.time(), status, int(passed)))

    # ------------------------------------------------------------------------------------------- reads

    def cached_cases(
        self, *, model_sha256: str, config_sha256: str, method: str
    ) -> dict[str, CaseScores]:
        """Per-case scores already stored for (model, config, method), from any run (latest wins).

        Only cases marked done are returned, so a killed run's partial writes never show up.
        """
        rows = self._conn.execute(
            "SELECT d.run_id, r.case_key, r.class, r.check_name, r.metric, r.value FROM case_done d "
            "JOIN results r ON r.run_id = d.run_id AND r.method = d.method AND r.case_key = d.case_key "
            "WHERE d.model_sha256=? AND d.config_sha256=? AND d.method=? ORDER BY d.run_id",
            (model_sha256, config_sha256, method),
        ).fetchall()
        latest: dict[str, int] = {}
        for run_id, case, *_ in rows:
            latest[case] = run_id
        out: dict[str, CaseScores] = {}
        for run_id, case, cls, chk, met, val in rows:
            if latest[case] != run_id:
                continue
            entry = out.setdefault(case, CaseScores(cls, []))
            entry.rows.append(Score(chk, met, float("nan") if val is None else float(val)))
        return out

    def runs(self, model: str | None = None, version: int | None = None) -> list[RunRecord]:
        """Runs, oldest first (optionally of one model / version)."""
        q = (
            "SELECT r.id, r.model, r.version, r.sha256, r.policy_sha256, r.started, e.finished, "
            "COALESCE(e.status, 'incomplete'), e.passed FROM runs r LEFT JOIN run_end e ON e.run_id = r.id"
        )
        args: list[Any] = []
        where = []
        if model is not None:
            where.append("r.model = ?")
            args.append(model)
        if version is not None:
            where.append("r.version = ?")
            args.append(int(version))
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY r.id"
        return [
            RunRecord(int(i), m, int(v), s, p, float(st), fi, status, None if ps is None else bool(ps))
            for i, m, v, s, p, st, fi, status, ps in self._conn.execute(q, args).fetchall()
        ]

    def latest_finished(self, model: str, version: int, sha256: str | None = None) -> RunRecord | None:
        """The most recent finished run of a version (optionally of exactly these artifacts)."""
        done = [r for r in self.runs(model, version) if r.finished is not None]
        if sha256 is not None:
            done = [r for r in done if r.sha256 == sha256]
        return done[-1] if done else None

    def summaries(self, run_id: int) -> list[dict[str, Any]]:
        cols = ("check", "method", "metric", "mean", "median", "std", "ci_low", "ci_high", "n")
        rows = self._conn.execute(
            "SELECT check_name, method, metric, mean, median, std, ci_low, ci_high, n FROM summaries "
            "WHERE run_id=? ORDER BY check_name, method, metric",
            (run_id,),
        ).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def verdicts(self, run_id: int) -> list[dict[str, Any]]:
        cols = ("criterion", "method", "status", "value", "threshold", "gate")
        rows = self._conn.execute(
            "SELECT criterion, method, status, value, threshold, gate FROM verdicts WHERE run_id=?", (run_id,)
        ).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def results(self, run_id: int) -> list[tuple[str, str, str, str, str, float | None]]:
        """``(check, method, metric, class, case, value)`` rows of a run."""
        return self._conn.execute(
            "SELECT check_name, method, metric, class, case_key, value FROM results WHERE run_id=? "
            "ORDER BY rowid",
            (run_id,),
        ).fetchall()

    def trend(self, check: str, method: str, metric: str, model: str | None = None) -> list[dict[str, Any]]:
        """Mean of one metric per finished run, oldest first (the trend ``audit history`` prints)."""
        q = (
            "SELECT r.id, r.model, r.version, e.finished, s.mean, s.ci_low, s.ci_high, s.n FROM summaries s "
            "JOIN runs r ON r.id = s.run_id JOIN run_end e ON e.run_id = r.id "
            "WHERE s.check_name=? AND s.method=? AND s.metric=?"
        )
        args: list[Any] = [check, method, metric]
        if model is not None:
            q += " AND r.model=?"
            args.append(model)
        cols = ("run", "model", "version", "finished", "mean", "ci_low", "ci_high", "n")
        return [dict(zip(cols, r, strict=True)) for r in self._conn.execute(q + " ORDER BY r.id", args)]
