"""Detector-size films through the service, side by side with a *floor* service and the raw backend, in one
run; prints JSON.

One run:

1. publishes a randomly initialised model (``--arch``, ``--size``², as ``bench/bench_serving.py``) into a
   temporary registry, and builds film-like 12-bit DX DICOMs at every ``--shapes`` (default 256x256,
   2048x2048, 3000x2500 = rows x columns) in every ``--codecs``: ``raw`` (explicit VR little endian,
   uncompressed), ``j2k`` (JPEG 2000 lossless, encoded by pydicom + pylibjpeg-openjpeg) and ``htj2k`` (HTJ2K
   lossless, encoded by imagecodecs/OpenJPH);
2. **raw backend**: ONNX Runtime on the same ``model.onnx`` in this process, batch 1 (inference alone), and
   the **in-process pipeline** per film (``serving.pipeline.ingest`` with the prediction path's reduced decode
   + ``prepare`` + inference, no HTTP): where a request's time goes;
3. **floor**: ``bench/floor_service.py`` (reads the body, answers ``{}``) and **service**: ours, both started
   with ``python -m bentoml serve`` in their own process group and ``BENTOML_HOME``, the same worker count
   (``--workers``, default 2 = the shipped default), stopped by their group at the end;
   ``POST /v1/predict`` (``application/dicom``) at every concurrency in ``--concurrency`` (default 1,16) from
   a thread pool with one keep-alive connection per thread: throughput, client-side p50/p90/p99, status
   counts, the service's own median ingest / preprocess / inference times, and the peak RSS of the server's
   whole process tree (arbiter + workers, psutil, sampled every 20 ms) during each level plus its RSS once
   idle again after it (``rss_after_mb``: what the burst left behind);
4. **ratios**: service ÷ floor p50 latency at each concurrency, and each server's throughput at the highest
   concurrency ÷ its 1-client throughput.

``--service-env KEY=VALUE`` (repeatable) sets the service's environment (e.g.
``MIMICRY_SERVE_MALLOC_TRIM_BYTES=0``, ``MALLOC_ARENA_MAX=2``) to compare memory settings; ``--no-floor``
skips the floor. Client and servers share the machine's cores, so the figures are a lower bound for a server
that has the host to itself. Quick run (a few minutes on 2 cores)::

    OMP_NUM_THREADS=1 python bench/bench_detector.py --requests 6 --requests-concurrent 32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_serving import MODEL_NAME, publish, run_requests  # noqa: E402

from mimicry.registry import Registry  # noqa: E402
from serving.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from serving.launch import ServiceProcess, free_port, start_service, stop_process_group  # noqa: E402
from serving.pipeline import decode_side, ingest, prepare  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402

FLOOR = "bench.floor_service:FloorService"


# ------------------------------------------------------------------------------------------ films


def film_pixels(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """12-bit film-like stored values: smooth anatomy, a collimation band, detector noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    dy, dx = (yy - rows / 2) / (rows / 3), (xx - columns / 2) / (columns / 4)
    img = 0.3 + 0.4 * np.exp(-(dy**2 + dx**2)) + 0.05 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
    img[:, : columns // 12] = 0.05
    img = np.clip(img + rng.normal(0, 0.01, img.shape).astype(np.float32), 0, 1)
    return np.round(img * 4095).astype(np.uint16)


def film_dicom(stored: np.ndarray, codec: str) -> bytes:
    """A DX DICOM of ``stored`` (12 bits in 16): ``raw``, ``j2k`` (lossless) or ``htj2k`` (lossless)."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        HTJ2KLossless,
        JPEG2000Lossless,
        generate_uid,
    )

    rows, columns = stored.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if codec == "raw":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
    elif codec == "j2k":
        ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg")
    elif codec == "htj2k":
        import imagecodecs

        ds.file_meta.TransferSyntaxUID = HTJ2KLossless
        ds.PixelData = encapsulate([imagecodecs.htj2k_encode(stored, reversible=True)])
        ds["PixelData"].VR = "OB"
    else:
        raise ValueError(codec)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ processes


def tree_rss(pid: int) -> int:
    """RSS (bytes) of ``pid`` and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Peak RSS of a process tree, sampled in a thread every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))


def _ready(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_floor(workers: int, log_path: Path, timeout_s: float = 120.0) -> ServiceProcess:
    """The floor service, started as :func:`serving.launch.start_service` starts ours."""
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="mimicry-bench-floor-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BENTOML_CONFIG_OPTIONS", "PROMETHEUS_MULTIPROC_DIR", "BENTOML_HOME")
    }
    env.update(
        BENTOML_HOME=str(state),
        BENTOML_CONFIG_OPTIONS=f"services.floor.workers={workers}",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    argv = [sys.executable, "-m", "bentoml", "serve", FLOOR, "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "wb")  # noqa: SIM115 - closed by ServiceProcess.stop
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    service = ServiceProcess(proc, f"http://127.0.0.1:{port}", log_path, log, state, True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _ready(service.url):
            return service
        time.sleep(0.25)
    tail = service.log_text()[-2000:]
    stop_process_group(proc)
    shutil.rmtree(state, ignore_errors=True)
    raise RuntimeError(f"floor service did not start:\n{tail}")


# ------------------------------------------------------------------------------------------ measurements


def _pcts(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def in_process(reg: Registry, films: dict[str, bytes], repeats: int) -> dict[str, Any]:
    """Per film: median ms of the prediction path's decode (reduced for JPEG 2000), preprocess, inference."""
    card = reg.card(MODEL_NAME)
    backend = OnnxRuntimeBackend(reg.load_onnx_path(MODEL_NAME), card, device="cpu")
    settings = ServeSettings(registry=reg.root).ingest
    side = decode_side(card)
    x = np.zeros((1, 1, card.preprocessing.size, card.preprocessing.size), np.float32)
    backend.infer(x)
    t_inf = []
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        backend.infer(x)
        t_inf.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"inference_batch1": _pcts(t_inf)}
    for key, data in films.items():
        decode, prep, level = [], [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            image = ingest(data, settings, min_side=side)
            t1 = time.perf_counter()
            prepare(image, card)
            decode.append(t1 - t0)
            prep.append(time.perf_counter() - t1)
            level = image.level
            del image
        out[key] = {
            "decode_level": level,
            "decode_ms": 1000 * float(np.median(decode)),
            "preprocess_ms": 1000 * float(np.median(prep)),
        }
    backend.close()
    return out


def load(
    url: str, pid: int, body: bytes, levels: list[int], n1: int, nc: int, settle_s: float
) -> list[dict[str, Any]]:
    out = []
    for c in levels:
        n = n1 if c == 1 else nc
        run_requests(url, "/v1/predict", [body], min(c, 4), min(c, 4))  # warm connections and code paths
        with RssSampler(pid) as rss:
            result = run_requests(url, "/v1/predict", [body], n, c)
        time.sleep(settle_s)  # idle again: what did the burst leave behind?
        result = {
            "concurrency": c,
            **{k: result[k] for k in ("requests", "ok", "status_counts", "wall_s", "requests_per_s")},
            **{k: result[k] for k in ("p50_ms", "p99_ms", "mean_ms")},
            "server_median_ms": result["server_median_ms"],
            "peak_rss_mb": rss.peak / 2**20,
            "rss_after_mb": tree_rss(pid) / 2**20,
        }
        out.append(result)
    return out


def ratios(service: list[dict[str, Any]], floor: list[dict[str, Any]] | None) -> dict[str, Any]:
    by_c = {r["concurrency"]: r for r in service}
    top = max(by_c)
    out: dict[str, Any] = {
        f"service_throughput_{top}_over_1": by_c[top]["requests_per_s"] / by_c[1]["requests_per_s"]
        if 1 in by_c and by_c[1]["requests_per_s"]
        else None
    }
    if floor:
        fl = {r["concurrency"]: r for r in floor}
        for c in by_c:
            out[f"service_over_floor_p50_c{c}"] = by_c[c]["p50_ms"] / fl[c]["p50_ms"]
        out[f"floor_throughput_{top}_over_1"] = fl[top]["requests_per_s"] / fl[1]["requests_per_s"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--arch", default="unet_tiny", choices=["unet_tiny", "densenet_tiny", "toy"])
    p.add_argument("--size", type=int, default=224, help="model input side")
    p.add_argument("--shapes", default="256x256,2048x2048,3000x2500", help="film ROWSxCOLUMNS list")
    p.add_argument("--codecs", default="raw,j2k,htj2k")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--requests", type=int, default=6, help="requests at concurrency 1")
    p.add_argument("--requests-concurrent", type=int, default=32, help="requests at higher concurrency")
    p.add_argument("--repeats", type=int, default=3, help="in-process pipeline repeats per film")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--settle-s", type=float, default=2.0)
    p.add_argument("--service-env", action="append", default=[], help="KEY=VALUE for the service")
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.members = 1
    levels = [int(c) for c in args.concurrency.split(",") if c]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    codecs = [c for c in args.codecs.split(",") if c]
    service_env = dict(kv.split("=", 1) for kv in args.service_env)

    with tempfile.TemporaryDirectory(prefix="mimicry-bench-detector-") as tmp:
        root = Path(tmp)
        reg = publish(root / "registry", args)
        films: dict[str, bytes] = {}
        for rows, columns in shapes:
            stored = film_pixels(rows, columns, args.seed)
            for codec in codecs:
                films[f"{rows}x{columns}/{codec}"] = film_dicom(stored, codec)
        pipeline_ms = in_process(reg, films, args.repeats)

        env = {
            "MIMICRY_SERVE_INGEST__UID_SALT": "bench",
            "MIMICRY_SERVE_MAX_LATENCY_MS": "60000",
            **service_env,
        }
        results: dict[str, Any] = {}
        floor = None if args.no_floor else start_floor(args.workers, root / "floor.log")
        service = start_service(
            root / "registry", [MODEL_NAME], workers=args.workers, device="cpu", env=env,
            log_path=root / "serve.log", ready_timeout_s=180,
        )  # fmt: skip
        try:
            idle = {"service_mb": tree_rss(service.pid) / 2**20}
            if floor is not None:
                idle["floor_mb"] = tree_rss(floor.pid) / 2**20
            for key, body in films.items():
                entry: dict[str, Any] = {"body_mb": len(body) / 2**20, "pipeline": pipeline_ms[key]}
                entry["service"] = load(
                    service.url, service.pid, body, levels, args.requests, args.requests_concurrent,
                    args.settle_s,
                )  # fmt: skip
                if floor is not None:
                    entry["floor"] = load(
                        floor.url, floor.pid, body, levels, args.requests, args.requests_concurrent,
                        args.settle_s,
                    )  # fmt: skip
                entry["ratios"] = ratios(entry["service"], entry.get("floor"))
                results[key] = entry
                print(f"# {key}: {json.dumps(entry['ratios'])}", file=sys.stderr, flush=True)
            idle["service_after_mb"] = tree_rss(service.pid) / 2**20
        finally:
            service.stop()
            if floor is not None:
                floor.stop()

    report = {
        "benchmark": "serving-detector",
        "model": {"arch": args.arch, "input_size": args.size},
        "workers": args.workers,
        "service_env": service_env,
        "raw_backend_inference_batch1": pipeline_ms["inference_batch1"],
        "idle_rss": idle,
        "films": results,
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(),
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
