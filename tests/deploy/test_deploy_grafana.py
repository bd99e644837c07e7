"""The Grafana dashboard (issue 7): it parses, is laid out on Grafana's 24-column grid, queries the
Prometheus datasource variable, and references only metrics that the code exports."""

from __future__ import annotations

import json

import yaml

from tests.deploy._support import DEPLOY, bentoml_metrics, metric_catalogue, promql_metrics

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
