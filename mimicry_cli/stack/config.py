"""Ports of the local stack and its Prometheus configuration, rendered from the project's own files.

``deploy/prometheus/prometheus.yml`` is the one scrape configuration (compose mounts it as-is); its header
says that ``mimicry stack up`` "rewrites only the targets (to 127.0.0.1 and the ports it picked) and the
rule_files path". :func:`render_prometheus_config` does exactly that, keeping jobs, labels, intervals
and ``deploy/prometheus/rules/mimicry.rules.yml`` unchanged (only its path is made absolute); a job whose
component does not run (``mimicry-triton`` with ``--backend onnxruntime``) is dropped.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_PORTS",
    "HOST",
    "PORT_NAMES",
    "PROMETHEUS_YML",
    "StackConfigError",
    "assign_ports",
    "check_ports_free",
    "render_prometheus_config",
]

#: The only address the stack binds (127.0.0.1 only: docs/deploy.md, local stack).
HOST = "127.0.0.1"

#: Ports of the stack, in the order of a ``--ports BASE`` block (BASE, BASE+1, ...).
PORT_NAMES = (
    "service",
    "triton_http",
    "triton_grpc",
    "triton_metrics",
    "audit",
    "prometheus",
    "pushgateway",
)

#: Without ``--ports``: the ports of deploy/compose.yaml (service 3000, Triton 8000-8002, audit 9400,
#: Prometheus 9090, Pushgateway 9091).
DEFAULT_PORTS: dict[str, int] = {
    "service": 3000,
    "triton_http": 8000,
    "triton_grpc": 8001,
    "triton_metrics": 8002,
    "audit": 9400,
    "prometheus": 9090,
    "pushgateway": 9091,
}

#: The project's scrape configuration (repository checkout).
PROMETHEUS_YML = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"


class StackConfigError(ValueError):
    """Invalid stack configuration: bad port block, busy port, unusable Prometheus configuration."""


def assign_ports(base: int | None = None) -> dict[str, int]:
    """``{name: port}``: :data:`DEFAULT_PORTS` when ``base`` is None, else ``base + i`` in
    :data:`PORT_NAMES` order.

    Raises:
        StackConfigError: the block does not fit in 1024-65535.
    """
    if base is None:
        return dict(DEFAULT_PORTS)
    last = base + len(PORT_NAMES) - 1
    if base < 1024 or last > 65535:
        raise StackConfigError(f"--ports {base}: the block {base}-{last} must lie within 1024-65535")
    return {name: base + i for i, name in enumerate(PORT_NAMES)}


def check_ports_free(ports: Mapping[str, int], host: str = HOST) -> None:
    """Bind each port on ``host`` once (then release it) to fail before starting anything.

    Raises:
        StackConfigError: a port is in use (the message names the component and the port).
    """
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
                raise StackConfigError(f"port {port} ({name}) on {host} is {reason}") from exc


def render_prometheus_config(
    targets: Mapping[str, str],
    *,
    source: Path = PROMETHEUS_YML,
    scrape_interval: str | None = None,
) -> dict[str, Any]:
    """The project's Prometheus configuration with the stack's targets.

    Args:
        targets: ``{job_name: "127.0.0.1:PORT"}`` for every job whose component runs; jobs of ``source``
            not named here are dropped.
        source: The configuration to rewrite (``deploy/prometheus/prometheus.yml``).
        scrape_interval: Replaces the global ``scrape_interval`` and ``evaluation_interval`` (e.g. ``"1s"``
            in tests); None keeps the project's.

    Returns:
        The configuration as a dict (``yaml.safe_dump`` it); ``rule_files`` are absolute paths of the
        project's rule files.

    Raises:
        StackConfigError: a target names a job ``source`` does not have, a target is not on 127.0.0.1, a
            rule file is missing, or ``source`` is not a Prometheus configuration.
    """
    source = Path(source)
    try:
        config = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StackConfigError(f"cannot read the Prometheus configuration {source} ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("scrape_configs"), list):
        raise StackConfigError(f"{source} has no scrape_configs")
    for job, target in targets.items():
        if not target.startswith(f"{HOST}:"):
            raise StackConfigError(f"target of {job} must be on {HOST}, got {target!r}")
    known = {sc.get("job_name") for sc in config["scrape_configs"]}
    unknown = sorted(set(targets) - known)
    if unknown:
        raise StackConfigError(f"{source} has no job {', '.join(unknown)}")
    config["scrape_configs"] = [
        {**sc, "static_configs": [{"targets": [targets[sc["job_name"]]]}]}
        for sc in config["scrape_configs"]
        if sc.get("job_name") in targets
    ]
    rules = []
    for entry in config.get("rule_files") or []:
        path = (source.parent / entry).resolve()
        if not path.is_file():
            raise StackConfigError(f"rule file {entry} of {source} does not exist")
        rules.append(str(path))
    config["rule_files"] = rules
    if scrape_interval is not None:
        config.setdefault("global", {})
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    return config
