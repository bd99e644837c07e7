"""``mimicry stack up|down|status``: the deployment of ``deploy/compose.yaml`` as local child processes.

``stack up`` (docs/deploy.md, local stack) starts, on 127.0.0.1 only, each in its own process group and
tracked by PID in ``STATE_DIR/stack.json``:

* ``triton``: ``python -m serving.triton_local`` (PyTriton serving the registry), ports 8000 (HTTP, health
  ``/v2/health/ready``), 8001 (gRPC), 8002 (metrics);
* ``audit``: ``mimicry audit watch``, port 9400 (health ``/metrics``);
* ``pushgateway``: Debian ``prometheus-pushgateway``, port 9091 (health ``/-/ready``);
* ``service``: ``bentoml serve serving.service:MimicryService`` with ``MIMICRY_SERVE_BACKEND=triton``, port
  3000 (health ``/readyz``);
* ``prometheus``: Debian ``prometheus`` with deploy/prometheus's config (targets rewritten) and rules, port
  9090 (health ``/-/ready``).

``--ports BASE`` takes the block BASE..BASE+6 instead (order: :data:`mimicry_cli.stack.config.PORT_NAMES`).
``--backend onnxruntime`` is the CPU-overlay fallback: no Triton, ONNX Runtime inside the service.
``stack down`` stops exactly the recorded process groups, newest first, never a recycled PID
(:mod:`mimicry_cli.stack.process`).

Exit codes: 0 success; 1 a component failed to start (``up``, everything started is stopped again), a
component is down (``status``) or a group could not be stopped (``down``); 2 usage errors (missing
directories, busy ports, a stack already up, an unreadable state file).

:mod:`mimicry_cli.main` attaches it as ``mimicry stack``; ``python -m mimicry_cli.commands.stack …`` runs
the same app.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import typer
import yaml

from mimicry_cli.stack.config import (
    HOST,
    PROMETHEUS_YML,
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
    http_ok,
    is_recorded_process,
    read_state,
    spawn,
    stop_all,
    wait_healthy,
    write_state,
)
from mimicry_cli.tables import print_table

__all__ = ["STATE_FILE", "Component", "app", "curl_example", "plan_stack"]

#: Name of the state file inside the state directory.
STATE_FILE = "stack.json"

#: Repository root: working directory and PYTHONPATH entry of the Python components.
ROOT = Path(__file__).resolve().parents[2]

app = typer.Typer(
    help="Run the deployment locally (127.0.0.1): Triton, service, audit watch, Prometheus, Pushgateway.",
    no_args_is_help=True,
)


@dataclass(frozen=True)
class Component:
    """One process of the plan (pure data: what :func:`up` spawns).

    Attributes:
        name: Component name (state file, log file ``logs/NAME.log``).
        argv: Command.
        port: Main port; url: base URL shown to the user; health_url: ready when it answers 200.
        stage: Components of one stage start together; a stage starts once the previous one is healthy.
        env: Environment additions.
    """

    name: str
    argv: list[str]
    port: int
    url: str
    health_url: str
    stage: int
    env: dict[str, str] = field(default_factory=dict)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StackConfigError(
            f"{name} is not installed (Debian: apt-get install prometheus prometheus-pushgateway)"
        )
    return found


def plan_stack(
    *,
    registry: Path,
    reference: Path,
    models: list[str],
    state_dir: Path,
    ports: dict[str, int],
    backend: str,
    device: str = "auto",
    audit_interval: str = "10m",
    audit_methods: str | None = None,
    audit_max_cases: int | None = None,
    prometheus_bin: str = "prometheus",
    pushgateway_bin: str = "prometheus-pushgateway",
) -> list[Component]:
    """The components of the stack, in start order (pure: builds argv and environments, starts nothing).

    Stage 0: Triton (``backend=triton`` only), audit watch, Pushgateway; stage 1: the service (it warms up
    through Triton, so Triton must be ready) and Prometheus (its configuration is written by :func:`up`).
    Every address is 127.0.0.1.
    """
    from serving.launch import build_serve_invocation

    url = f"http://{HOST}"
    out: list[Component] = []
    if backend == "triton":
        http = ports["triton_http"]
        out.append(
            Component(
                "triton",
                [
                    sys.executable,
                    "-m",
                    "serving.triton_local",
                    "--registry",
                    str(registry),
                    "--models",
                    ",".join(models),
                    "--host",
                    HOST,
                    "--http-port",
                    str(http),
                    "--grpc-port",
                    str(ports["triton_grpc"]),
                    "--metrics-port",
                    str(ports["triton_metrics"]),
                ],
                http,
                f"{url}:{http}",
                f"{url}:{http}/v2/health/ready",
                0,
            )
        )
    audit_argv = [
        sys.executable, "-m", "mimicry_cli", "audit", "watch",
        "--registry", str(registry),
        "--reference", str(reference),
        "--metrics-host", HOST,
        "--metrics-port", str(ports["audit"]),
        "--interval", audit_interval,
        "--history", str(state_dir / "audit-history.sqlite"),
    ]  # fmt: skip
    if audit_methods:
        audit_argv += ["--methods", audit_methods]
    if audit_max_cases is not None:
        audit_argv += ["--max-cases", str(audit_max_cases)]
    out.append(
        Component(
            "audit",
            audit_argv,
            ports["audit"],
            f"{url}:{ports['audit']}/metrics",
            f"{url}:{ports['audit']}/metrics",
            0,
        )
    )
    pgw = ports["pushgateway"]
    out.append(
        Component(
            "pushgateway",
            [
                pushgateway_bin,
                f"--web.listen-address={HOST}:{pgw}",
                f"--persistence.file={state_dir / 'pushgateway.data'}",
            ],
            pgw,
            f"{url}:{pgw}",
            f"{url}:{pgw}/-/ready",
            0,
        )
    )
    svc = ports["service"]
    argv, env = build_serve_invocation(
        host=HOST,
        port=svc,
        workers=1,
        registry=registry,
        models=models,
        backend=backend,
        device=device,
    )
    if backend == "triton":
        env["MIMICRY_SERVE_TRITON_URL"] = f"{HOST}:{ports['triton_http']}"
        env["MIMICRY_SERVE_TRITON_PROTOCOL"] = "http"
    out.append(Component("service", argv, svc, f"{url}:{svc}", f"{url}:{svc}/readyz", 1, env))
    prom = ports["prometheus"]
    out.append(
        Component(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={state_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={state_dir / 'prometheus-data'}",
                f"--web.listen-address={HOST}:{prom}",
            ],
            prom,
            f"{url}:{prom}",
            f"{url}:{prom}/-/ready",
            1,
        )
    )
    return out


def scrape_targets(ports: dict[str, int], backend: str) -> dict[str, str]:
    """Prometheus job → ``127.0.0.1:PORT`` (jobs of deploy/prometheus/prometheus.yml)."""
    targets = {
        "mimicry-serving": f"{HOST}:{ports['service']}",
        "mimicry-audit": f"{HOST}:{ports['audit']}",
        "mimicry-pushgateway": f"{HOST}:{ports['pushgateway']}",
    }
    if backend == "triton":
        targets["mimicry-triton"] = f"{HOST}:{ports['triton_metrics']}"
    return targets


def curl_example(service_port: int, *, token: bool = False) -> str:
    """A ready-to-paste ``/v1/predict`` request (the token is referenced, never printed)."""
    auth = '-H "Authorization: Bearer $MIMICRY_SERVE_API_TOKEN" ' if token else ""
    return (
        f"curl -s -X POST {auth}-H 'Content-Type: application/dicom' --data-binary @FILE "
        f"http://{HOST}:{service_port}/v1/predict"
    )


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus its serving settings (the API token is kept), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("MIMICRY_SERVE_") and k != "MIMICRY_SERVE_API_TOKEN")
        and k not in ("BENTOML_CONFIG_OPTIONS", "PROMETHEUS_MULTIPROC_DIR")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def _running(records: list[ProcessRecord]) -> list[ProcessRecord]:
    return [r for r in records if is_recorded_process(r)]


@app.command("up")
def up(
    registry: Path = typer.Option(..., "--registry", help="Registry root (a Triton model repository)."),
    reference: Path = typer.Option(..., "--reference", help="Reference store of the audit (EGD layout)."),
    models: list[str] = typer.Option(
        [], "--models", "-m", help="NAME, NAME:VERSION or NAME@ALIAS (repeatable; default: every model)."
    ),
    state_dir: Path = typer.Option(Path(".mimicry/stack"), "--state-dir", help="State file, logs, data."),
    ports_base: int | None = typer.Option(
        None, "--ports", help="First port of a block of 7 (default: the compose ports 3000, 8000-8002, ...)."
    ),
    backend: str = typer.Option("triton", "--backend", help="triton (default) or onnxruntime (no Triton)."),
    device: str = typer.Option("auto", "--device", help="Service device: auto, cpu or cuda."),
    timeout: float = typer.Option(
        180.0, "--timeout", min=1.0, help="Seconds each stage may take to be ready."
    ),
    scrape_interval: str | None = typer.Option(
        None, "--scrape-interval", help="Prometheus scrape/evaluation interval (default: the project's)."
    ),
    audit_interval: str = typer.Option("10m", "--audit-interval", help="audit watch re-audit period."),
    audit_methods: str | None = typer.Option(None, "--audit-methods", help="audit watch --methods."),
    audit_max_cases: int | None = typer.Option(
        None, "--audit-max-cases", min=1, help="audit watch --max-cases."
    ),
) -> None:
    """Start the stack on 127.0.0.1 and wait until every component is healthy."""
    if backend not in ("triton", "onnxruntime"):
        _usage(f"--backend must be triton or onnxruntime, got {backend!r}")
    if not registry.is_dir():
        _usage(f"registry {registry} is not a directory")
    if not reference.is_dir():
        _usage(f"reference store {reference} is not a directory")
    registry, reference, state_dir = registry.resolve(), reference.resolve(), state_dir.resolve()
    models = [m for raw in models for m in (s.strip() for s in raw.split(",")) if m]
    state = _state_path(state_dir)
    if state.exists():
        try:
            alive = _running(read_state(state))
        except StateFileError as exc:
            _usage(f"{exc}; remove it after checking no stack runs")
        if alive:
            _usage(
                f"a stack is already up ({', '.join(r.name for r in alive)}); run `mimicry stack down` first"
            )
        state.unlink()
    try:
        ports = assign_ports(ports_base)
        if backend != "triton":
            ports = {k: v for k, v in ports.items() if not k.startswith("triton")}
        check_ports_free(ports)
        prom_config = render_prometheus_config(
            scrape_targets(ports, backend), source=PROMETHEUS_YML, scrape_interval=scrape_interval
        )
        plan = plan_stack(
            registry=registry,
            reference=reference,
            models=models,
            state_dir=state_dir,
            ports=ports,
            backend=backend,
            device=device,
            audit_interval=audit_interval,
            audit_methods=audit_methods,
            audit_max_cases=audit_max_cases,
            prometheus_bin=_binary("prometheus"),
            pushgateway_bin=_binary("prometheus-pushgateway"),
        )
    except StackConfigError as exc:
        _usage(str(exc))
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "prometheus.yml").write_text(
        "# Generated by `mimicry stack up` from deploy/prometheus/prometheus.yml"
        " (targets and rule_files rewritten).\n" + yaml.safe_dump(prom_config, sort_keys=False),
        encoding="utf-8",
    )
    records: list[ProcessRecord] = []
    try:
        for stage in sorted({c.stage for c in plan}):
            started: list[tuple[ProcessRecord, subprocess.Popen[bytes] | None]] = []
            for comp in (c for c in plan if c.stage == stage):
                record, proc = spawn(
                    comp.name,
                    comp.argv,
                    log_path=state_dir / "logs" / f"{comp.name}.log",
                    health_url=comp.health_url,
                    url=comp.url,
                    port=comp.port,
                    env=_child_env(comp.env),
                    cwd=ROOT,
                )
                records.append(record)
                write_state(state, records)
                started.append((record, proc))
                typer.echo(f"started {comp.name} (pid {record.pid})", err=True)
            wait_healthy(started, timeout_s=timeout)
    except (StackError, KeyboardInterrupt) as exc:
        with contextlib.suppress(StackError):
            stop_all(records)
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
        if isinstance(exc, StackStartError):
            typer.echo(f"error: {exc}; stopped the stack. Last lines of its log:\n{exc.log}", err=True)
        else:
            typer.echo(f"error: {exc or 'interrupted'}; stopped the stack", err=True)
        raise typer.Exit(1) from None
    token = bool(os.environ.get("MIMICRY_SERVE_API_TOKEN"))
    typer.echo("mimicry stack is up (127.0.0.1 only):")
    for record in records:
        typer.echo(f"  {record.name:<12} {record.url:<32} pid {record.pid}")
    typer.echo(f"logs: {state_dir / 'logs'}   state: {state}")
    typer.echo(f"predict: {curl_example(ports['service'], token=token)}")
    typer.echo(f"push one-shot audits: mimicry audit run ... --pushgateway {HOST}:{ports['pushgateway']}")
    typer.echo(
        "stop: mimicry stack down"
        + ("" if state_dir == Path(".mimicry/stack").resolve() else f" --state-dir {state_dir}")
    )


@app.command("down")
def down(
    state_dir: Path = typer.Option(Path(".mimicry/stack"), "--state-dir", help="State directory of `up`."),
    timeout: float = typer.Option(15.0, "--timeout", min=0.1, help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """Stop exactly the recorded process groups (newest first) and remove the state file."""
    state = _state_path(state_dir)
    if not state.exists():
        typer.echo(f"no stack recorded in {state_dir}")
        return
    try:
        records = read_state(state)
    except StateFileError as exc:
        _usage(str(exc))

    def report(record: ProcessRecord, outcome: StopOutcome) -> None:
        typer.echo(f"  {record.name:<12} pid {record.pid:<8} {outcome.value}")

    try:
        stop_all(records, timeout_s=timeout, on_stop=report)
    except StackError as exc:
        typer.echo(f"error: {exc}; the state file is kept", err=True)
        raise typer.Exit(1) from None
    state.unlink()
    typer.echo("mimicry stack is down")


@app.command("status")
def status(
    state_dir: Path = typer.Option(Path(".mimicry/stack"), "--state-dir", help="State directory of `up`."),
) -> None:
    """Table of the recorded components: PID, process state, health, URL (exit 1 unless all healthy)."""
    state = _state_path(state_dir)
    if not state.exists():
        typer.echo(f"no stack recorded in {state_dir}")
        raise typer.Exit(1)
    try:
        records = read_state(state)
    except StateFileError as exc:
        _usage(str(exc))
    rows = []
    healthy = True
    for record in records:
        running = is_recorded_process(record)
        ok = running and http_ok(record.health_url)
        healthy = healthy and ok
        process, health = ("running" if running else "gone"), ("ok" if ok else "failing")
        rows.append((record.name, record.pid, process, health, record.url))
    print_table(["component", "pid", "process", "health", "url"], rows)
    if not healthy:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover - `python -m mimicry_cli.commands.stack`
    app(prog_name="mimicry stack")
