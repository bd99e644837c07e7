"""``mimicry registry …``: list, show, verify, promote and alias the registry's models.

The registry directory comes from ``--registry DIR``, else the ``MIMICRY_REGISTRY`` environment variable,
else ``./registry``. Exit codes: 0 success, 1 a registry refusal (missing model, integrity failure, refused
promotion, ``verify`` found a problem), 2 a malformed reference or usage error.

Promotion gates: :func:`make_app` takes ``gate_factory(registry) -> PromotionGate | None``; the composition
root (:mod:`mimicry_cli.main`) builds the app with the audit's gate ("refuse a version whose latest audit
failed") — ``--force`` overrides it and the override is recorded in ``alias_history.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from mimicry_cli.tables import print_table

if TYPE_CHECKING:  # mimicry.registry loads torch: imported by each command when it runs
    from mimicry.registry import PromotionGate, Registry

__all__ = ["GateFactory", "app", "make_app"]

GateFactory = Callable[["Registry"], "PromotionGate | None"]

_REGISTRY_HELP = "Registry directory (a Triton model repository)."


def _registry_option() -> Path:
    return typer.Option(Path("registry"), "--registry", envvar="MIMICRY_REGISTRY", help=_REGISTRY_HELP)


def _fail(exc: Exception) -> NoReturn:
    from mimicry.registry import InvalidReferenceError

    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2 if isinstance(exc, InvalidReferenceError) else 1) from exc


def make_app(gate_factory: GateFactory | None = None) -> typer.Typer:
    """Build the ``registry`` Typer app; ``gate_factory`` supplies the default promotion gate."""
    app = typer.Typer(help="Model registry: list, show, verify, promote, aliases.", no_args_is_help=True)
    alias_app = typer.Typer(help="Aliases: NAME@ALIAS → VERSION (stored in REGISTRY/aliases.json).")
    app.add_typer(alias_app, name="alias", no_args_is_help=True)

    @app.command("list")
    def list_cmd(
        registry: Path = _registry_option(),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Table of models: name, versions, aliases, latest version's creation time and architecture."""
        from mimicry.registry import Registry, RegistryError

        try:
            summaries = Registry(registry).list()
        except RegistryError as exc:
            _fail(exc)
        if as_json:
            payload = [
                {
                    "name": s.name,
                    "versions": s.versions,
                    "aliases": s.aliases,
                    "latest": s.latest,
                    "created_at": s.created_at.isoformat() if s.created_at else None,
                    "architecture": s.architecture,
                }
                for s in summaries
            ]
            typer.echo(json.dumps(payload, indent=2))
            return
        if not summaries:
            typer.echo(f"no models in {registry}")
            return
        rows = [
            [
                s.name,
                ",".join(str(v) for v in s.versions),
                ", ".join(f"{a}={v}" for a, v in sorted(s.aliases.items())) or "-",
                s.created_at.strftime("%Y-%m-%d %H:%M UTC") if s.created_at else "?",
                s.architecture or "?",
            ]
            for s in summaries
        ]
        print_table(["NAME", "VERSIONS", "ALIASES", "CREATED", "ARCHITECTURE"], rows)

    @app.command("show")
    def show_cmd(
        ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
        registry: Path = _registry_option(),
    ) -> None:
        """Print the model card (JSON) of REF (card.json checked against SHA256SUMS)."""
        from mimicry.registry import Registry, RegistryError

        try:
            card = Registry(registry).card(ref)
        except RegistryError as exc:
            _fail(exc)
        typer.echo(card.to_json(), nl=False)

    @app.command("verify")
    def verify_cmd(
        ref: str | None = typer.Argument(None, help="NAME (all its versions), NAME:VERSION or NAME@ALIAS."),
        all_models: bool = typer.Option(False, "--all", help="Verify every version of every model."),
        registry: Path = _registry_option(),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Check every artifact's sha256, the cards, ONNX signatures and config.pbtxt; exit 1 on a problem."""
        from mimicry.registry import Registry, RegistryError

        if (ref is None) == (not all_models):
            typer.echo("error: give exactly one of REF or --all", err=True)
            raise typer.Exit(code=2)
        try:
            report = Registry(registry).verify(ref)
        except RegistryError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            for check in report.checks:
                status = "ok" if check.ok else "FAILED"
                typer.echo(f"{check.name}:{check.version}  {status}")
                for problem in check.problems:
                    typer.echo(f"  - {problem}")
            for problem in report.problems:
                typer.echo(f"problem: {problem}")
            for warning in report.warnings:
                typer.echo(f"warning: {warning}")
            typer.echo("all artifacts verified" if report.ok else "verification FAILED")
        if not report.ok:
            raise typer.Exit(code=1)

    @app.command("promote")
    def promote_cmd(
        ref: str = typer.Argument(..., help="The version to promote: NAME:VERSION, NAME@ALIAS or NAME."),
        alias: str = typer.Option("production", "--alias", help="Alias to point at it."),
        force: bool = typer.Option(False, "--force", help="Override a refusing gate (recorded)."),
        registry: Path = _registry_option(),
    ) -> None:
        """Point NAME@ALIAS at REF after integrity checks and the promotion gate."""
        from mimicry.registry import Registry, RegistryError

        reg = Registry(registry)
        try:
            gate = gate_factory(reg) if gate_factory is not None else None
            promotion = reg.promote(ref, alias, force=force, gate=gate)
        except RegistryError as exc:  # PromotionRefusedError included: exit 1 with the gate's reason
            _fail(exc)
        was = f" (was {promotion.previous})" if promotion.previous is not None else ""
        forced = f" — FORCED over gate: {promotion.reason}" if promotion.forced else ""
        typer.echo(f"{promotion.name}@{promotion.alias} -> {promotion.version}{was}{forced}")

    @alias_app.command("set")
    def alias_set_cmd(
        name: str = typer.Argument(..., help="Model name."),
        alias: str = typer.Argument(..., help="Alias, e.g. candidate."),
        version: int = typer.Argument(..., min=1, help="Existing version number."),
        registry: Path = _registry_option(),
    ) -> None:
        """Point NAME@ALIAS at VERSION (no gate; use `promote` for gated aliases)."""
        from mimicry.registry import Registry, RegistryError

        try:
            previous = Registry(registry).set_alias(name, alias, version)
        except RegistryError as exc:
            _fail(exc)
        was = f" (was {previous})" if previous is not None else ""
        typer.echo(f"{name}@{alias} -> {version}{was}")

    @alias_app.command("unset")
    def alias_unset_cmd(
        name: str = typer.Argument(..., help="Model name."),
        alias: str = typer.Argument(..., help="Alias to remove."),
        registry: Path = _registry_option(),
    ) -> None:
        """Remove NAME@ALIAS."""
        from mimicry.registry import Registry, RegistryError

        try:
            previous = Registry(registry).unset_alias(name, alias)
        except RegistryError as exc:
            _fail(exc)
        typer.echo(f"{name}@{alias} removed (was {previous})")

    @alias_app.command("list")
    def alias_list_cmd(
        name: str | None = typer.Argument(None, help="Model name (default: every model)."),
        registry: Path = _registry_option(),
    ) -> None:
        """Print the aliases as JSON."""
        from mimicry.registry import Registry, RegistryError

        try:
            table = Registry(registry).aliases(name)
        except RegistryError as exc:
            _fail(exc)
        typer.echo(json.dumps(table, indent=2, sort_keys=True))

    return app


app = make_app()
