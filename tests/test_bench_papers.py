"""The seed papers' tables end to end (smoke preset, through ``mimicry bench arun2021`` / ``khakzar2021``).

Each command trains and publishes the models, audits them into a history database and writes the table read
back from it. The tests check the table's shape (every method row, every criterion / metric column), that
each PASS/FAIL follows from the JSON's value, the policy's operator and threshold (a fixed threshold must be
the policy's number), and that the JSON holds exactly what the history database stores (read here with
plain ``sqlite3``, not the project's history class).
"""

from __future__ import annotations

import json
import math
import operator
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from audit.papers import ARUN_CRITERIA, ARUN_METHODS, KHAKZAR_METHODS, KHAKZAR_METRICS
from audit.policy import BaselineRef, load_policy
from mimicry_cli.commands.bench import app

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _run(command: str, out: Path) -> dict[str, Any]:
    res = CliRunner().invoke(app, [command, "--preset", "smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def arun(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("arun") / "out"
    return out, _run("arun2021", out)


@pytest.fixture(scope="module")
def khakzar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("khakzar") / "out"
    return out, _run("khakzar2021", out)


def _stored(out: Path, run_id: int) -> tuple[dict[tuple[str, str], tuple], dict[tuple[str, str, str], tuple]]:
    with sqlite3.connect(out / "history.sqlite") as db:
        verdicts = {
            (c, m): (s, v, t)
            for c, m, s, v, t in db.execute(
                "SELECT criterion, method, status, value, threshold FROM verdicts WHERE run_id=?", (run_id,)
            )
        }
        summaries = {
            (c, m, k): (mean, std, n)
            for c, m, k, mean, std, n in db.execute(
                "SELECT check_name, method, metric, mean, std, n FROM summaries WHERE run_id=?", (run_id,)
            )
        }
    return verdicts, summaries


def _consistent(cell: dict[str, Any], op: str) -> None:
    if cell["status"] == "N/A":
        assert cell["value"] is None or cell["threshold"] is None
        return
    assert math.isfinite(cell["value"])
    assert math.isfinite(cell["threshold"])
    assert cell["status"] == ("PASS" if OPS[op](cell["value"], cell["threshold"]) else "FAIL")


def test_arun_table_has_every_method_and_criterion(arun: tuple[Path, dict[str, Any]]) -> None:
    out, table = arun
    assert list(table["rows"]) == list(ARUN_METHODS)
    assert [c["id"] for c in table["criteria"]] == [cid for cid, *_ in ARUN_CRITERIA]
    md = (out / "results.md").read_text(encoding="utf-8").splitlines()
    assert md[0].startswith("| Method | Utility AVG | Utility UNET | Randomization | Repeatability LOW")
    assert [line.split("|")[1].strip() for line in md[2:10]] == list(ARUN_METHODS.values())
    # The smoke preset trains two replicates and a second architecture: every cell is scored.
    for method, row in table["rows"].items():
        for cid, *_ in ARUN_CRITERIA:
            assert row[cid]["status"] in ("PASS", "FAIL"), (method, cid, row[cid])
            assert row[cid]["n"] >= 1


def test_arun_pass_fail_follows_the_policy(arun: tuple[Path, dict[str, Any]]) -> None:
    out, table = arun
    policy = {c.id: c for c in load_policy(None).criteria}
    verdicts, summaries = _stored(out, table["meta"]["history_run_id"])
    for cid, *_ in ARUN_CRITERIA:
        crit = policy[cid]
        for method, row in table["rows"].items():
            cell = row[cid]
            assert cell["op"] == crit.op
            _consistent(cell, crit.op)
            if not isinstance(crit.threshold, BaselineRef):
                assert cell["threshold"] == pytest.approx(float(crit.threshold))
            # The JSON is what the audit stored.
            assert verdicts[(cid, method)] == (cell["status"], cell["value"], cell["threshold"])
            assert summaries[(crit.check, method, crit.metric)][0] == pytest.approx(cell["mean"])
    # The agreement count with the paper follows from the statuses and the paper's table.
    for dataset, paper in table["paper_table"].items():
        agree = sum(
            (table["rows"][m][cid]["status"] == "PASS") == paper[m][i]
            for m in ARUN_METHODS
            for i, (cid, *_) in enumerate(ARUN_CRITERIA)
        )
        assert table["agreement"][dataset] == {"agree": agree, "of": 32}


def test_khakzar_table_has_every_method_and_metric(khakzar: tuple[Path, dict[str, Any]]) -> None:
    out, table = khakzar
    assert table["methods"] == list(KHAKZAR_METHODS)
    assert list(table["metrics"]) == [metric for _, metric, _, _ in KHAKZAR_METRICS]
    md = (out / "results.md").read_text(encoding="utf-8").splitlines()
    assert md[0] == "| metric | " + " | ".join(KHAKZAR_METHODS.values()) + " |"
    assert len(md[2].split("|")) == len(KHAKZAR_METHODS) + 3
    verdicts, summaries = _stored(out, table["meta"]["history_run_id"])
    for check, metric, _, _ in KHAKZAR_METRICS:
        for m in KHAKZAR_METHODS:
            cell = table["metrics"][metric][m]
            stored = summaries.get((check, m, metric))
            assert stored is not None, (check, m, metric)
            assert cell["n"] == stored[2]
            if cell["mean"] is not None:
                assert cell["mean"] == pytest.approx(stored[0])
    for m in KHAKZAR_METHODS:  # faithfulness is scored on every case: the mean of a difference
        ins, dele, diff = (
            table["metrics"][k][m]["mean"]
            for k in ("insertion_auc", "deletion_auc", "insertion_minus_deletion")
        )
        assert 0.0 <= ins <= 1.0
        assert 0.0 <= dele <= 1.0
        assert diff == pytest.approx(ins - dele, abs=1e-9)
    crit = {c.id: c for c in load_policy(None).criteria}["faithfulness"]
    for m, cell in table["verdicts"].items():
        _consistent(cell, crit.op)
        assert cell["threshold"] == pytest.approx(float(crit.threshold))
        assert cell["value"] == pytest.approx(table["metrics"][crit.metric][m]["mean"])
        assert verdicts[("faithfulness", m)][0] == cell["status"]


def test_unknown_preset_is_a_usage_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["arun2021", "--preset", "huge", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "unknown preset" in res.output
