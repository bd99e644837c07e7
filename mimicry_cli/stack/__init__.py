"""Process supervision of the local stack (docs/deploy.md, local stack without Docker).

``mimicry stack up`` runs the same stack as ``deploy/compose.yaml`` on 127.0.0.1 as child processes: Triton
(PyTriton), the BentoML service, ``mimicry audit watch``, Prometheus and the Pushgateway. This package
imports neither ``serving`` nor ``audit``: it only launches commands by subprocess.
:mod:`mimicry_cli.stack.process` spawns, health-checks and stops process groups (with PID-reuse protection)
and keeps the state file; :mod:`mimicry_cli.stack.config` renders the project's Prometheus configuration for
the stack's ports. The command lives in :mod:`mimicry_cli.commands.stack`.
"""

from mimicry_cli.stack.config import (
    DEFAULT_PORTS,
    PORT_NAMES,
    StackConfigError,
    assign_ports,
    check_ports_free,
    render_prometheus_config,
)
from mimicry_cli.stack.process import (
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
