"""``deploy/compose.yaml`` for a single GPU host, validated offline (issue 7).

``docker compose config`` would need the compose plugin, which the docker CLI here lacks ("unknown command:
docker compose"), so the file is parsed with PyYAML (merge keys resolved) and checked against the rest of the
deployment: the Prometheus targets, the service settings and the audit CLI.
"""

from __future__ import annotations

import re

import typer.main
import yaml

from tests.deploy._support import DEPLOY

COMPOSE = DEPLOY / "compose.yaml"
SERVICES = {"mimicry", "triton", "audit", "prometheus", "pushgateway", "grafana"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_images_ports_and_healthchecks() -> None:
    services = _compose()["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), name
        assert not image.endswith(":latest"), name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["restart"] == "unless-stopped", name
    assert services["triton"]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    for name in ("mimicry", "triton"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"]), name
    assert "deploy" not in services["audit"]
    for name in ("mimicry", "audit"):
        svc = services[name]
        assert svc["user"] == "10001:10001"
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
    assert services["mimicry"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_prometheus_targets_are_compose_services_on_their_ports() -> None:
    compose = _compose()
    services = compose["services"]
    mount = next(v for v in services["prometheus"]["volumes"] if v.endswith(":/etc/prometheus:ro"))
    config_dir = DEPLOY / mount.split(":")[0]
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    assert (config_dir / config["rule_files"][0]).is_file()
    listening = {
        "mimicry": 3000,
        "triton": 8002,
        "audit": int(
            next(a for a in services["audit"]["command"] if a.startswith("--metrics-port=")).split("=")[1]
        ),
        "pushgateway": 9091,
    }
    for job in config["scrape_configs"]:
        (target,) = job["static_configs"][0]["targets"]
        host, port = target.split(":")
        assert host in services, target
        assert int(port) == listening[host], target


def test_service_environment_is_valid_serve_settings(monkeypatch) -> None:
    from serving.settings import ServeSettings

    env = _compose()["services"]["mimicry"]["environment"]
    for key, value in env.items():
        assert key.startswith("MIMICRY_SERVE_"), key
        monkeypatch.setenv(key, "compose-test-token" if "${" in str(value) else str(value))
    settings = ServeSettings()
    assert (settings.backend, settings.triton_url, settings.device) == ("triton", "triton:8000", "cuda")
    assert env["MIMICRY_SERVE_API_TOKEN"].startswith("${MIMICRY_SERVE_API_TOKEN:?")


def test_audit_service_uses_real_watch_options() -> None:
    from audit.cli import app

    audit = _compose()["services"]["audit"]
    assert audit["entrypoint"] == ["mimicry", "audit", "watch"]
    cmd = typer.main.get_command(app).commands["watch"]  # type: ignore[attr-defined]
    options = {o for p in cmd.params for o in p.opts}
    assert {a.split("=", 1)[0] for a in audit["command"]} <= options


def test_grafana_gets_the_provisioning_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert (mounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").is_file()
    assert (mounts["/var/lib/grafana/dashboards"] / "mimicry.json").is_file()
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")
