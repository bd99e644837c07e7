"""Soak the service and watch its memory: does RSS stay flat over many requests? Prints JSON.

One run publishes a randomly initialised model (``--arch``, default ``toy`` at ``--size`` 64²) into a
temporary registry, starts ``bentoml serve`` with :func:`serving.launch.start_service` on 127.0.0.1 (own
process group and state directory, stopped at the end), and sends ``--requests`` ``POST /v1/predict``
(``application/dicom``, phantom DICOMs) from ``--concurrency`` threads with one keep-alive connection each.
A sampler thread reads the resident set size of the service's processes (the BentoML arbiter and its
workers, via psutil) every ``--interval`` seconds together with the number of requests finished so far.

Reported: ``rss_first_mb`` / ``rss_last_mb`` = median RSS (sum over the service's processes, MiB) over the
samples taken while the first 10% / the last 10% of the requests were running, ``growth_mb`` and
``growth_pct`` between them, throughput, and the status counts. A per-request leak shows as growth
proportional to the number of requests; a flat service shows growth near zero once warm. Quick run::

    .venv/bin/python bench/bench_soak.py --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import psutil

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_serving import _Client, publish  # noqa: E402

from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset  # noqa: E402
from serving.launch import start_service  # noqa: E402


def _rss_mb(pid: int) -> float:
    """RSS (MiB) of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--arch", default="toy", choices=["unet_tiny", "densenet_tiny", "toy"])
    p.add_argument("--size", type=int, default=64, help="model input side")
    p.add_argument("--dicom-size", type=int, default=128, help="phantom DICOM side")
    p.add_argument("--dicoms", type=int, default=4)
    p.add_argument("--interval", type=float, default=0.25, help="RSS sampling period (s)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--serve-from",
        type=Path,
        default=None,
        help="serve the code of another checkout (e.g. `git archive <rev>` unpacked) to compare",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="mimicry-bench-soak-") as tmp:
        root = Path(tmp)
        ns = SimpleNamespace(arch=args.arch, members=1, seed=args.seed, size=args.size, exporter="dynamo")
        publish(root / "registry", ns)  # type: ignore[arg-type]
        generate_phantom_dataset(root / "phantom", PhantomConfig(n=args.dicoms, size=args.dicom_size, seed=3))
        bodies = [f.read_bytes() for f in sorted((root / "phantom").rglob("*.dcm"))]
        service = start_service(
            root / "registry",
            workers=args.workers,
            env={"MIMICRY_SERVE_INGEST__UID_SALT": "soak"},
            log_path=root / "serve.log",
            ready_timeout_s=180,
            cwd=args.serve_from,
        )
        try:
            parts = urlsplit(service.url)
            local = threading.local()
            done = 0
            lock = threading.Lock()
            samples: list[tuple[int, float]] = []
            stop = threading.Event()

            def sampler() -> None:
                while not stop.is_set():
                    with lock:
                        count = done
                    samples.append((count, _rss_mb(service.pid)))
                    stop.wait(args.interval)

            def one(i: int) -> int:
                nonlocal done
                if not hasattr(local, "client"):
                    local.client = _Client(parts.hostname or "127.0.0.1", parts.port or 80)
                status, _ = local.client.post("/v1/predict", bodies[i % len(bodies)])
                with lock:
                    done += 1
                return status

            rss_start = _rss_mb(service.pid)
            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                statuses = list(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
            stop.set()
            thread.join()
            rss_end = _rss_mb(service.pid)
        finally:
            service.stop()
    first = [r for c, r in samples if c < 0.1 * n] or [samples[0][1]]
    last = [r for c, r in samples if c >= 0.9 * n] or [samples[-1][1]]
    rss_first, rss_last = statistics.median(first), statistics.median(last)
    result = {
        "benchmark": "bench_soak",
        "host": {"platform": platform.platform(), "cpus": psutil.cpu_count()},
        "arch": args.arch,
        "size": args.size,
        "workers": args.workers,
        "served_code": str(args.serve_from or REPO),
        "requests": n,
        "concurrency": args.concurrency,
        "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "wall_s": wall,
        "requests_per_s": n / wall,
        "rss_samples": len(samples),
        "rss_start_mb": rss_start,
        "rss_first_mb": rss_first,
        "rss_last_mb": rss_last,
        "rss_end_mb": rss_end,
        "growth_mb": rss_last - rss_first,
        "growth_pct": 100.0 * (rss_last - rss_first) / rss_first,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
