"""Audit throughput benchmark (issue 6, "Evidence"): white-box cases × methods per second and the cost of
each check, on a phantom reference and a hand-set LeftRightToyNet published into a temporary registry.

Prints one JSON object. Black-box mode (``--endpoint``) is not implemented yet and is reported as such.

    .venv/bin/python bench/bench_audit.py --cases 40 --size 128 --methods gradcam,gradient
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from audit.policy import ALL_CHECKS, load_policy
from audit.runner import AuditConfig, run_audit
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import Registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--cases", type=int, default=40, help="phantom cases generated (the test split is scored)"
    )
    ap.add_argument("--size", type=int, default=128, help="phantom image side")
    ap.add_argument("--model-size", type=int, default=64, help="model input side")
    ap.add_argument("--methods", default="gradcam,gradient")
    args = ap.parse_args()
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_phantom_dataset(root / "ref", PhantomConfig(n=args.cases, size=args.size, seed=0))
        reg = Registry(root / "registry")
        x = torch.rand(2, 1, args.model_size, args.model_size)
        reg.publish(
            LeftRightToyNet().eval(),
            name="lr",
            held_batch=x,
            preprocessing=PreprocessSpec(size=args.model_size),
        )
        policy = load_policy()
        per_check = {}
        n_cases = 0
        for check in ALL_CHECKS:
            if check in ("repeatability", "reproducibility", "consistency", "subgroups"):
                continue  # need partner models / reuse other checks' scores
            cfg = AuditConfig(
                root / "registry", ["lr:1"], root / "ref", policy, methods=methods, checks=[check]
            )
            t0 = time.perf_counter()
            report = run_audit(cfg)
            per_check[check] = round(time.perf_counter() - t0, 4)
            n_cases = report.models[0].n_cases
        cfg = AuditConfig(root / "registry", ["lr:1"], root / "ref", policy, methods=methods)
        t0 = time.perf_counter()
        run_audit(cfg)
        total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "benchmark": "audit",
                "cases": n_cases,
                "methods": methods,
                "white_box": {
                    "seconds": round(total, 4),
                    "cases_x_methods_per_second": round(n_cases * len(methods) / total, 3),
                },
                "black_box": None,
                "seconds_per_check": per_check,
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
