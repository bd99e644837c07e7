"""Paired per-image comparison of two science recipes from an audit history database; print JSON.

docs/results.md's "explanation ensemble vs plain ensemble" test: for each test image, a gaze metric of each
recipe's Grad-CAM (``gaze`` check, method ``gradcam``) is averaged over the recipe's versions (the seeds;
latest finished audit run of each version), and the two recipes are compared over the images present for both
with a paired t-test and a Wilcoxon signed-rank test (``scipy.stats``). The database is read through
:class:`audit.history.History`.

Usage: ``python bench/science_paired.py --history DB [--a science-explanation_ensemble]
[--b science-ensemble] [--metric kld --metric nss]``
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from audit.errors import HistoryError
from audit.history import History


def _per_image(history: History, model: str, metric: str) -> dict[str, float]:
    """Per-image Grad-CAM gaze ``metric`` of ``model``, averaged over its versions' latest finished runs; an
    image counts when every version scored it."""
    versions = sorted({r.version for r in history.runs(model)})
    runs = [r for r in (history.latest_finished(model, v) for v in versions) if r is not None]
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for check, method, name, _cls, key, value in history.results(run.id):
            if (
                (check, method, name) == ("gaze", "gradcam", metric)
                and value is not None
                and np.isfinite(value)
            ):
                values[key].append(float(value))
    return {k: float(np.mean(v)) for k, v in values.items() if runs and len(v) == len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True, type=Path, help="audit history database")
    parser.add_argument("--a", default="science-explanation_ensemble", help="first model name")
    parser.add_argument("--b", default="science-ensemble", help="second model name")
    parser.add_argument("--metric", action="append", default=None, help="gaze metric (repeatable)")
    args = parser.parse_args()
    if not args.history.is_file():
        parser.error(f"no history database at {args.history}")
    out = []
    try:
        with History(args.history) as history:
            for metric in args.metric or ["kld", "nss"]:
                a, b = _per_image(history, args.a, metric), _per_image(history, args.b, metric)
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
    except HistoryError as exc:
        parser.error(f"cannot read {args.history}: {exc}")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
