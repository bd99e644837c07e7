"""Policy file → PASS/FAIL verdicts and the Table-2-shaped table (audit.policy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.checks import CheckResult, MetricSummary
from audit.errors import PolicyError
from audit.policy import DEFAULT_POLICY_PATH, Policy, evaluate, format_table, gate_passed, load_policy


def test_default_policy_is_documented_and_valid() -> None:
    p = load_policy()
    assert DEFAULT_POLICY_PATH.name == "policy_default.yaml"
    ids = [c.id for c in p.criteria]
    assert ids[:4] == ["utility_avg", "randomisation", "repeatability_low", "reproducibility_low"]
    assert p.randomisation.n_pairs == 50
    assert p.method_params["integrated_gradients"] == {"n_steps": 25}
    assert load_policy(DEFAULT_POLICY_PATH).sha256 == p.sha256


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "version: 1\ncriteria: [{id: a, group: G, check: nonsense, metric: m, op: '<', threshold: 1}]",
            "nonsense",
        ),
        ("version: 1\ncriteria: [{id: a, group: G, check: gaze, metric: m, op: '=', threshold: 1}]", "op"),
        ("version: 2\n", "version"),
        ("version: 1\nunknown_key: 3\n", "unknown_key"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_invalid_policies_raise_policy_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError, match=needle):
        load_policy(f)
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "missing.yaml")


def _policy() -> Policy:
    return Policy.model_validate(
        {
            "criteria": [
                {
                    "id": "util",
                    "group": "Utility",
                    "label": "AVG",
                    "check": "localisation",
                    "metric": "auprc",
                    "op": ">",
                    "threshold": {"baseline": "average_mask"},
                },
                {
                    "id": "rand",
                    "group": "Randomization",
                    "check": "cascading_randomisation",
                    "metric": "ssim_full",
                    "op": "<",
                    "threshold": {"baseline": "degradation_threshold", "factor": 2},
                },
                {
                    "id": "rep",
                    "group": "Repeatability",
                    "label": "LOW",
                    "check": "repeatability",
                    "metric": "ssim",
                    "op": ">",
                    "threshold": 0.5,
                },
                {
                    "id": "info",
                    "group": "Gaze",
                    "label": "CC",
                    "check": "gaze",
                    "metric": "cc",
                    "op": ">=",
                    "threshold": 0.0,
                    "gate": False,
                    "statistic": "ci_low",
                },
            ]
        }
    )


def _result(check: str, method: str, metric: str, mean: float, **baselines: float) -> CheckResult:
    r = CheckResult(check, method)
    r.summaries[metric] = MetricSummary(mean, mean, 0.1, mean - 0.1, mean + 0.1, 10)
    for name, v in baselines.items():
        r.baselines[name] = {metric: v}
    return r


def test_evaluate_baselines_factors_na_and_gate() -> None:
    results = [
        _result("localisation", "gradcam", "auprc", 0.30, average_mask=0.20),
        _result("localisation", "gradient", "auprc", 0.10, average_mask=0.20),
        _result("cascading_randomisation", "gradcam", "ssim_full", 0.50, degradation_threshold=0.3),
        _result("gaze", "gradcam", "cc", 0.05),
    ]
    v = {(x.method, x.criterion): x for x in evaluate(_policy(), results, ["gradcam", "gradient"])}
    assert v[("gradcam", "util")].status == "PASS"
    assert v[("gradcam", "util")].threshold == 0.20
    assert v[("gradient", "util")].status == "FAIL"
    assert v[("gradcam", "rand")].status == "PASS"
    assert v[("gradcam", "rand")].threshold == pytest.approx(0.6)
    assert v[("gradient", "rand")].status == "N/A"
    assert v[("gradient", "rand")].reason == "check not run"
    assert v[("gradcam", "rep")].status == "N/A"
    assert v[("gradcam", "info")].status == "FAIL"
    assert v[("gradcam", "info")].value == pytest.approx(-0.05)
    # gradient's utility FAIL is gating; gradcam's CC (ci_low) FAIL is not.
    assert not gate_passed(list(v.values()))
    assert gate_passed([x for x in v.values() if x.method == "gradcam"])


def test_format_table_is_shaped_like_table_2() -> None:
    results = [
        _result("localisation", "gradcam", "auprc", 0.30, average_mask=0.20),
        _result("localisation", "gradient", "auprc", 0.10, average_mask=0.20),
    ]
    table = format_table(evaluate(_policy(), results, ["gradcam", "gradient"]))
    assert table.splitlines() == [
        "Method    Utility  Randomization  Repeatability  Gaze",
        "          AVG                     LOW            CC*",
        "gradcam   PASS     N/A            N/A            N/A",
        "gradient  FAIL     N/A            N/A            N/A",
    ]
