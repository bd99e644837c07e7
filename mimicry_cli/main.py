"""The ``mimicry`` console script: the composition root of the project.

Sub-command groups live in :mod:`mimicry_cli.commands` and are attached here. Every module imported at
start-up is light (Typer, the standard library): a command imports the training, serving, audit or registry
code it drives when it runs, so ``mimicry --help`` does not load torch, BentoML, captum or ONNX Runtime.
``audit`` is the audit package's own Typer app (``audit.cli``), imported only when ``mimicry audit …`` runs.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import typer

from mimicry import __version__
from mimicry_cli.commands.bench import app as bench_app
from mimicry_cli.commands.data import app as data_app
from mimicry_cli.commands.export import export_command
from mimicry_cli.commands.listen import listen_command
from mimicry_cli.commands.registry import make_app as make_registry_app
from mimicry_cli.commands.serve import serve_command
from mimicry_cli.commands.stack import app as stack_app
from mimicry_cli.commands.train import train_command

if TYPE_CHECKING:
    from mimicry.registry import PromotionGate, Registry

__all__ = ["app", "quiet_third_party_phi"]

#: Help line of ``mimicry audit`` in the command list (the same as ``audit.cli``'s app).
AUDIT_HELP = "Audit explanations: scores, sanity checks, history, Prometheus."

app = typer.Typer(
    name="mimicry",
    help="Train, serve and audit explainable chest X-ray models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # never print local variables (could hold PHI)
)


def audit_gate_factory(registry: Registry) -> PromotionGate | None:
    """The audit's promotion gate ("refuse a version whose latest audit failed"), built when
    ``registry promote`` runs (the audit history is read then, not at start-up)."""
    from audit.gate import make_gate_factory

    return make_gate_factory()(registry)


def audit_command(ctx: typer.Context) -> None:
    """Hand every argument to the audit's Typer app (imported here: it loads torch and captum)."""
    from audit.cli import app as audit_app

    audit_app(args=list(ctx.args), prog_name=ctx.command_path)


app.add_typer(data_app, name="data")
# `registry promote` refuses a version whose latest audit failed (unless --force): the audit's gate.
app.add_typer(make_registry_app(gate_factory=audit_gate_factory), name="registry")
app.command(
    "audit",
    help=AUDIT_HELP,
    add_help_option=False,  # `mimicry audit --help` is the audit app's own help
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(audit_command)
app.command("serve")(serve_command)
app.command("listen")(listen_command)
app.command("train")(train_command)
app.command("export")(export_command)
app.add_typer(stack_app, name="stack")
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print version."),
) -> None:
    """mimicry command line."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_third_party_phi()


def quiet_third_party_phi() -> None:
    """pydicom's warnings and log records quote malformed attribute values (names, UIDs): keep them out."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # The ONNX exporter's optimiser passes log every rewrite at INFO: noise, not news.
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?")
