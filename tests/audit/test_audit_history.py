"""SQLite history: append-only, transactional, resumable after SIGKILL; the promotion gate (audit.history,
audit.gate)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit.checks import CheckResult
from audit.gate import audit_gate
from audit.history import History
from audit.policy import Verdict


def _start(h: History, version: int = 1, sha: str = "s" * 64) -> int:
    return h.start_run(model="m", version=version, sha256=sha, policy_json="{}", policy_sha256="p", config={})


def test_history_is_append_only(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        rid = _start(h)
        h.record_cases(
            rid,
            model_sha256="s",
            config_sha256="c",
            method="gradcam",
            cases={"k1": ("CHF", [("gaze", "nss", 1.5)])},
        )
        for stmt in (
            "UPDATE results SET value = 0",
            "DELETE FROM results",
            "DELETE FROM runs",
            "UPDATE case_done SET method = 'x'",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                h._conn.execute(stmt)
        assert h.results(rid) == [("gaze", "gradcam", "nss", "CHF", "k1", 1.5)]


def test_runs_summaries_verdicts_and_trend(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        for i, (mean, passed) in enumerate([(0.2, False), (0.4, True)]):
            rid = _start(h, version=i + 1)
            r = CheckResult("gaze", "gradcam")
            r.add_case("a", {"nss": mean - 0.1})
            r.add_case("b", {"nss": mean + 0.1})
            r.summarise()
            v = Verdict(
                "gaze_nss", "Gaze NSS>0", "gradcam", "PASS" if passed else "FAIL", mean, 0.3, ">", True
            )
            h.record_results(rid, [r], [v])
            h.finish_run(rid, status="passed" if passed else "failed", passed=passed)
        unfinished = _start(h, version=3)
        runs = h.runs()
        assert [(x.version, x.status, x.passed) for x in runs] == [
            (1, "failed", False),
            (2, "passed", True),
            (3, "incomplete", None),
        ]
        assert runs[-1].id == unfinished
        trend = h.trend("gaze", "gradcam", "nss")
        assert [t["version"] for t in trend] == [1, 2]
        assert [t["mean"] for t in trend] == pytest.approx([0.2, 0.4])
        assert h.verdicts(runs[0].id)[0]["status"] == "FAIL"
        assert sorted(x[4] for x in h.results(runs[0].id)) == ["a", "b"]
        assert h.latest_finished("m", 3) is None
        assert h.latest_finished("m", 2).passed is True


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from audit.history import History
    h = History(sys.argv[1])
    rid = h.start_run(model="m", version=1, sha256="s", policy_json="{}", policy_sha256="p", config={})
    for k in ("c1", "c2"):
        h.record_cases(rid, model_sha256="s", config_sha256="c", method="gradcam",
                       cases={k: ("CHF", [("gaze", "nss", 1.0), ("gaze", "cc", 0.5)])})
    # Third case: die half-way through its transaction (one of two rows written, no case_done yet).
    c = h._conn
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO results VALUES (?, 'gaze', 'gradcam', 'nss', 'CHF', 'c3', 9.0)", (rid,))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_mid_run_leaves_no_half_written_case_and_resumes(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(db)], timeout=60, check=False)
    assert proc.returncode == -9
    with History(db) as h:
        (run,) = h.runs()
        assert run.status == "incomplete"
        assert run.finished is None
        cached = h.cached_cases(model_sha256="s", config_sha256="c", method="gradcam")
        assert sorted(cached) == ["c1", "c2"]
        assert sorted(cached["c1"][1]) == [("gaze", "cc", 0.5), ("gaze", "nss", 1.0)]
        assert [r[4] for r in h.results(run.id)].count("c3") == 0  # the open transaction was rolled back
        # The next run resumes: it reuses c1, c2 and stores only c3.
        rid = _start(h, sha="s")
        h.record_cases(
            rid,
            model_sha256="s",
            config_sha256="c",
            method="gradcam",
            cases={"c3": ("CHF", [("gaze", "nss", 2.0), ("gaze", "cc", 0.1)])},
        )
        assert sorted(h.cached_cases(model_sha256="s", config_sha256="c", method="gradcam")) == [
            "c1",
            "c2",
            "c3",
        ]
        assert h.cached_cases(model_sha256="s", config_sha256="other", method="gradcam") == {}


class _Card:
    def __init__(self, version: int) -> None:
        self.name = "m"
        self.version = version
        self.artifacts = {"model.onnx": "a" * 64}


def test_gate_refuses_a_failed_latest_audit(tmp_path: Path) -> None:
    from audit.runner import model_sha256

    db = tmp_path / "h.sqlite"
    gate = audit_gate(db)
    assert gate(_Card(1)) == (True, "no audit history")
    assert audit_gate(db, require_audit=True)(_Card(1)) == (False, "no audit history")
    sha = model_sha256(_Card(1))  # type: ignore[arg-type]
    with History(db) as h:
        r1 = _start(h, 1, sha)
        h.finish_run(r1, status="passed", passed=True)
        r2 = _start(h, 1, sha)
        h.finish_run(r2, status="failed", passed=False)
        r3 = _start(h, 2, sha)
        h.finish_run(r3, status="passed", passed=True)
        _start(h, 2, sha)  # an incomplete later run does not count
    assert gate(_Card(1)) == (False, f"latest audit (run {r2}) failed")
    assert gate(_Card(2)) == (True, f"latest audit (run {r3}) passed")
    assert gate(_Card(3))[0] is True
    assert audit_gate(db, require_audit=True)(_Card(3)) == (False, "no finished audit of this version")
