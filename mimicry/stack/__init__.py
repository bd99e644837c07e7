"""Process management of the local stack (issue 7, "Local stack (no Docker)").

``mimicry stack up`` runs the same stack as ``deploy/compose.yaml`` on 127.0.0.1 as child processes: Triton
(PyTriton), the BentoML service, ``mimicry audit watch``, Prometheus and the Pushgateway. This package is
core (DESIGN.md, "Shape"): it imports neither ``serving`` nor ``audit`` and only launches commands by
subprocess. :mod:`mimicry.stack.process` spawns, health-checks and stops process groups (with PID-reuse
protection) and keeps the state file; :mod:`mimicry.stack.config` renders the project's Prometheus
configuration for the stack's ports. The CLI lives in :mod:`mimicry.commands.stack`.
"""

from mimicry.stack.config import (
    DEFAULT_PORTS,
    PORT_NAMES,
    StackConfigError,
    assign_ports,
    check_ports_free,
    render_prometheus_config,
)
from mimicry.stack.process import (
    ProcessRecord,
    StackError,
    StackStartError,
    StateFileError,
    StopOutcome,
    descendants,
    group_members,
    http_ok,
    is_recorded_process,
    log_tail,
    read_state,
    spawn,
    stop_all,
    stop_record,
    wait_healthy,
    write_state,
)

__all__ = [
    "DEFAULT_PORTS",
    "PORT_NAMES",
    "ProcessRecord",
    "StackConfigError",
    "StackError",
    "StackStartError",
    "StateFileError",
    "StopOutcome",
    "assign_ports",
    "check_ports_free",
    "descendants",
    "group_members",
    "http_ok",
    "is_recorded_process",
    "log_tail",
    "read_state",
    "render_prometheus_config",
    "spawn",
    "stop_all",
    "stop_record",
    "wait_healthy",
    "write_state",
]
