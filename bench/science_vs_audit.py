"""Compare the science table with what ``mimicry audit run`` stored in its history database; print JSON.

Issue 6's evidence: after ``mimicry bench science --out RUNS --registry REG`` and
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
import sqlite3
from pathlib import Path

METRICS = {"kld": "kld", "nss": "nss", "auprc": "auprc", "marker_mass": "marker_mass"}


def _latest_summaries(db: Path) -> dict[tuple[str, int], dict[str, float]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.model, r.version, s.metric, s.mean FROM summaries s "
            "JOIN runs r ON r.id = s.run_id "
            "JOIN (SELECT model, version, MAX(id) AS id FROM runs GROUP BY model, version) last "
            "ON last.id = r.id WHERE s.method = 'gradcam'"
        ).fetchall()
    finally:
        con.close()
    out: dict[tuple[str, int], dict[str, float]] = {}
    for model, version, metric, mean in rows:
        out.setdefault((model, int(version)), {})[metric] = mean
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
    except (ValueError, sqlite3.DatabaseError) as exc:
        parser.error(f"cannot read the inputs: {exc}")
    recipes: dict[str, object] = {}
    worst = 0.0
    for recipe, row in table["recipes"].items():
        per_metric: dict[str, object] = {}
        for column, metric in METRICS.items():
            audit_values = []
            for ref in row["audited"]:
                name, version = ref.split(":")
                audit_values.append(stored.get((name, int(version)), {}).get(metric, math.nan))
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
            stored.get((ref.split(":")[0], int(ref.split(":")[1])), {}).get("consistency", math.nan)
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
