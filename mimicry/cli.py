"""The ``mimicry`` console script: the composition root of the project.

Sub-command groups live next to the code they drive (``mimicry/commands/``) and are attached here.
"""

from __future__ import annotations

import logging
import warnings

import typer

from audit.cli import app as audit_app
from audit.gate import make_gate_factory
from mimicry import __version__
from mimicry.commands.bench import app as bench_app
from mimicry.commands.data import app as data_app
from mimicry.commands.export import export_command
from mimicry.commands.registry import make_app as make_registry_app
from mimicry.commands.serve import serve_command
from mimicry.commands.stack import app as stack_app
from mimicry.commands.train import train_command

app = typer.Typer(
    name="mimicry",
    help="Train, serve and audit explainable chest X-ray models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # never print local variables (could hold PHI)
)
app.add_typer(data_app, name="data")
# `registry promote` refuses a version whose latest audit failed (unless --force): the audit's gate.
app.add_typer(make_registry_app(gate_factory=make_gate_factory()), name="registry")
app.add_typer(audit_app, name="audit")
app.command("serve")(serve_command)
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
