"""Measure how the service behaves when its Triton backend hangs or a worker dies; prints JSON
(docs/serving.md, "Backend failures").

One run, everything on 127.0.0.1 in process groups of its own, stopped by their PIDs at the end:

1. publishes the toy model into a temporary registry and writes one phantom DICOM;
2. starts ``python -m serving.triton_local`` (a real ``tritonserver``) and ``bentoml serve`` with
   ``--backend triton`` (:func:`serving.launch.start_service`, ``--workers`` workers, default settings
   otherwise unless given): **start-up** = seconds until ``/readyz`` answers 200;
3. **frozen Triton** (SIGSTOP of ``tritonserver``): a ``/v1/predict`` sent right after the freeze — seconds
   until its answer and its status; ``/livez`` and ``/readyz`` latencies sampled every 0.1 s while frozen
   (max, p50); seconds until ``/readyz`` is 503 on every sampled connection; a ``/v1/predict`` once
   ``/readyz`` is 503 (fail-fast latency);
4. **recovery** (SIGCONT): seconds until ``/readyz`` is 200 again and a ``/v1/predict`` succeeds;
5. **worker crash**: one worker SIGKILLed; requests failed meanwhile, and seconds until two workers (one of
   them new) answer ``/readyz`` 200 again.

``--code DIR`` runs the service and the Triton launcher from another checkout (e.g. an export of an older
commit) to compare, with the same client and measurements::

    .venv/bin/python bench/bench_resilience.py --freeze-s 12 > resilience.json
    git archive main | tar -x -C /tmp/old && .venv/bin/python bench/bench_resilience.py --code /tmp/old
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench_resilience.py` from the repository root
    sys.path.insert(0, str(REPO))

from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset  # noqa: E402
from mimicry.registry import Registry  # noqa: E402
from serving.launch import free_port, start_service, stop_process_group  # noqa: E402
from tests.registry import publish_toy  # noqa: E402

DICOM = {"content-type": "application/dicom"}


def _get(url: str, timeout: float = 30.0) -> tuple[int | None, float, dict[str, Any]]:
    """(status or None on a transport error, seconds, JSON body or {}) on a fresh connection."""
    t0 = time.perf_counter()
    try:
        r = httpx.get(url, timeout=timeout, headers={"connection": "close"})
    except httpx.HTTPError:
        return None, time.perf_counter() - t0, {}
    dt = time.perf_counter() - t0
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code, dt, body if isinstance(body, dict) else {}


def _predict(url: str, data: bytes, timeout: float = 60.0) -> tuple[int | None, float]:
    t0 = time.perf_counter()
    try:
        r = httpx.post(url + "/v1/predict", content=data, headers=DICOM, timeout=timeout)
        return r.status_code, time.perf_counter() - t0
    except httpx.HTTPError:
        return None, time.perf_counter() - t0


def _until(predicate: Any, bound_s: float, step_s: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` (None if not within ``bound_s``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < bound_s:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(step_s)
    return None


def _consecutive(url: str, status: int, n: int = 6) -> Any:
    """Predicate: ``n`` fresh-connection ``/readyz`` in a row answer ``status`` (both workers seen)."""

    def check() -> bool:
        return all(_get(url + "/readyz", timeout=10)[0] == status for _ in range(n))

    return check


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "max": max(values), "n": len(values)} if values else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--freeze-s", type=float, default=12.0, help="How long tritonserver stays frozen.")
    ap.add_argument("--code", type=Path, default=REPO, help="Checkout whose serving code runs.")
    ap.add_argument("--env", action="append", default=[], help="Extra MIMICRY_SERVE_*=value (repeatable).")
    args = ap.parse_args()
    out: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "code": str(args.code),
        "workers": args.workers,
    }
    with tempfile.TemporaryDirectory(prefix="bench-resilience-") as tmp:
        root = Path(tmp)
        reg = Registry(root / "registry")
        publish_toy(reg, "cxr-toy")
        generate_phantom_dataset(root / "phantom", PhantomConfig(n=1, size=96, seed=5))
        data = next((root / "phantom").rglob("*.dcm")).read_bytes()

        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        log = open(root / "triton.log", "wb")  # noqa: SIM115 - closed below
        env = {**os.environ, "PYTHONPATH": str(args.code)}
        triton = subprocess.Popen(
            [
                *(sys.executable, "-m", "serving.triton_local", "--registry", str(reg.root), "--models"),
                *("cxr-toy", "--http-port", str(http_port), "--grpc-port", str(grpc_port)),
                *("--metrics-port", str(metrics_port)),
            ],
            cwd=args.code,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        service = None
        server: psutil.Process | None = None
        try:
            if _until(lambda: b"triton ready" in (root / "triton.log").read_bytes(), 180, 0.25) is None:
                raise SystemExit("triton did not start:\n" + (root / "triton.log").read_text()[-2000:])
            server = next(
                p for p in psutil.Process(triton.pid).children(recursive=True) if "tritonserver" in p.name()
            )
            extra = {
                "MIMICRY_SERVE_TRITON_URL": f"127.0.0.1:{http_port}",
                "MIMICRY_SERVE_INGEST__UID_SALT": "bench",
            }
            extra |= dict(kv.split("=", 1) for kv in args.env)
            t0 = time.perf_counter()
            service = start_service(
                reg.root,
                ["cxr-toy"],
                workers=args.workers,
                backend="triton",
                device="cpu",
                env=extra,
                log_path=root / "serve.log",
                ready_timeout_s=300,
                cwd=args.code,
            )
            out["startup_to_ready_s"] = time.perf_counter() - t0
            url = service.url
            out["predict_healthy_s"] = _stats([_predict(url, data)[1] for _ in range(5)])

            # ---- frozen triton
            os.kill(server.pid, signal.SIGSTOP)
            frozen_at = time.perf_counter()
            first: dict[str, Any] = {}

            def first_request() -> None:
                status, dt = _predict(url, data)
                first.update(status=status, seconds=dt)

            th = threading.Thread(target=first_request)
            th.start()
            livez: list[float] = []
            readyz: list[float] = []
            readyz_503_at: float | None = None
            streak = 0
            while time.perf_counter() - frozen_at < args.freeze_s:
                livez.append(_get(url + "/livez")[1])
                status, dt, _ = _get(url + "/readyz")
                readyz.append(dt)
                streak = streak + 1 if status == 503 else 0
                if streak == 1:
                    readyz_503_at = time.perf_counter() - frozen_at
                if streak == 0:
                    readyz_503_at = None
                time.sleep(0.1)
            fast = [_predict(url, data) for _ in range(3)]
            th.join(120)
            out["frozen"] = {
                "first_predict": first,
                "livez_s": _stats(livez),
                "readyz_s": _stats(readyz),
                "readyz_503_after_s": readyz_503_at,
                "predict_once_not_ready": {"status": [s for s, _ in fast], **_stats([d for _, d in fast])},
            }
            # ---- recovery
            os.kill(server.pid, signal.SIGCONT)
            t1 = time.perf_counter()
            ready_after = _until(_consecutive(url, 200), 120)
            ok_after = _until(lambda: _predict(url, data)[0] == 200, 120)
            out["recovery"] = {
                "readyz_200_after_s": ready_after,
                "predict_200_after_s": None if ok_after is None else time.perf_counter() - t1,
            }
            # ---- worker crash
            pids = {b.get("pid") for _ in range(30) for s, _, b in [_get(url + "/readyz")] if s == 200}
            victim = min(p for p in pids if p)
            os.kill(victim, signal.SIGKILL)
            t2 = time.perf_counter()
            failed = 0
            total = 0
            seen: set[int] = set()

            def two_workers() -> bool:
                nonlocal failed, total
                status, _ = _predict(url, data, timeout=30)
                total += 1
                failed += status != 200
                s, _, body = _get(url + "/readyz")
                if s == 200 and body.get("pid"):
                    seen.add(int(body["pid"]))
                return len(seen - {victim}) >= args.workers

            out["worker_crash"] = {
                "workers_before": len(pids),
                "replacement_ready_after_s": _until(two_workers, 300, 0.05),
                "requests_meanwhile": total,
                "requests_failed_meanwhile": failed,
                "since_kill_s": time.perf_counter() - t2,
            }
        finally:
            if server is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signal.SIGCONT)
            if service is not None:
                service.stop()
            stop_process_group(triton, timeout_s=20)
            log.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
