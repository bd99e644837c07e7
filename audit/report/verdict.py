"""The verdict of an audit run in a few lines: which gates each model passes, and what the shortcut gates saw.

``mimicry audit verdict REPORT`` reads the ``report.json`` that ``mimicry audit run --out DIR`` wrote (schema
``mimicry.audit.report``, :mod:`audit.report.json_report`) and prints

* a table of gate family × model: ``PASS`` / ``FAIL`` / ``N/A`` per group of gating criteria of the policy
  (a family FAILs when any of its criteria FAILs for any method, and is N/A when none could be evaluated).
  The shortcut criteria get a row each, with the number behind the verdict: the saliency-mass gate (``check:
  shortcut, metric: marker_mass``) as the map's mass on the marker in multiples of a uniform map's (the marker
  box's area share, the check's ``uniform`` baseline), the counterfactual gate (``check: counterfactual,
  metric: marker_flip``) as the share of predictions that change when the marker is painted out;
* one plain-language line per model on the site-marker shortcut, and one on the other failing families.

Nothing is recomputed: statuses, values and thresholds are the verdicts the audit recorded, the area share is
the recorded baseline. Non-gating criteria (``gate: false``) are left out. See docs/audit.md ("Verdict").
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.report.json_report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION

__all__ = [
    "GateCell",
    "ModelVerdict",
    "VerdictError",
    "load_report",
    "model_verdicts",
    "reading",
    "render_verdict",
]

#: (check, metric) of the two shortcut gates the reading talks about.
MARKER_GATE = ("shortcut", "marker_mass")
OCCLUDE_GATE = ("counterfactual", "marker_flip")

_ORDER = {"FAIL": 0, "PASS": 1, "N/A": 2}


class VerdictError(AuditError):
    """The report cannot be read: missing or unreadable file, not JSON, another schema or schema version."""


@dataclass(frozen=True)
class GateCell:
    """One family's outcome for one model; ``value`` / ``threshold`` / ``ratio`` come from the deciding
    verdict (the first FAIL, else the first PASS)."""

    status: str
    value: float | None = None
    threshold: float | None = None
    op: str = ""
    method: str = ""
    ratio: float | None = None  # marker gate only: value / the uniform map's marker mass


@dataclass(frozen=True)
class ModelVerdict:
    """The verdict of one audited model version."""

    ref: str
    passed: bool
    errors: tuple[str, ...]
    families: dict[str, GateCell] = field(default_factory=dict)
    marker: GateCell | None = None
    occlusion: GateCell | None = None
    numbers: dict[str, str] = field(default_factory=dict)  # family -> the number shown beside its status


def load_report(path: Path | str) -> dict[str, Any]:
    """Read ``report.json`` (or ``DIR/report.json``) and check its schema.

    Raises:
        VerdictError: missing or unreadable file, invalid JSON, or not a version-1 audit report.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VerdictError(f"no audit report at {p} (run `mimicry audit run --out DIR` first)") from exc
    except OSError as exc:
        raise VerdictError(f"cannot read the audit report {p}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise VerdictError(f"{p} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise VerdictError(f"{p} is not a mimicry audit report (schema {REPORT_SCHEMA!r})")
    if data.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise VerdictError(
            f"{p} has report schema version {data.get('schema_version')!r}; this reader knows "
            f"{REPORT_SCHEMA_VERSION}"
        )
    return data


def _family(column: str) -> str:
    group, _, _ = column.partition(" ")
    return column if group == "Shortcut" else group


def _cell(verdicts: Sequence[Mapping[str, Any]]) -> GateCell:
    if not verdicts:
        return GateCell("N/A")
    v = min(verdicts, key=lambda d: _ORDER.get(d["status"], 2))
    return GateCell(str(v["status"]), v.get("value"), v.get("threshold"), str(v.get("op", "")), v["method"])


def _uniform_marker_mass(model: Mapping[str, Any], method: str) -> float | None:
    for r in model.get("results", []):
        if r.get("check") == MARKER_GATE[0] and r.get("method") == method:
            v = r.get("baselines", {}).get("uniform", {}).get(MARKER_GATE[1])
            return float(v) if isinstance(v, int | float) and math.isfinite(v) and v > 0 else None
    return None


def model_verdicts(report: Mapping[str, Any]) -> list[ModelVerdict]:
    """One :class:`ModelVerdict` per audited model, in report order (gate families in policy order).

    Raises:
        VerdictError: the report lacks a field of the schema (a truncated or hand-edited file).
    """
    try:
        return _model_verdicts(report)
    except (KeyError, TypeError, AttributeError) as exc:
        raise VerdictError(
            f"the audit report is incomplete or malformed ({type(exc).__name__}: {exc})"
        ) from exc


def _model_verdicts(report: Mapping[str, Any]) -> list[ModelVerdict]:
    criteria = {c["id"]: c for c in report["policy"]["criteria"]}
    out = []
    for m in report["models"]:
        gating = [v for v in m["verdicts"] if v.get("gate", True)]
        by_family: dict[str, list[Mapping[str, Any]]] = {}
        by_gate: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for v in gating:
            by_family.setdefault(_family(v["column"]), []).append(v)
            c = criteria.get(v["criterion"], {})
            by_gate.setdefault((c.get("check", ""), c.get("metric", "")), []).append(v)
        families = {name: _cell(vs) for name, vs in by_family.items()}
        marker = occlusion = None
        numbers: dict[str, str] = {}
        if MARKER_GATE in by_gate:
            vs = by_gate[MARKER_GATE]
            cell = _cell(vs)
            uniform = _uniform_marker_mass(m, cell.method)
            ratio = cell.value / uniform if cell.value is not None and uniform else None
            marker = GateCell(cell.status, cell.value, cell.threshold, cell.op, cell.method, ratio)
            if ratio is not None:
                numbers[_family(vs[0]["column"])] = f"{_times(ratio)} uniform"
        if OCCLUDE_GATE in by_gate:
            vs = by_gate[OCCLUDE_GATE]
            occlusion = _cell(vs)
            if occlusion.value is not None:
                numbers[_family(vs[0]["column"])] = f"{_pct(occlusion.value)} flip"
        out.append(
            ModelVerdict(
                ref=str(m["ref"]),
                passed=bool(m["passed"]) and not m.get("errors"),
                errors=tuple(m.get("errors", [])),
                families=families,
                marker=marker,
                occlusion=occlusion,
                numbers=numbers,
            )
        )
    return out


def _pct(v: float | None) -> str:
    return "?" if v is None else f"{100 * v:.1f} %"


def _times(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}×"


def reading(verdicts: Sequence[ModelVerdict]) -> list[str]:
    """Plain-language lines: per model, what the two shortcut gates say; then the other failing families."""
    lines = []
    for mv in verdicts:
        occ, mk = mv.occlusion, mv.marker
        if occ is None or mk is None or occ.status == "N/A" or mk.status == "N/A":
            lines.append(f"{mv.ref}: the shortcut gates could not be evaluated (see summary.md for why).")
            continue
        limit = f"{_pct(occ.threshold)} allowed" if occ.threshold is not None else ""
        flips = f"painting the marker out changes {_pct(occ.value)} of its predictions ({limit})"
        mass = f"its Grad-CAM puts {_times(mk.ratio)} a uniform map's share of mass on the marker"
        if mk.method and mk.method != "gradcam":
            mass = mass.replace("Grad-CAM", f"{mk.method} map")
        if occ.status == "FAIL" and mk.status == "FAIL":
            lines.append(f"{mv.ref} relies on the site marker: {flips}, and {mass}.")
        elif occ.status == "PASS" and mk.status == "PASS":
            lines.append(f"{mv.ref} does not rely on the site marker: {flips}, and {mass}.")
        else:
            lines.append(
                f"{mv.ref}: the shortcut gates disagree (OCCLUDE {occ.status}, MARKER {mk.status}): {flips}; "
                f"{mass}. The counterfactual asks the model itself; trust it over the map."
            )
    others: dict[str, list[str]] = {}
    for mv in verdicts:
        for fam, cell in mv.families.items():
            if cell.status == "FAIL" and not fam.startswith("Shortcut"):
                others.setdefault(fam, []).append(mv.ref.split(":")[0])
    if others:
        parts = [f"{fam} ({', '.join(refs)})" for fam, refs in others.items()]
        lines.append(
            "Other gates failed: " + "; ".join(parts) + ". Tiny demo models: see summary.md for the scores."
        )
    for mv in verdicts:
        for e in mv.errors:
            lines.append(f"{mv.ref}: audit error: {e}")
    return lines


def render_verdict(report: Mapping[str, Any], *, width: int = 100) -> str:
    """The verdict table and reading as plain text (rich renders the table; no colour codes)."""
    from rich.console import Console
    from rich.table import Table

    verdicts = model_verdicts(report)
    families: list[str] = []
    for mv in verdicts:
        families += [f for f in mv.families if f not in families]
    table = Table(title="Audit verdict (default policy gates)", title_justify="left")
    table.add_column("gate")
    for mv in verdicts:
        table.add_column(mv.ref)
    for fam in families:
        row = [fam]
        for mv in verdicts:
            cell = mv.families.get(fam)
            if cell is None:
                row.append("-")
            else:
                number = mv.numbers.get(fam) if cell.status != "N/A" else None
                row.append(cell.status + (f" {number}" if number else ""))
        table.add_row(*row)
    table.add_row("overall", *("PASS" if mv.passed else "FAIL" for mv in verdicts), end_section=True)
    console = Console(width=width, no_color=True, highlight=False, record=True, file=io.StringIO())
    console.print(table)
    for line in reading(verdicts):
        console.print(line, soft_wrap=True)
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines()) + "\n"
