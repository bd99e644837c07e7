"""``deploy/compose.yaml`` for a single GPU host, validated offline (docs/deploy.md, "Compose").

The shipped file runs unchanged through ``docker-compose config`` (Debian's docker-compose, installed by
scripts/system-deps.sh; no Docker engine needed): compose-spec validation, variable interpolation and merge
keys as compose itself does them. The checks against the rest of the deployment (Prometheus targets, service
settings, the audit CLI, the image's user and data directory) read the file as compose renders it.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import typer.main
import yaml

from tests.deploy._support import DEPLOY, ROOT, dockerfile_stages, owned_directories, run, tool

COMPOSE = DEPLOY / "compose.yaml"
SERVICES = {"mimicry", "dimse", "triton", "audit", "prometheus", "pushgateway", "grafana"}
#: The secrets compose takes from deploy/.env (placeholders here).
SECRETS = {
    "MIMICRY_SERVE_API_TOKEN": "compose-test-token",
    "MIMICRY_SERVE_UID_SECRET": "compose-test-uid-secret",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-password",
}
IMAGE = "ghcr.io/mimicry-project/mimicry:"


def _docker_compose_config(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    """``docker-compose config`` of the shipped file with exactly ``env`` (an empty --env-file: no .env)."""
    empty = tmp / "empty.env"
    empty.write_text("")
    clean = {
        k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("COMPOSE_", "MIMICRY_"))
    }
    return subprocess.run(
        [tool("docker-compose"), "--env-file", str(empty), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@cache
def _compose() -> dict:
    """The file as docker-compose renders it (validated, variables interpolated, merge keys resolved)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = _docker_compose_config(SECRETS, Path(tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return yaml.safe_load(proc.stdout)


def _mounts(svc: dict) -> dict[str, str]:
    """{target: source} of a rendered service (short syntax; a source without "/" is a named volume)."""
    out = {}
    for v in svc.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def test_docker_compose_accepts_the_file_and_refuses_missing_secrets(tmp_path: Path) -> None:
    assert set(_compose()["services"]) == SERVICES
    for missing in SECRETS:
        proc = _docker_compose_config({k: v for k, v in SECRETS.items() if k != missing}, tmp_path)
        assert proc.returncode != 0, missing
        assert f"set {missing}" in proc.stderr, proc.stderr


def test_docker_compose_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: a:1\n    restart: sometimes-maybe\n    portz: []\n")
    proc = run([tool("docker-compose"), "-f", str(bad), "config"])
    assert proc.returncode != 0
    assert "portz" in proc.stderr


def test_services_images_ports_and_healthchecks() -> None:
    services = _compose()["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), name
        assert not image.endswith(":latest"), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["restart"] == "unless-stopped", name
    assert services["triton"]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    devices = {}
    for name in ("mimicry", "triton"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"]), name
        devices[name] = device["device_ids"]
    # One GPU shared by Triton and the service's torch twin (docs/deploy.md, "GPU sharing").
    assert devices["mimicry"] == devices["triton"] == ["0"]
    assert "deploy" not in services["audit"]
    assert "deploy" not in services["dimse"]  # the listener runs ONNX Runtime on the CPU
    for name in ("mimicry", "dimse", "audit"):
        svc = services[name]
        assert svc["user"] == "10001:10001"
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
    assert services["mimicry"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_prometheus_targets_are_compose_services_on_their_ports() -> None:
    compose = _compose()
    services = compose["services"]
    config_dir = Path(_mounts(services["prometheus"])["/etc/prometheus"])
    assert config_dir == DEPLOY / "prometheus"
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
        if key.startswith("MIMICRY_SERVE_"):
            monkeypatch.setenv(key, str(value))
    settings = ServeSettings()
    assert (settings.backend, settings.triton_url, settings.device) == ("triton", "triton:8000", "cuda")
    # Secrets are interpolated from .env, never written in the file.
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["mimicry"]["environment"]
    for key in ("MIMICRY_SERVE_API_TOKEN", "MIMICRY_SERVE_UID_SECRET"):
        assert raw[key] == f"${{{key}:?set {key}}}", key
        assert env[key] == SECRETS[key]
    # Two BentoML workers (the service's config name is `mimicry`): one crash leaves one answering.
    assert env["BENTOML_CONFIG_OPTIONS"] == "services.mimicry.workers=2"
    assert set(env) - {"BENTOML_CONFIG_OPTIONS"} == {k for k in env if k.startswith("MIMICRY_SERVE_")}


def test_named_volumes_of_the_image_are_writable_by_its_user() -> None:
    """Every named volume mounted into a service running the mimicry image is a directory the Dockerfile
    creates for that service's user: Docker copies it (owner included) into the new volume."""
    compose = _compose()
    owned = owned_directories(dockerfile_stages(ROOT / "Dockerfile")["runtime"])
    checked = 0
    for name, svc in compose["services"].items():
        if not svc["image"].startswith(IMAGE):
            continue
        for target, source in _mounts(svc).items():
            if source.startswith("/"):
                continue  # a bind mount from the host
            assert source in compose["volumes"], (name, source)
            assert owned.get(target) == svc["user"], (name, target, owned)
            checked += 1
    assert checked >= 1
    audit = compose["services"]["audit"]
    (data,) = [t for t, src in _mounts(audit).items() if not src.startswith("/")]
    for arg in audit["command"]:
        if arg.startswith(("--history=", "--out=")):
            assert arg.split("=", 1)[1].startswith(data + "/"), arg


def test_audit_service_uses_real_watch_options() -> None:
    from audit.cli import app

    audit = _compose()["services"]["audit"]
    assert audit["entrypoint"] == ["mimicry", "audit", "watch"]
    cmd = typer.main.get_command(app).commands["watch"]  # type: ignore[attr-defined]
    options = {o for p in cmd.params for o in p.opts}
    assert {a.split("=", 1)[0] for a in audit["command"]} <= options


def test_grafana_gets_the_provisioning_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {t: Path(src) for t, src in _mounts(grafana).items() if src.startswith("/")}
    assert (mounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").is_file()
    assert (mounts["/var/lib/grafana/dashboards"] / "mimicry.json").is_file()
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]


def test_dicom_listener_settings_cli_and_push_spool(monkeypatch) -> None:
    """The listener service: its environment is valid serve settings naming the port its command line and
    its health check use, its command-line options exist in `mimicry listen`, the UID secret comes from
    .env, and it shares the push settings and the spool volume with the service (docs/serving.md, "PACS
    integration")."""
    from mimicry_cli.main import app
    from serving.settings import ServeSettings

    services = _compose()["services"]
    dimse, serving = services["dimse"], services["mimicry"]
    assert dimse["entrypoint"] == ["mimicry", "listen"]
    listen = typer.main.get_command(app).commands["listen"]  # type: ignore[attr-defined]
    options = {o for p in listen.params for o in p.opts}
    args = dict(zip(dimse["command"][::2], dimse["command"][1::2], strict=True))
    assert set(args) <= options
    env = dimse["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = ServeSettings()
    assert (settings.dimse.host, str(settings.dimse.port)) == (args["--host"], args["--port"])
    assert (settings.backend, settings.device) == ("onnxruntime", "cpu")
    assert settings.push.kind == "none"  # the shipped default: no push until .env names a destination
    assert settings.uid_secret is not None
    assert settings.uid_secret.get_secret_value() == SECRETS["MIMICRY_SERVE_UID_SECRET"]
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["dimse"]["environment"]
    assert raw["MIMICRY_SERVE_UID_SECRET"] == "${MIMICRY_SERVE_UID_SECRET:?set MIMICRY_SERVE_UID_SECRET}"
    assert dimse["healthcheck"]["test"] == ["CMD", "python", "-m", "serving.dimse", "--echo"]
    published = {str(p).split(":")[-1].split("/")[0] for p in dimse["ports"]}
    assert {str(settings.dimse.port), str(settings.dimse.metrics_port)} <= published
    # one push configuration and one spool (a named volume) for the service and the listener
    push = {k: v for k, v in env.items() if k.startswith("MIMICRY_SERVE_PUSH__")}
    assert push == {k: v for k, v in serving["environment"].items() if k.startswith("MIMICRY_SERVE_PUSH__")}
    spool = Path(push["MIMICRY_SERVE_PUSH__SPOOL_DIR"])
    for svc in (dimse, serving):
        volumes = {t: src for t, src in _mounts(svc).items() if not src.startswith("/")}
        assert volumes.get(str(spool.parent)) == "push-spool"
    assert "push-spool" in _compose()["volumes"]
