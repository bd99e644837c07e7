"""``report.html``: a self-contained page (no external file or URL) with the PASS/FAIL tables, summary
tables, box plots per method and metric, randomisation curves and example overlays (map over the image,
gaze heatmap contours, finding-mask outline). Figures are matplotlib (Agg) PNGs embedded as base64 data URIs.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from jinja2 import Environment, select_autoescape

from audit.checks.counterfactual import COUNTERFACTUAL_METRICS
from audit.checks.faithfulness import FAITHFULNESS_METRICS
from audit.checks.gaze import GAZE_METRICS
from audit.checks.localisation import LOCALISATION_METRICS
from audit.checks.robustness import ROBUSTNESS_METRICS
from audit.checks.shortcut import SHORTCUT_METRICS
from audit.runner import AuditReport, ModelAudit

__all__ = ["render_html"]

_BOXPLOTS: tuple[tuple[str, Sequence[str]], ...] = (
    ("gaze", tuple(GAZE_METRICS)),
    ("localisation", tuple(LOCALISATION_METRICS)),
    ("faithfulness", tuple(FAITHFULNESS_METRICS)),
    ("shortcut", tuple(SHORTCUT_METRICS)),
    ("counterfactual", tuple(COUNTERFACTUAL_METRICS)),
    ("robustness", tuple(ROBUSTNESS_METRICS)),
    ("repeatability", ("ssim", "spearman")),
    ("reproducibility", ("ssim", "spearman")),
)

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mimicry audit report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
.PASS{background:#d4f4d4}.FAIL{background:#f8d0d0}.NA{color:#888}
img{max-width:100%}pre{background:#f5f5f5;padding:1em}
</style></head><body>
<h1>mimicry audit report</h1>
<p>Generated {{ generated }} — gate <b>{{ status | upper }}</b>,
policy {{ policy_sha[:12] }}.
Research use; not for clinical decisions.</p>
{% for m in models %}
<h2>{{ m.ref }} ({{ m.architecture }}) — {{ m.status | upper }}</h2>
<p>{{ m.n_cases }} reference cases, {{ m.n_cached }} from the cache, {{ "%.1f"|format(m.duration_s) }} s.</p>
{% for e in m.errors %}<p class="FAIL">{{ e }}</p>{% endfor %}
<table><tr><th>Method</th>{% for c in m.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in m.rows %}<tr><th>{{ row.method }}</th>
{% for cell in row.cells %}<td class="{{ cell.css }}" title="{{ cell.title }}">{{ cell.status }}</td>
{% endfor %}
</tr>{% endfor %}</table>
<table><tr><th>method</th><th>check</th><th>metric</th><th>mean</th><th>95% CI</th><th>n</th></tr>
{% for s in m.summaries %}<tr><td>{{ s.method }}</td><td>{{ s.check }}</td><td>{{ s.metric }}</td>
<td>{{ s.mean }}</td><td>{{ s.ci }}</td><td>{{ s.n }}</td></tr>{% endfor %}</table>
{% for title, fig in m.figures %}<h3>{{ title }}</h3>
<img alt="{{ title }}" src="data:image/png;base64,{{ fig }}">
{% endfor %}
{% endfor %}
{% if comparisons %}<h2>Paired comparisons</h2>
<table><tr><th>A</th><th>B</th><th>check</th><th>method</th><th>metric</th><th>n</th>
<th>mean A</th><th>mean B</th>
<th>t p-value</th><th>Wilcoxon p-value</th></tr>
{% for c in comparisons %}<tr><td>{{ c.model_a }}</td><td>{{ c.model_b }}</td><td>{{ c.check }}</td>
<td>{{ c.method }}</td><td>{{ c.metric }}</td><td>{{ c.n }}</td><td>{{ c.mean_a }}</td><td>{{ c.mean_b }}</td>
<td>{{ c.t_pvalue }}</td><td>{{ c.wilcoxon_pvalue }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _boxplots(m: ModelAudit) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    out = []
    for check, metrics in _BOXPLOTS:
        data = {meth: m.result(check, meth) for meth in m.methods}
        data = {k: v for k, v in data.items() if v is not None}
        shown = [mt for mt in metrics if any(mt in r.values for r in data.values())]
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3), squeeze=False)
        for ax, metric in zip(axes[0], shown, strict=True):
            series, labels = [], []
            for meth, r in data.items():
                v = np.array(list(r.values.get(metric, {}).values()), dtype=float)
                v = v[np.isfinite(v)]
                if v.size:
                    series.append(v)
                    labels.append(meth)
            if series:
                ax.boxplot(series, showmeans=True, meanline=True)
                ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, fontsize=8)
            ax.set_title(metric, fontsize=9)
        out.append((f"{check}: per-case scores by method", _png(fig)))
    return out


def _curves(m: ModelAudit) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    results = [r for r in m.results if r.check == "cascading_randomisation"]
    if not results:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        stages = r.details.get("stages", [])
        curve = r.details.get("curve", {}).get("ssim", [])
        line = ax.plot(range(len(curve)), curve, marker="o", label=r.method)[0]
        thr = r.baselines.get("degradation_threshold", {}).get("ssim_full")
        if thr is not None and math.isfinite(thr):
            ax.axhline(thr, ls="--", color=line.get_color(), lw=0.8)
        ax.set_xticks(range(len(stages)), stages, rotation=30, fontsize=8)
    ax.set_ylabel("SSIM to original map")
    ax.set_xlabel("cumulatively randomised (top-down)")
    ax.legend(fontsize=8)
    return [("Cascading randomisation (dashed: degradation thresholds)", _png(fig))]


def _overlays(m: ModelAudit) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    if not m.examples:
        return []
    cols = 1 + len(m.methods)
    fig, axes = plt.subplots(
        len(m.examples), cols, figsize=(2.6 * cols, 2.6 * len(m.examples)), squeeze=False
    )
    for row, ex in zip(axes, m.examples, strict=True):
        row[0].imshow(ex["image"], cmap="gray")
        if ex["heatmap"].any():
            row[0].contour(ex["heatmap"], levels=4, colors="yellow", linewidths=0.6)
        row[0].set_title("image + gaze", fontsize=8)
        for ax, meth in zip(row[1:], m.methods, strict=True):
            ax.imshow(ex["image"], cmap="gray")
            if meth in ex["maps"]:
                ax.imshow(ex["maps"][meth], cmap="jet", alpha=0.45)
            if ex["finding_mask"] is not None and ex["finding_mask"].any():
                ax.contour(ex["finding_mask"].astype(float), levels=[0.5], colors="white", linewidths=0.8)
            if ex["marker"] is not None:
                ax.contour(ex["marker"].astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(meth, fontsize=8)
        for ax in row:
            ax.axis("off")
    return [("Example overlays (white: finding mask, red: marker, yellow: gaze)", _png(fig))]


def _model_context(m: ModelAudit) -> dict[str, Any]:
    columns: list[str] = []
    ids: list[str] = []
    for v in m.verdicts:
        if v.criterion not in ids:
            ids.append(v.criterion)
            columns.append(v.column + ("" if v.gate else " *"))
    cell = {(v.method, v.criterion): v for v in m.verdicts}
    rows = []
    for meth in m.methods:
        cells = []
        for cid in ids:
            v = cell.get((meth, cid))
            status = v.status if v else "-"
            title = "" if v is None else f"{_f(v.value)} {v.op} {_f(v.threshold)} {v.reason}".strip()
            cells.append({"status": status, "css": status.replace("/", ""), "title": title})
        rows.append({"method": meth, "cells": cells})
    summaries = [
        {
            "method": r.method,
            "check": r.check,
            "metric": metric,
            "mean": _f(s.mean),
            "ci": f"[{_f(s.ci_low)}, {_f(s.ci_high)}]",
            "n": s.n,
        }
        for r in m.results
        if r.check != "subgroups"
        for metric, s in r.summaries.items()
        if "@" not in metric
    ]
    return {
        "ref": m.ref,
        "architecture": m.architecture,
        "passed": m.passed,
        "status": m.status,
        "n_cases": m.n_cases,
        "n_cached": m.n_cached,
        "duration_s": m.duration_s,
        "errors": m.errors,
        "columns": columns,
        "rows": rows,
        "summaries": summaries,
        "figures": _boxplots(m) + _curves(m) + _overlays(m),
    }


def render_html(report: AuditReport) -> str:
    """The self-contained HTML report."""
    import matplotlib

    matplotlib.use("Agg")
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    comparisons = [{k: _f(v) for k, v in c.to_dict().items()} for c in report.comparisons]
    return env.from_string(_TEMPLATE).render(
        generated=datetime.fromtimestamp(report.finished, tz=UTC).isoformat(timespec="seconds"),
        passed=report.passed,
        status=report.status,
        policy_sha=report.policy.sha256,
        models=[_model_context(m) for m in report.models],
        comparisons=comparisons,
    )
