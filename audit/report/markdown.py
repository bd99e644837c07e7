"""``summary.md``: a short human summary — the gate, one Table-2-shaped PASS/FAIL table per model, the key
scores with their confidence intervals, and the significant paired comparisons."""

from __future__ import annotations

import math

from audit.policy import format_table
from audit.runner import AuditReport

__all__ = ["render_markdown"]

#: (check, metric) pairs shown in the summary's score table.
KEY_SCORES: tuple[tuple[str, str], ...] = (
    ("gaze", "nss"),
    ("gaze", "kld"),
    ("localisation", "auprc"),
    ("cascading_randomisation", "ssim_full"),
    ("random_logit", "ssim"),
    ("repeatability", "ssim"),
    ("reproducibility", "ssim"),
    ("faithfulness", "insertion_minus_deletion"),
    ("shortcut", "marker_mass"),
    ("counterfactual", "marker_tv"),
    ("gaze", "sauc"),
    ("robustness", "max_sensitivity"),
)


def _f(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"


def render_markdown(report: AuditReport) -> str:
    lines = [
        "# mimicry audit summary",
        "",
        f"**Gate: {report.status.upper()}** — policy `{report.policy.sha256[:12]}`, "
        f"{len(report.models)} model version(s).",
        "",
    ]
    for m in report.models:
        lines += [f"## {m.ref} ({m.architecture}) — {m.status.upper()}", ""]
        lines += [
            f"{m.n_cases} reference cases ({m.n_cached} scores from the cache), {m.duration_s:.1f} s.",
            "",
        ]
        for e in m.errors:
            lines.append(f"- error: {e}")
        lines += ["```", format_table(m.verdicts, methods=m.methods), "```", ""]
        lines += ["| method | check | metric | mean | 95% CI | n |", "|---|---|---|---|---|---|"]
        for method in m.methods:
            for check, metric in KEY_SCORES:
                r = m.result(check, method)
                if r is None or metric not in r.summaries:
                    continue
                s = r.summaries[metric]
                ci = f"[{_f(s.ci_low)}, {_f(s.ci_high)}]"
                lines.append(f"| {method} | {check} | {metric} | {_f(s.mean)} | {ci} | {s.n} |")
        lines.append("")
    sig = [
        c
        for c in report.comparisons
        if c.t_pvalue is not None and math.isfinite(c.t_pvalue) and c.t_pvalue < 0.05
    ]
    if report.comparisons:
        lines += ["## Paired comparisons (p < 0.05, paired t-test)", ""]
        if not sig:
            lines.append("No significant difference.")
        for c in sig:
            lines.append(
                f"- {c.model_a} vs {c.model_b}, {c.check}/{c.method}/{c.metric}: "
                f"Δ = {_f(c.mean_difference)}, "
                f"p = {c.t_pvalue:.3g} (Wilcoxon p = {_f(c.wilcoxon_pvalue)}), n = {c.n}"
            )
        lines.append("")
    return "\n".join(lines)
