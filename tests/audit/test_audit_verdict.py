"""``mimicry audit verdict``: the main job's closing summary, read from an audit's ``report.json``.

The reports are built with the audit's own APIs (check results → :func:`audit.policy.evaluate` with the
default policy → :class:`audit.runner.ModelAudit` / :class:`~audit.runner.AuditReport` →
:func:`audit.report.report_dict`), so a change of the report schema breaks these tests rather than drifting
away from them. Expected numbers are computed here from the per-case inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.checks.base import CheckResult
from audit.cli import app
from audit.policy import evaluate, gate_passed, load_policy
from audit.report import report_dict
from audit.report.verdict import VerdictError, load_report, model_verdicts, render_verdict
from audit.runner import AuditReport, ModelAudit

UNIFORM_MARKER = 0.01  # the marker box's area share: what a uniform map puts on it
N_CASES = 20


def _model(name: str, marker_mass: list[float], flips: list[int], nss: list[float]) -> ModelAudit:
    keys = [f"case{i:02d}" for i in range(N_CASES)]
    shortcut = CheckResult("shortcut", "gradcam")
    gaze = CheckResult("gaze", "gradcam")
    occluded = CheckResult("counterfactual", "-")
    for k, mass, flip, s in zip(keys, marker_mass, flips, nss, strict=True):
        shortcut.add_case(k, {"marker_mass": mass, "outside_anatomy": 0.0})
        gaze.add_case(k, {"nss": s})
        occluded.add_case(k, {"marker_flip": float(flip), "control_flip": 0.0})
    shortcut.baselines["uniform"] = {"marker_mass": UNIFORM_MARKER, "outside_anatomy": 0.5}
    for r in (shortcut, gaze, occluded):
        r.summarise()
    # The runner attaches the method-independent counterfactual result to every method's row.
    results = [shortcut, gaze, CheckResult(**{**occluded.__dict__, "method": "gradcam"})]
    policy = load_policy(None)
    verdicts = evaluate(policy, results, ["gradcam"])
    return ModelAudit(
        name=name,
        version=1,
        sha256="0" * 64,
        architecture="unet_tiny",
        methods=["gradcam"],
        results=results,
        verdicts=verdicts,
        passed=gate_passed(verdicts),
        n_cases=N_CASES,
    )


@pytest.fixture(scope="module")
def report_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Baseline: 2.5x the uniform mass on the marker, 6 of 20 predictions change (30 %), gaze NSS < 0.
    baseline = _model("cxr-baseline", [0.02, 0.03] * 10, [1] * 6 + [0] * 14, [-0.2] * N_CASES)
    # ActDiff: 0.4x the uniform mass, no prediction changes, gaze NSS > 0.
    actdiff = _model("cxr-actdiff", [0.004] * N_CASES, [0] * N_CASES, [0.3] * N_CASES)
    report = AuditReport(
        config={"models": ["cxr-baseline", "cxr-actdiff"]},
        policy=load_policy(None),
        models=[baseline, actdiff],
        comparisons=[],
        started=1.0e9,
        finished=1.0e9 + 5,
    )
    out = tmp_path_factory.mktemp("verdict") / "report.json"
    out.write_text(json.dumps(report_dict(report), indent=2, allow_nan=False), encoding="utf-8")
    return out


def _row(text: str, gate: str) -> list[str]:
    """Cells of the table row whose first cell is ``gate`` (rich draws │ between cells)."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == gate:
            return cells[1:]
    raise AssertionError(f"no row {gate!r} in:\n{text}")


def test_verdict_table_shows_both_shortcut_gates_with_their_numbers(report_json: Path) -> None:
    text = render_verdict(load_report(report_json))
    header = next(line for line in text.splitlines() if "cxr-baseline:1" in line)
    assert header.index("cxr-baseline:1") < header.index("cxr-actdiff:1")
    marker = [f"FAIL {0.025 / UNIFORM_MARKER:.2f}× uniform", f"PASS {0.004 / UNIFORM_MARKER:.2f}× uniform"]
    assert _row(text, "Shortcut MARKER") == marker
    assert _row(text, "Shortcut OCCLUDE") == [f"FAIL {100 * 6 / N_CASES:.1f} % flip", "PASS 0.0 % flip"]
    assert _row(text, "Gaze") == ["FAIL", "PASS"]
    # Families whose checks did not run are N/A, never PASS.
    assert _row(text, "Faithfulness") == ["N/A", "N/A"]
    assert _row(text, "overall") == ["FAIL", "PASS"]


def test_verdict_reading_names_the_shortcut_model(report_json: Path) -> None:
    text = render_verdict(load_report(report_json))
    assert (
        "cxr-baseline:1 relies on the site marker: painting the marker out changes 30.0 % of its predictions "
        "(5.0 % allowed), and its Grad-CAM puts 2.50× a uniform map's share of mass on the marker."
    ) in text
    assert (
        "cxr-actdiff:1 does not rely on the site marker: painting the marker out changes 0.0 % of its "
        "predictions (5.0 % allowed), and its Grad-CAM puts 0.40× a uniform map's share of mass on the "
        "marker."
    ) in text
    assert "Other gates failed: Gaze (cxr-baseline)." in text


def test_model_verdicts_keep_the_recorded_values(report_json: Path) -> None:
    base, act = model_verdicts(load_report(report_json))
    assert base.occlusion is not None
    assert base.marker is not None
    assert base.occlusion.value == pytest.approx(0.3)
    assert base.occlusion.threshold == pytest.approx(0.05)  # the default policy's OCCLUDE limit
    assert base.marker.threshold == pytest.approx(UNIFORM_MARKER)  # factor 1.0 x the uniform baseline
    assert (base.passed, act.passed) == (False, True)


def test_cli_prints_the_verdict_and_rejects_what_is_not_a_report(report_json: Path, tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["verdict", str(report_json.parent)])
    assert ok.exit_code == 0, ok.output
    assert "cxr-baseline:1 relies on the site marker" in ok.output
    missing = CliRunner().invoke(app, ["verdict", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "no audit report" in missing.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something.else"}), encoding="utf-8")
    with pytest.raises(VerdictError, match="not a mimicry audit report"):
        load_report(other)
    truncated = tmp_path / "truncated.json"
    data = json.loads(report_json.read_text(encoding="utf-8"))
    del data["models"][0]["verdicts"]
    truncated.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(VerdictError, match="incomplete or malformed"):
        model_verdicts(load_report(truncated))
