"""Compare the science table with what ``mimicry audit run`` stored in its history database; print JSON.

Evidence that the audit reproduces the science benchmark (docs/results.md): after
``mimicry bench science --out RUNS --registry REG`` and
``mimicry audit run --registry REG --model all --reference RUNS/phantom-reversed --methods gradcam
--history DB``, every explanation column of ``RUNS/results.json`` (KLD, NSS, AUPRC, marker mass per version,
and their mean over seeds per recipe; consistency when the audit ran the ``consistency`` check) is read back
from the history database's ``summaries`` table (latest run of each version) and compared.

Usage: ``python bench/science_vs_audit.py --results RUNS/results.json --history DB``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from audit.errors import HistoryError
from audit.history import History

# table column -> (audit check, metric)
METRICS = {
    "kld": ("gaze", "kld"),
    "nss": ("gaze", "nss"),
    "auprc": ("localisation", "auprc"),
    "marker_mass": ("shortcut", "marker_mass"),
}


def _latest_summaries(db: Path) -> dict[tuple[str, int], dict[tuple[str, str], float]]:
    """``(model, version) -> {(check, metric): mean}`` of Grad-CAM in each version's latest finished run."""
    out: dict[tuple[str, int], dict[tuple[str, str], float]] = {}
    with History(db) as history:
        for model, version in sorted({(r.model, r.version) for r in history.runs()}):
            run = history.latest_finished(model, version)
            if run is None:
                continue
            out[(model, version)] = {
                (s["check"], s["metric"]): s["mean"]
                for s in history.summaries(run.id)
                if s["method"] == "gradcam"
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    args = parser.parse_args()
    for path in (args.results, args.history):
        if not path.is_file():
            parser.error(f"{path} does not exist")
    try:
        table = json.loads(args.results.read_text(encoding="utf-8"))
        stored = _latest_summaries(args.history)
    except (ValueError, HistoryError) as exc:
        parser.error(f"cannot read the inputs: {exc}")
    recipes: dict[str, object] = {}
    worst = 0.0
    for recipe, row in table["recipes"].items():
        per_metric: dict[str, object] = {}
        for column, key in METRICS.items():
            audit_values = []
            for ref in row["audited"]:
                name, version = ref.split(":")
                audit_values.append(stored.get((name, int(version)), {}).get(key, math.nan))
            table_values = row["per_seed"][column]
            diffs = [abs(a - b) for a, b in zip(audit_values, table_values, strict=True)]
            worst = max([worst, *[d if math.isfinite(d) else math.inf for d in diffs]])
            audit_mean = sum(audit_values) / len(audit_values)
            per_metric[column] = {
                "table_mean": row[column]["mean"],
                "audit_mean": audit_mean,
                "max_abs_diff_per_version": max(diffs),
            }
        cons = [
            stored.get((ref.split(":")[0], int(ref.split(":")[1])), {}).get(
                ("consistency", "consistency"), math.nan
            )
            for ref in row["audited"]
        ]
        finite = [c for c in cons if math.isfinite(c)]
        per_metric["consistency"] = {
            "table": row["consistency"],
            "audit_mean": sum(finite) / len(finite) if finite else None,
        }
        recipes[recipe] = per_metric
    print(json.dumps({"benchmark": "science_vs_audit", "max_abs_diff": worst, "recipes": recipes}, indent=2))


if __name__ == "__main__":
    main()
