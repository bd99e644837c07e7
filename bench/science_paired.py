"""Paired per-image comparison of two science recipes from an audit history database; print JSON.

docs/results.md's "explanation ensemble vs plain ensemble" test: for each test image, a gaze metric of each
recipe's Grad-CAM (``gaze`` check, method ``gradcam``) is averaged over the recipe's versions (the seeds;
latest audit run of each version), and the two recipes are compared over the images present for both with a
paired t-test and a Wilcoxon signed-rank test (``scipy.stats``).

Usage: ``python bench/science_paired.py --history DB [--a science-explanation_ensemble]
[--b science-ensemble] [--metric kld --metric nss]``
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats


def _per_image(con: sqlite3.Connection, model: str, metric: str) -> dict[str, float]:
    runs = con.execute(
        "SELECT version, MAX(id) FROM runs WHERE model = ? GROUP BY version ORDER BY version", (model,)
    ).fetchall()
    values: dict[str, list[float]] = defaultdict(list)
    for _version, run_id in runs:
        for key, value in con.execute(
            "SELECT case_key, value FROM results WHERE run_id = ? AND check_name = 'gaze' "
            "AND method = 'gradcam' AND metric = ?",
            (run_id, metric),
        ):
            if value is not None and np.isfinite(value):
                values[key].append(float(value))
    # An image counts when every version scored it.
    return {k: float(np.mean(v)) for k, v in values.items() if len(v) == len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True, type=Path, help="audit history database")
    parser.add_argument("--a", default="science-explanation_ensemble", help="first model name")
    parser.add_argument("--b", default="science-ensemble", help="second model name")
    parser.add_argument("--metric", action="append", default=None, help="gaze metric (repeatable)")
    args = parser.parse_args()
    if not args.history.is_file():
        parser.error(f"no history database at {args.history}")
    try:
        con = sqlite3.connect(f"file:{args.history}?mode=ro", uri=True)
        out = []
        for metric in args.metric or ["kld", "nss"]:
            a, b = _per_image(con, args.a, metric), _per_image(con, args.b, metric)
            keys = sorted(set(a) & set(b))
            if len(keys) < 2:
                parser.error(f"fewer than 2 images scored for both {args.a} and {args.b} ({metric})")
            x = np.array([a[k] for k in keys])
            y = np.array([b[k] for k in keys])
            out.append(
                {
                    "metric": metric,
                    "a": args.a,
                    "b": args.b,
                    "n_images": len(keys),
                    "mean_a": float(x.mean()),
                    "mean_b": float(y.mean()),
                    "mean_difference_a_minus_b": float((x - y).mean()),
                    "paired_t_p": float(stats.ttest_rel(x, y).pvalue),
                    "wilcoxon_p": float(stats.wilcoxon(x - y).pvalue),
                }
            )
        con.close()
    except sqlite3.Error as exc:
        parser.error(f"cannot read {args.history}: {exc}")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
