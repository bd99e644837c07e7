"""``mimicry audit`` — run, history, watch, policy check (Typer app ``app``, mounted by ``mimicry_cli.main``).

Exit codes of ``audit run`` (:data:`EXIT_CODES`; docs/audit.md, "Exit codes"): 0 every gate passed; 1 a gating
criterion FAILed (CI/CD blocks the promotion); 2 usage or input error (bad policy, unknown model, unreadable
reference store); 3 the audit could not run: a model's audit, or one of its methods, ended in an error, so its
verdicts are incomplete (takes precedence over 1). ``audit policy check FILE`` exits 0 when the policy is
valid, 2 when it is not.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import typer

from audit.errors import AuditError, HistoryError, PolicyError, ReferenceDataError
from audit.history import History
from audit.policy import ALL_CHECKS, format_table, load_policy
from audit.prometheus import AuditMetrics
from audit.report import write_reports
from audit.report.verdict import VerdictError, load_report, render_verdict
from audit.runner import AuditConfig, run_audit
from audit.settings import AuditSettings
from audit.watch import parse_interval, watch
from mimicry.registry import RegistryError

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_PASSED",
    "EXIT_USAGE",
    "METHOD_ALIASES",
    "app",
    "parse_methods",
]

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
#: ``audit run``'s exit code by the run's status.
EXIT_CODES = {"passed": EXIT_PASSED, "failed": EXIT_FAILED, "error": EXIT_ERROR}

app = typer.Typer(
    help="Audit explanations: scores, sanity checks, history, Prometheus.", no_args_is_help=True
)
policy_app = typer.Typer(help="Audit policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

#: Short names of the seed papers' tables → registered saliency methods.
METHOD_ALIASES = {
    "grad": "gradient",
    "sg": "smoothgrad",
    "ig": "integrated_gradients",
    "sig": "smooth_ig",
    "gcam": "gradcam",
    "gbp": "guided_backprop",
    "ggcam": "guided_gradcam",
    "shap": "gradient_shap",
}


def _usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def parse_methods(text: str | None) -> list[str] | None:
    """Comma-separated method names (aliases allowed) → registered names; ``None`` keeps the policy's."""
    if not text:
        return None
    from mimicry.saliency import list_methods

    known = set(list_methods())
    out = []
    for raw in text.split(","):
        name = METHOD_ALIASES.get(raw.strip(), raw.strip())
        if name not in known:
            raise typer.BadParameter(
                f"unknown saliency method {raw.strip()!r}; known: {', '.join(sorted(known))}"
            )
        out.append(name)
    return list(dict.fromkeys(out))


def _checks(text: str) -> list[str] | None:
    if text.strip() == "all":
        return None
    checks = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise typer.BadParameter(f"unknown checks {unknown}; known: {', '.join(ALL_CHECKS)}")
    return checks


def _history_path(history: Path | None, no_history: bool) -> Path | None:
    if no_history:
        return None
    return history if history is not None else AuditSettings().history_db


@app.command("run")
def run_cmd(
    registry: Path = typer.Option(
        Path("registry"), "--registry", envvar="MIMICRY_REGISTRY", help="Registry."
    ),
    model: list[str] = typer.Option(
        ["all"], "--model", help="NAME, NAME:VERSION, NAME@ALIAS, NAME:all or all (repeatable)."
    ),
    reference: Path = typer.Option(..., "--reference", help="Reference store (EGD layout)."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated methods (default: policy)."),
    checks: str = typer.Option("all", "--checks", help="Comma-separated checks or 'all'."),
    policy: Path | None = typer.Option(None, "--policy", help="Policy YAML (default: the documented one)."),
    out: Path | None = typer.Option(None, "--out", help="Write report.json, summary.md, report.html here."),
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        help=(
            "Black-box mode: a running service's base URL; its models are audited through /v1/explain "
            "(bearer token from $MIMICRY_AUDIT_ENDPOINT_TOKEN)."
        ),
    ),
    endpoint_timeout: float = typer.Option(120.0, "--endpoint-timeout", min=0.1, help="Seconds per request."),
    endpoint_retries: int = typer.Option(4, "--endpoint-retries", min=0, help="Retries on 503/429/errors."),
    history: Path | None = typer.Option(None, "--history", help="History database (default: settings)."),
    no_history: bool = typer.Option(False, "--no-history", help="Neither read nor write the history."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Threads scoring cases in parallel."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Cases per chunk (bounds memory)."),
    max_cases: int | None = typer.Option(None, "--max-cases", min=1, help="Score at most N cases."),
    pushgateway: str | None = typer.Option(None, "--pushgateway", help="Push the metrics to this gateway."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Audit registry model(s) — or, with --endpoint, a running service's — against a reference store.

    Exit codes: 0 every gate passed; 1 a gating criterion FAILed; 2 usage or input error (bad policy, unknown
    model, unreadable reference store); 3 the audit could not run (a model's audit or one of its methods
    ended in an error: its verdicts are incomplete; takes precedence over 1).
    """
    try:
        pol = load_policy(policy)
        if max_cases is not None:
            pol = pol.model_copy(update={"max_cases": max_cases})
        config = AuditConfig(
            registry=registry,
            models=model,
            reference=reference,
            policy=pol,
            methods=parse_methods(methods),
            checks=_checks(checks),
            history_path=_history_path(history, no_history),
            jobs=jobs,
            batch_size=batch_size,
            progress=progress and sys.stderr.isatty(),
            endpoint=endpoint,
            endpoint_timeout_s=endpoint_timeout,
            endpoint_retries=endpoint_retries,
        )
        report = run_audit(config)
    except (PolicyError, ReferenceDataError, RegistryError, HistoryError) as exc:
        _usage(str(exc))
    except AuditError as exc:
        _usage(str(exc))
    for m in report.models:
        via = f" via {m.endpoint}" if m.endpoint else ""
        typer.echo(f"\n{m.ref} ({m.architecture}{via}): {m.status.upper()}")
        for e in m.errors:
            typer.echo(f"  error: {e}")
        typer.echo(format_table(m.verdicts, methods=m.methods))
        for check, why in m.not_applicable.items():
            typer.echo(f"  N/A {check}: {why}")
    if out is not None:
        paths = write_reports(report, out)
        typer.echo(f"\nreports: {', '.join(str(p) for p in paths.values())}")
    if pushgateway:
        metrics = AuditMetrics()
        metrics.observe(report)
        try:
            metrics.push(pushgateway)
        except OSError as exc:
            typer.echo(f"warning: push to the Pushgateway failed: {exc}", err=True)
    status = report.status if report.models else "failed"
    if status == "error":
        typer.echo("\naudit gate: ERROR (the audit could not run as configured: see the errors above)")
    else:
        typer.echo(f"\naudit gate: {status.upper()}")
    raise typer.Exit(EXIT_CODES[status])


@policy_app.command("check")
def policy_check_cmd(
    file: Path = typer.Argument(..., help="Policy YAML to validate."),
) -> None:
    """Validate a policy file: schema, every method and method parameter against the saliency registry, every
    check, metric and baseline against the audit's checks. Prints OK (exit 0) or each problem (exit 2)."""
    try:
        pol = load_policy(file)
    except PolicyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"OK: {file.name}: {len(pol.criteria)} criteria, methods {', '.join(pol.methods)}")


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


@app.command("history")
def history_cmd(
    history: Path | None = typer.Option(None, "--history", help="History database (default: settings)."),
    model: str | None = typer.Option(None, "--model", help="Only this model name."),
    metric: str | None = typer.Option(
        None, "--metric", help="Trend of CHECK/METHOD/METRIC, e.g. gaze/gradcam/nss."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List audit runs and, with --metric, the trend of one metric across runs."""
    path = _history_path(history, False)
    assert path is not None
    if not path.is_file():
        _usage(f"no audit history at {path}")
    try:
        with History(path) as h:
            runs = h.runs(model)
            trend = None
            if metric is not None:
                parts = metric.split("/")
                if len(parts) != 3:
                    _usage("--metric must be CHECK/METHOD/METRIC")
                trend = h.trend(parts[0], parts[1], parts[2], model)
    except HistoryError as exc:
        _usage(str(exc))
    if as_json:
        payload = {
            "runs": [
                {
                    "id": r.id,
                    "model": r.model,
                    "version": r.version,
                    "sha256": r.sha256,
                    "started": r.started,
                    "finished": r.finished,
                    "status": r.status,
                    "passed": r.passed,
                }
                for r in runs
            ],
            "trend": trend,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    rows = [("run", "model", "sha256", "started", "finished", "status")]
    rows += [(str(r.id), r.ref, r.sha256[:12], _ts(r.started), _ts(r.finished), r.status) for r in runs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if trend is not None:
        typer.echo(f"\ntrend of {metric}:")
        for t in trend:
            typer.echo(
                f"  run {t['run']}  {t['model']}:{t['version']}  {_ts(t['finished'])}  "
                f"mean {_num(t['mean'])}  CI [{_num(t['ci_low'])}, {_num(t['ci_high'])}]  n {t['n']}"
            )


@app.command("watch")
def watch_cmd(
    registry: Path = typer.Option(
        Path("registry"), "--registry", envvar="MIMICRY_REGISTRY", help="Registry."
    ),
    reference: Path = typer.Option(..., "--reference", help="Reference store (EGD layout)."),
    interval: str = typer.Option("10m", "--interval", help="Re-audit period (30s, 10m, 1h)."),
    poll: float = typer.Option(30.0, "--poll", min=0.1, help="Seconds between registry polls."),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="Also probe this live service's models with the reference cases."
    ),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Port of /metrics (default 9400)."),
    metrics_host: str | None = typer.Option(None, "--metrics-host", help="Address of /metrics (127.0.0.1)."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated methods (default: policy)."),
    checks: str = typer.Option("all", "--checks", help="Comma-separated checks or 'all'."),
    policy: Path | None = typer.Option(None, "--policy", help="Policy YAML."),
    history: Path | None = typer.Option(None, "--history", help="History database (default: settings)."),
    out: Path | None = typer.Option(None, "--out", help="Write each audit's reports under this directory."),
    max_cases: int | None = typer.Option(None, "--max-cases", min=1, help="Score at most N cases."),
    max_cycles: int | None = typer.Option(None, "--max-cycles", hidden=True, help="Stop after N polls."),
) -> None:
    """Audit new / changed versions continually (and probe a live endpoint) and serve /metrics."""
    settings = AuditSettings()
    try:
        seconds = parse_interval(interval)
        pol = load_policy(policy)
        if max_cases is not None:
            pol = pol.model_copy(update={"max_cases": max_cases})
    except (ValueError, PolicyError) as exc:
        _usage(str(exc))
    config = AuditConfig(
        registry=registry,
        models=["all"],
        reference=reference,
        policy=pol,
        methods=parse_methods(methods),
        checks=_checks(checks),
        history_path=_history_path(history, False),
    )
    metrics = AuditMetrics()
    port = settings.metrics_port if metrics_port is None else metrics_port
    host = metrics_host or settings.metrics_host
    server = metrics.serve(port, host)
    typer.echo(f"serving /metrics on http://{host}:{server.server_port}/metrics", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        watch(
            config,
            metrics,
            interval_s=seconds,
            poll_s=poll,
            out_dir=out,
            max_cycles=max_cycles,
            stop=stop,
            endpoint=endpoint,
        )
    except KeyboardInterrupt:
        pass
    except (ReferenceDataError, RegistryError, AuditError) as exc:
        _usage(str(exc))
    finally:
        server.shutdown()


@app.command("verdict")
def verdict_cmd(
    report: Path = typer.Argument(Path("reports/audit"), help="report.json or its directory."),
) -> None:
    """Print an audit run's verdict: gate family x model, the shortcut gates' numbers, a short reading."""
    try:
        typer.echo(render_verdict(load_report(report)), nl=False)
    except VerdictError as exc:
        _usage(str(exc))


if __name__ == "__main__":  # pragma: no cover - `python -m audit.cli` (the console script is `mimicry audit`)
    app()
