"""Benchmark the service against its raw backend, side by side in one run; prints JSON (docs/serving.md,
"Benchmark"; detector-size films against a floor service: bench/bench_detector.py).

One run:

1. publishes a randomly initialised model (``--arch``: ``unet_tiny``, ``densenet_tiny``, ``toy`` or
   ``ensemble`` = ``--members`` × unet_tiny) at ``--size``² into a temporary registry, and writes phantom
   DICOMs (``mimicry.data.phantom``, ``--dicom-size``²);
2. **raw backend**: :class:`serving.backends.onnxruntime.OnnxRuntimeBackend` in this process on the same
   ``model.onnx`` (and, for an ensemble, plus the members' twin forward the service runs for the
   disagreement) at batch sizes ``--batch-sizes`` (default: the concurrency levels): images/s and per-batch
   p50/p99 latency — the ceiling the service's adaptive batching can reach;
3. **service**: ``bentoml serve`` started by :func:`serving.launch.start_service` on 127.0.0.1 (own process
   group, stopped by its PID's group at the end), ``POST /v1/predict`` (``application/dicom``) with
   ``--requests`` requests at each concurrency in ``--concurrency`` (default 1, 8, 32) from a thread pool
   with one keep-alive connection per thread: throughput, client-side p50/p99 latency, the server's own
   median ingest / preprocess / inference times, and the mean adaptive batch size (from
   ``mimicry_batch_size`` on ``/metrics``);
4. **explain**: ``POST /v1/explain`` (``format=json``) ``--explain-requests`` times per method in
   ``--methods``, sequentially: p50 latency, the server's median ``saliency_ms``, and the cost over a
   prediction (p50 explain − p50 predict at concurrency 1).

For ``--arch ensemble`` the service also runs the members on the torch twin for the disagreement report;
``--no-disagreement`` switches that off to measure its cost.

Client and server share the machine (and its cores), so these numbers are a lower bound for a server that
has the host to itself. Quick run (about a minute on 2 CPU cores)::

    .venv/bin/python bench/bench_serving.py --arch unet_tiny --size 224 --requests 32 \\
        --explain-requests 2 --methods gradcam,occlusion,gradient
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench_serving.py` from the repository root
    sys.path.insert(0, str(REPO))

from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset  # noqa: E402
from mimicry.models.zoo import build_model  # noqa: E402
from mimicry.preprocess import PreprocessSpec  # noqa: E402
from mimicry.registry import Registry  # noqa: E402
from serving.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from serving.launch import start_service  # noqa: E402

MODEL_NAME = "bench-model"


def _percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def build(arch: str, members: int, seed: int) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """A randomly initialised model, its zoo architecture name and kwargs (BatchNorm statistics warmed up
    in train mode so that untrained layers are not silent in eval mode)."""
    torch.manual_seed(seed)
    if arch == "ensemble":
        model = build_model("ensemble", arch="unet_tiny", n_members=members)
        kwargs: dict[str, Any] = model.arch_kwargs
    elif arch == "toy":
        kwargs = {"width": 8}
        model = build_model("toy", **kwargs)
    else:
        kwargs = {}
        model = build_model(arch)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 1, 32, 32))
    return model.eval(), arch, kwargs


def publish(root: Path, args: argparse.Namespace) -> Registry:
    model, arch, kwargs = build(args.arch, args.members, args.seed)
    reg = Registry(root)
    held = torch.randn(2, 1, args.size, args.size, generator=torch.Generator().manual_seed(1))
    reg.publish(
        model,
        name=MODEL_NAME,
        held_batch=held,
        preprocessing=PreprocessSpec(size=args.size),
        architecture=arch,
        arch_kwargs=kwargs,
        exporter=args.exporter,
    )
    return reg


def bench_raw(reg: Registry, batch_sizes: list[int], repeats: int, size: int) -> list[dict[str, Any]]:
    """Images/s and per-batch latency of the backend (plus the ensemble members' twin when present)."""
    card = reg.card(MODEL_NAME)
    backend = OnnxRuntimeBackend(reg.load_onnx_path(MODEL_NAME), card, device="cpu")
    twin = reg.load_twin(MODEL_NAME) if card.architecture == "ensemble" else None
    rng = np.random.default_rng(0)
    out = []
    for b in batch_sizes:
        x = rng.standard_normal((b, 1, size, size), dtype=np.float32)
        backend.infer(x)  # warm-up
        if twin is not None:
            with torch.inference_mode():
                twin.member_probs(torch.from_numpy(x))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.infer(x)
            if twin is not None:
                with torch.inference_mode():
                    twin.member_probs(torch.from_numpy(x))
            times.append(time.perf_counter() - t0)
        out.append(
            {
                "batch_size": b,
                "repeats": repeats,
                "images_per_s": b * len(times) / sum(times),
                **_percentiles(times),
                "includes_member_twin": twin is not None,
            }
        )
    backend.close()
    return out


class _Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=300)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/dicom"}
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            r = self.conn.getresponse()
        except (http.client.HTTPException, OSError):  # the server closed an idle connection: reconnect once
            self.conn.close()
            self.conn.request("POST", path, body=body, headers=headers)
            r = self.conn.getresponse()
        return r.status, r.read()


def _get(url: str, path: str) -> str:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def _batch_stats(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of ``mimicry_batch_size`` over every label set."""
    total = {"sum": 0.0, "count": 0.0}
    for kind in total:
        for m in re.finditer(rf"^mimicry_batch_size_{kind}\{{[^}}]*\}} ([0-9.e+-]+)$", metrics_text, re.M):
            total[kind] += float(m.group(1))
    return total["sum"], total["count"]


def run_requests(url: str, path: str, bodies: list[bytes], n: int, concurrency: int) -> dict[str, Any]:
    parts = urlsplit(url)
    local = threading.local()

    def one(i: int) -> tuple[float, int, bytes]:
        if not hasattr(local, "client"):
            local.client = _Client(parts.hostname or "127.0.0.1", parts.port or 80)
        t0 = time.perf_counter()
        status, body = local.client.post(path, bodies[i % len(bodies)])
        return time.perf_counter() - t0, status, body

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[1] == 200]
    timings = [json.loads(r[2]).get("timings_ms", {}) for r in ok]
    server = {
        key: statistics.median(t[key] for t in timings if key in t)
        for key in ("ingest_ms", "preprocess_ms", "inference_ms", "saliency_ms", "total_ms")
        if any(key in t for t in timings)
    }
    return {
        "requests": n,
        "ok": len(ok),
        "status_counts": {
            str(s): sum(1 for r in results if r[1] == s) for s in sorted({r[1] for r in results})
        },
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        **_percentiles([r[0] for r in ok] or [float("nan")]),
        "server_median_ms": server,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--arch", default="unet_tiny", choices=["unet_tiny", "densenet_tiny", "toy", "ensemble"])
    p.add_argument("--members", type=int, default=3, help="ensemble members (--arch ensemble)")
    p.add_argument("--size", type=int, default=224, help="model input side (preprocessing size)")
    p.add_argument("--dicom-size", type=int, default=256, help="phantom DICOM side")
    p.add_argument("--dicoms", type=int, default=4, help="distinct phantom DICOMs cycled through")
    p.add_argument("--requests", type=int, default=64, help="predict requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--batch-sizes", default=None, help="raw backend batch sizes (default: --concurrency)")
    p.add_argument("--raw-repeats", type=int, default=10)
    p.add_argument("--methods", default="gradcam,occlusion,gradient,integrated_gradients")
    p.add_argument("--explain-requests", type=int, default=3, help="explain requests per method")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--no-disagreement", action="store_true", help="ensembles: MIMICRY_SERVE_ENSEMBLE_DISAGREEMENT=false"
    )
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    batch_sizes = [int(b) for b in (args.batch_sizes or args.concurrency).split(",") if b]
    methods = [m for m in args.methods.split(",") if m]

    with tempfile.TemporaryDirectory(prefix="mimicry-bench-serving-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        reg = publish(root / "registry", args)
        publish_s = time.perf_counter() - t0
        generate_phantom_dataset(
            root / "phantom", PhantomConfig(n=args.dicoms, size=args.dicom_size, seed=args.seed)
        )
        bodies = [f.read_bytes() for f in sorted((root / "phantom").rglob("*.dcm"))]
        raw = bench_raw(reg, batch_sizes, args.raw_repeats, args.size)

        env = {
            "MIMICRY_SERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
            "MIMICRY_SERVE_INGEST__UID_SALT": "bench",
            "MIMICRY_SERVE_MAX_LATENCY_MS": "60000",
            "MIMICRY_SERVE_ENSEMBLE_DISAGREEMENT": "false" if args.no_disagreement else "true",
        }
        service = start_service(
            root / "registry",
            [MODEL_NAME],
            workers=args.workers,
            device="cpu",
            env=env,
            log_path=root / "serve.log",
            ready_timeout_s=180,
        )
        try:
            predict = []
            for c in levels:
                run_requests(service.url, "/v1/predict", bodies, min(c, args.requests), c)  # warm connections
                s0, n0 = _batch_stats(_get(service.url, "/metrics"))
                result = run_requests(service.url, "/v1/predict", bodies, args.requests, c)
                s1, n1 = _batch_stats(_get(service.url, "/metrics"))
                result["mean_batch_size"] = (s1 - s0) / (n1 - n0) if n1 > n0 else None
                predict.append({"concurrency": c, **result})
            base = next((r for r in predict if r["concurrency"] == 1), predict[0])
            explain = []
            for method in methods:
                path = f"/v1/explain?method={method}&format=json"
                run_requests(service.url, path, bodies, 1, 1)  # warm-up (loads the twin if needed)
                result = run_requests(service.url, path, bodies, args.explain_requests, 1)
                result["cost_over_predict_p50_ms"] = result["p50_ms"] - base["p50_ms"]
                explain.append({"method": method, **result})
        finally:
            pid = service.pid
            code = service.stop()

    report = {
        "benchmark": "serving",
        "model": {
            "arch": args.arch,
            "members": args.members if args.arch == "ensemble" else None,
            "disagreement": args.arch == "ensemble" and not args.no_disagreement,
        },
        "input_size": args.size,
        "dicom_size": args.dicom_size,
        "publish_s": publish_s,
        "service": {"workers": args.workers, "max_batch_size": args.max_batch_size, "pid": pid, "exit": code},
        "raw_backend": raw,
        "predict": predict,
        "explain": explain,
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
