"""The Grafana dashboard (docs/deploy.md): it parses, is laid out on Grafana's 24-column grid, queries the
Prometheus datasource variable, and references only metrics that the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.deploy._support import DEPLOY, bentoml_metrics, metric_catalogue, promql_metrics, run, tool

DASHBOARD = DEPLOY / "grafana" / "mimicry.json"


def _panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_dashboard_parses_with_unique_ids_and_valid_grid() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "mimicry-overview"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
    (var,) = dash["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")
    for p in _panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


def test_dashboard_references_only_exported_metrics() -> None:
    catalogue = metric_catalogue()
    used: set[str] = set()
    for p in _panels():
        for t in p["targets"]:
            names = promql_metrics(t["expr"])
            assert names, (p["title"], t["expr"])
            assert names <= catalogue, (p["title"], names - catalogue)
            used |= names
    # Every source of metrics is on the dashboard.
    assert used & bentoml_metrics()
    assert any(n.startswith("mimicry_audit_") for n in used)
    assert any(n.startswith("mimicry_") and not n.startswith("mimicry_audit_") for n in used)
    assert any(n.startswith("nv_") for n in used)
    assert {
        "mimicry_audit_check_passed",
        "mimicry_audit_score",
        "mimicry_audit_last_success_timestamp_seconds",
    } <= used


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_dir() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    dashboards = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "mimicry.yml").read_text()
    )
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ------------------------------------------------------------------------ units, evaluated by promtool
#: Grafana's date/time units format a number as a point in time given in **milliseconds** since the epoch.
DATE_UNITS_MS = frozenset(
    {
        "dateTimeAsIso",
        "dateTimeAsIsoNoDateIfToday",
        "dateTimeAsUS",
        "dateTimeAsUSNoDateIfToday",
        "dateTimeAsLocal",
        "dateTimeAsLocalNoDateIfToday",
        "dateTimeAsSystem",
        "dateTimeFromNow",
    }
)
#: Grafana's duration units and how many of them one second is.
DURATION_UNITS_PER_SECOND = {
    "s": 1.0,
    "ms": 1000.0,
    "m": 1 / 60,
    "h": 1 / 3600,
    "dtdurations": 1.0,
    "dtdurationms": 1000.0,
}
#: Series whose value is a Unix time in seconds (Prometheus convention: ``*_timestamp_seconds``).
TIMESTAMP_SERIES = re.compile(r"^(?:.*_timestamp_seconds|push_time_seconds|push_failure_time_seconds)$")
T0_S = 60  # the timestamp the fixture series hold (Unix seconds)
EVAL_S = 600  # promtool's evaluation time: time() = 600


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")


def _promtool_eval(tmp_path: Path, cases: list[dict], series: list[dict], interval: str = "1m") -> str:
    """``promtool test rules`` on ``promql_expr_test`` cases (no rules); asserts that every case passes."""
    (tmp_path / "none.rules.yml").write_text("groups: []\n")
    spec = {
        "rule_files": ["none.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": interval, "input_series": series, "promql_expr_test": cases}],
    }
    test = tmp_path / "panels.test.yml"
    test.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = run([tool("promtool"), "test", "rules", test.name], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_timestamp_panels_use_a_unit_of_the_query_scale(tmp_path: Path) -> None:
    """A panel showing a Unix-seconds timestamp either converts it to ms for a date unit or shows an age in a
    duration unit; promtool evaluates each such query on a series holding T0 and checks the number that
    Grafana would format is T0 in ms (date units) or the age in the unit's scale (duration units)."""
    cases, series = [], {}
    for p in _panels():
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for t in p["targets"]:
            stamps = {n for n in promql_metrics(t["expr"]) if TIMESTAMP_SERIES.match(n)}
            if not stamps:
                assert unit not in DATE_UNITS_MS, (p["title"], "a date unit on a query without a timestamp")
                continue
            assert unit in DATE_UNITS_MS or unit in DURATION_UNITS_PER_SECOND, (p["title"], unit)
            for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", t["expr"]):
                if m.group(1) in stamps:
                    matchers = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group(2) or ""))
                    labels = ", ".join(f'{k}="{v}"' for k, v in sorted(matchers.items()))
                    series[f"{m.group(1)}{{{labels}}}"] = {
                        "series": f"{m.group(1)}{{{labels}}}",
                        "values": f"{T0_S}x20",
                    }
            if unit in DATE_UNITS_MS:
                expected = T0_S * 1000.0
            else:
                expected = (EVAL_S - T0_S) * DURATION_UNITS_PER_SECOND[unit]
            cases.append(
                {
                    "expr": f"sum({_grafana_to_promql(t['expr'])})",
                    "eval_time": f"{EVAL_S}s",
                    "exp_samples": [{"labels": "{}", "value": expected}],
                }
            )
    titles = {p["title"] for p in _panels()}
    assert "Pushed one-shot audits (Pushgateway)" in titles
    assert len(cases) >= 2  # the pushed-audit time and the audit age at least
    _promtool_eval(tmp_path, cases, list(series.values()))


def test_pushed_audit_panel_selects_the_audit_push_job() -> None:
    from audit.prometheus import PUSH_JOB

    (panel,) = [p for p in _panels() if p["title"] == "Pushed one-shot audits (Pushgateway)"]
    (target,) = panel["targets"]
    assert f'push_time_seconds{{job="{PUSH_JOB}"}}' in target["expr"]


def test_error_ratio_panel_sees_the_outage_the_alert_sees(tmp_path: Path) -> None:
    """The dashboard's 5xx ratio, evaluated by promtool on the alert tests' fixture of a 1 request/min
    /v1/predict outage on two probed replicas, is 100 % (probes and scrapes not diluting it)."""
    rule_tests = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "mimicry.rules.test.yml").read_text())
    (case,) = [
        c for c in rule_tests["tests"] if any('endpoint="/healthz"' in s["series"] for s in c["input_series"])
    ]
    (panel,) = [p for p in _panels() if p["title"] == "Server error ratio (5xx)"]
    (target,) = panel["targets"]
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    cases = [
        {
            "expr": _grafana_to_promql(target["expr"]),
            "eval_time": "25m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        },
        {"expr": _grafana_to_promql(target["expr"]), "eval_time": "9m", "exp_samples": []},
    ]
    _promtool_eval(tmp_path, cases, case["input_series"], case["interval"])


def test_duration_panels_show_seconds() -> None:
    """Queries of ``*_seconds`` histograms / gauges are shown in seconds; Triton's ``*_us`` counters are
    converted (/ 1e6) before any seconds unit."""
    for p in _panels():
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for t in p["targets"]:
            names = promql_metrics(t["expr"])
            if any(n.endswith("_us") for n in names) and unit in DURATION_UNITS_PER_SECOND:
                assert "/ 1e6" in t["expr"], p["title"]
            durations = {
                n
                for n in names
                if re.search(r"_seconds(_bucket|_sum|_count)?$", n) and not TIMESTAMP_SERIES.match(n)
            }
            if (durations and "histogram_quantile" in t["expr"]) or names == {
                "mimicry_audit_run_duration_seconds"
            }:
                assert unit == "s", (p["title"], unit)
