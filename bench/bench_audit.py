"""Audit throughput benchmark (docs/benchmarks.md): white-box cases × methods per second and the cost of
each check, on a phantom reference and a hand-set LeftRightToyNet published into a temporary registry.

Black-box side by side: the same model is served by ``bentoml serve serving.service:MimicryService`` on
127.0.0.1 (a child process in its own process group, stopped afterwards; or ``--endpoint URL`` of a running
service that serves ``lr``), and the per-case checks the black-box mode can score (gaze, localisation,
shortcut) are timed white-box and black-box (``--jobs`` requests in flight), no history (no cache).

Prints one JSON object.

    .venv/bin/python bench/bench_audit.py --cases 40 --size 128 --methods gradcam,gradient --jobs 1,4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from audit.policy import ALL_CHECKS, load_policy
from audit.runner import BLACKBOX_PER_CASE, AuditConfig, run_audit
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
    ap.add_argument("--jobs", default="1,4", help="black-box concurrency levels (comma-separated)")
    ap.add_argument("--endpoint", default=None, help="use this running service instead of starting one")
    ap.add_argument("--no-blackbox", action="store_true", help="skip the black-box numbers")
    args = ap.parse_args()
    methods = args.methods.split(",")
    black: dict[str, object] | None = None
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
        if not args.no_blackbox:
            black = _side_by_side(
                root, policy, methods, [int(j) for j in args.jobs.split(",")], args.endpoint
            )
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
                "per_case_checks_white_vs_black": black,
                "seconds_per_check": per_check,
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


def _timed(cfg: AuditConfig) -> tuple[float, int]:
    t0 = time.perf_counter()
    report = run_audit(cfg)
    m = report.models[0]
    if m.errors:
        raise RuntimeError(f"audit errored: {m.errors}")
    return time.perf_counter() - t0, m.n_cases


def _side_by_side(
    root: Path, policy: object, methods: list[str], jobs: list[int], endpoint: str | None
) -> dict[str, object]:
    """White-box vs black-box seconds and cases × methods / s on the checks black-box mode can score."""
    checks = list(BLACKBOX_PER_CASE)
    base = AuditConfig(root / "registry", ["lr:1"], root / "ref", policy, methods=methods, checks=checks)  # type: ignore[arg-type]
    service = None
    if endpoint is None:
        from serving.launch import start_service  # bench only: the audit package never imports serving

        service = start_service(root / "registry", ["lr"], workers=1, device="cpu", ready_timeout_s=120)
        endpoint = service.url
    try:
        w_s, n = _timed(base)
        out: dict[str, object] = {
            "checks": checks,
            "white_box": {
                "seconds": round(w_s, 4),
                "cases_x_methods_per_second": round(n * len(methods) / w_s, 3),
            },
        }
        for j in jobs:
            cfg = dataclasses.replace(base, endpoint=endpoint, jobs=j, registry=root / "no-registry")
            b_s, n = _timed(cfg)
            out[f"black_box_jobs_{j}"] = {
                "seconds": round(b_s, 4),
                "cases_x_methods_per_second": round(n * len(methods) / b_s, 3),
                "slowdown_vs_white_box": round(b_s / w_s, 2),
            }
        return out
    finally:
        if service is not None:
            service.stop()


if __name__ == "__main__":
    main()
