"""Prometheus rules and configuration (docs/deploy.md): ``promtool check rules|config``, ``promtool test
rules``, the PrometheusRule twin, the required alerts, and metric names that exist in the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy import regen_prometheusrule
from tests.deploy._support import (
    DEPLOY,
    K8S,
    TRITON_METRICS,
    metric_catalogue,
    promql_metrics,
    render,
    run,
    tool,
)

RULES = DEPLOY / "prometheus" / "rules" / "mimicry.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rules" / "mimicry.rules.test.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
REQUIRED_ALERTS = {
    "MimicryServiceDown",
    "MimicryTritonDown",
    "MimicryHighLatency",
    "MimicryHighErrorRatio",
    "MimicryAuditCheckFailed",
    "MimicryAuditStale",
    "MimicryGazeAlignmentDropping",
    "MimicryShortcutMassRising",
}


def _rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_promtool_check_rules_passes() -> None:
    proc = run([tool("promtool"), "check", "rules", str(RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    proc = run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    """Each alert of the rules file is exercised both ways by the promtool unit tests run above."""
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else silent).add(t["alertname"])
    assert sorted(alerts - firing) == [], "alerts without a promtool case where they fire"
    assert sorted(alerts - silent) == [], "alerts without a promtool case where they stay silent"


def test_request_ratios_exclude_probe_routes_in_every_selector() -> None:
    """Every selector of BentoML's request series in the rules names its endpoints (an API allow-list or the
    probe exclusion); the promtool cases prove the behaviour: a total /v1/predict outage at 1 request/min
    with two probed replicas fires, /readyz 503s alone do not."""
    for rule in _rules():
        for m in re.finditer(r"bentoml_service_request_\w+(\{[^}]*\})?", rule["expr"]):
            name = rule.get("alert") or rule.get("record")
            assert m.group(1), (name, m.group(0))
            assert "endpoint" in m.group(1), (name, m.group(0))


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: sum(rate(x[5m]) > \n")
    proc = run([tool("promtool"), "check", "rules", str(bad)])
    assert proc.returncode == 1


def test_required_alerts_present_with_severity_and_summary() -> None:
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_rule_expressions_reference_only_exported_metrics() -> None:
    catalogue = metric_catalogue()
    records = {r["record"] for r in _rules() if "record" in r}
    for rule in _rules():
        unknown = promql_metrics(rule["expr"]) - catalogue - records
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def test_prometheusrule_resource_carries_the_same_groups(tmp_path: Path) -> None:
    text = (K8S / "base" / "prometheusrule.yaml").read_text()
    assert text == regen_prometheusrule.render(), "run: python -m tests.deploy.regen_prometheusrule"
    (rule,) = [d for d in render("gpu") if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    # What the operator would load passes promtool too.
    extracted = tmp_path / "operator.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = run([tool("promtool"), "check", "rules", str(extracted)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config_passes() -> None:
    proc = run([tool("promtool"), "check", "config", CONFIG.name], cwd=CONFIG.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout


def test_scrape_jobs_match_the_rules_and_pushgateway_honors_labels() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"mimicry-serving", "mimicry-triton", "mimicry-audit", "mimicry-pushgateway"}
    assert jobs["mimicry-pushgateway"]["honor_labels"] is True
    assert not any(j.get("honor_labels") for n, j in jobs.items() if n != "mimicry-pushgateway")
    assert config["rule_files"] == ["rules/mimicry.rules.yml"]
    targets = {n: j["static_configs"][0]["targets"] for n, j in jobs.items()}
    assert targets == {
        "mimicry-serving": ["mimicry:3000"],
        "mimicry-triton": ["triton:8002"],
        "mimicry-audit": ["audit:9400"],
        "mimicry-pushgateway": ["pushgateway:9091"],
    }
    rule_jobs = {
        j for r in _rules() for j in ("mimicry-serving", "mimicry-triton") if f'job="{j}"' in r["expr"]
    }
    assert rule_jobs <= set(jobs)


def test_triton_metric_names_exist_in_the_triton_core() -> None:
    """The nv_* names the rules and dashboard may use are strings of libtritonserver (PyTriton's build)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    # nvidia-pytriton is a hard dependency (pyproject): its absence is a broken install, not a reason to skip.
    assert spec is not None, "nvidia-pytriton is not installed"
    assert spec.origin is not None, "nvidia-pytriton is not installed"
    libs = list((Path(spec.origin).parents[1] / "nvidia_pytriton.libs").glob("libtritonserver*.so*"))
    assert libs, "libtritonserver not found next to pytriton"
    strings = subprocess.run(["strings", "-n", "8", str(libs[0])], capture_output=True, text=True, check=True)
    words = set(strings.stdout.split())
    assert sorted(TRITON_METRICS - words) == []


def test_promql_metric_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, endpoint) (rate(bentoml_service_request_duration_seconds_bucket"
        '{endpoint=~"/v1/.*", x="a b"}[5m]))) > 2 * on (model) group_left '
        "avg_over_time(mimicry_audit_score[7d]"
        ' offset 1h) or absent(up{job="x"}) / 1e6 + time() - $__rate_interval'
    )
    assert promql_metrics(expr) == {
        "bentoml_service_request_duration_seconds_bucket",
        "mimicry_audit_score",
        "up",
    }
