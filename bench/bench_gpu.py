"""GPU path check and throughput: DenseNet121 224² predict + Grad-CAM on every backend present; JSON out.

Run by ``bench/gpu_check.sh`` on a machine with CUDA (one call, a few minutes); on a machine without CUDA
every GPU case is reported as skipped with its reason, so the script is tested on CPU
(``tests/test_bench_gpu.py``).

Cases (each side by side in one run, same model weights, same inputs):

* ``torch`` — the torch twin's ``forward_with_cam`` (probabilities + in-graph-equivalent Grad-CAM) on CUDA in
  fp32, in bf16 autocast, and bf16 + channels-last; CUDA events time each batch after warm-up.
* ``onnxruntime`` — the registry's ONNX graph (``mimicry.registry.export_onnx``: ``logits``, ``probs``,
  ``cam``) through :func:`serving.backends.onnxruntime.select_providers` with ``device="cuda"``; the providers
  the session actually uses are read back (``session.get_providers()``) and reported, so a silent CPU
  fallback shows as such. The TensorRT provider (FP16) is tried when ONNX Runtime offers it.
* ``decode`` — GPU JPEG 2000 decode of a full-size film with nvImageCodec when ``nvidia.nvimgcodec`` is
  importable, beside the CPU decode (OpenJPEG through pydicom) of the same codestream.

The goal (``docs/benchmarks.md``): >= 4,000 images/s predict + CAM for DenseNet121 224² on one H100.

    python bench/bench_gpu.py --out gpu.json                     # everything available
    python bench/bench_gpu.py --device cpu --batch 2 --iters 1   # CPU smoke (what the test runs)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


ARCH = "densenet121"


def _model(device: str, size: int) -> Any:
    import torch

    from mimicry.models import zoo

    torch.manual_seed(0)
    return zoo.build_model(ARCH).eval().to(device)


def _timed(fn: Any, iters: int, device: str) -> list[float]:
    """Seconds per call of ``fn`` (after one warm-up call), CUDA-event timed on CUDA."""
    import torch

    fn()
    out = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def _rate(batch: int, seconds: list[float]) -> dict[str, float]:
    best, median = min(seconds), float(np.median(seconds))
    return {"images_per_s_best": batch / best, "images_per_s_median": batch / median, "s_per_batch": median}


def torch_cases(device: str, batch: int, size: int, iters: int) -> list[dict[str, Any]]:
    import torch

    model = _model(device, size)
    x = torch.randn(batch, 1, size, size, device=device)
    variants: list[tuple[str, Any]] = [("fp32", None)]
    if device == "cuda":
        variants += [("bf16", torch.bfloat16), ("bf16_channels_last", torch.bfloat16)]
    rows = []
    for name, dtype in variants:
        m = model
        xin = x
        if name.endswith("channels_last"):
            m = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)

        def call(m: Any = m, xin: Any = xin, dtype: Any = dtype) -> Any:
            with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                return m.forward_with_cam(xin)

        rows.append(
            {"backend": "torch", "variant": name, "device": device, "batch": batch, "size": size}
            | _rate(batch, _timed(call, iters, device))
        )
    return rows


def onnxruntime_cases(device: str, batch: int, size: int, iters: int) -> list[dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return [{"backend": "onnxruntime", "skipped": f"onnxruntime not importable ({exc})"}]
    import torch

    from mimicry.registry import export_onnx
    from serving.backends.onnxruntime import select_providers

    model = _model("cpu", size)
    graph = export_onnx(model, torch.randn(2, 1, size, size))
    x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    available = list(ort.get_available_providers())
    rows: list[dict[str, Any]] = []
    wanted: list[tuple[str, list[Any]]] = [(device, select_providers(device, available))]
    if device == "cuda" and "TensorrtExecutionProvider" in available:
        wanted.append(
            (
                "tensorrt_fp16",
                [
                    ("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
                    "CUDAExecutionProvider",
                    "CPUExecutionProvider",
                ],
            )
        )
    for name, providers in wanted:
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            rows.append(
                {
                    "backend": "onnxruntime",
                    "variant": name,
                    "available_providers": available,
                    "skipped": "this onnxruntime build has no CUDAExecutionProvider (install "
                    "onnxruntime-gpu instead of onnxruntime)",
                }
            )
            continue
        session = ort.InferenceSession(graph, providers=providers)
        used = session.get_providers()

        def call(session: Any = session) -> Any:
            return session.run(None, {session.get_inputs()[0].name: x})

        rows.append(
            {"backend": "onnxruntime", "variant": name, "providers_used": used, "batch": batch, "size": size}
            | _rate(batch, _timed(call, iters, "cpu"))
        )
    return rows


def decode_cases(iters: int, rows_cols: tuple[int, int] = (3000, 2500)) -> list[dict[str, Any]]:
    """Full-size JPEG 2000 film: CPU decode (OpenJPEG) and, when present, nvImageCodec on the GPU."""
    try:
        import openjpeg
    except ImportError as exc:
        return [{"backend": "decode", "skipped": f"openjpeg not importable ({exc})"}]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : rows_cols[0], 0 : rows_cols[1]]
    film = (2000 + 1000 * np.sin(yy / 150) * np.cos(xx / 120) + rng.normal(0, 20, yy.shape)).astype(np.uint16)
    stream = bytes(openjpeg.encode(film, bits_stored=12, use_mct=False))
    rows = [
        {"backend": "decode", "variant": "openjpeg_cpu", "pixels": int(film.size)}
        | _rate(1, _timed(lambda: openjpeg.decode(stream), iters, "cpu"))
    ]
    try:
        from nvidia import nvimgcodec  # type: ignore[import-not-found]
    except ImportError:
        rows.append(
            {"backend": "decode", "variant": "nvimgcodec_gpu", "skipped": "nvidia-nvimgcodec not installed"}
        )
        return rows
    decoder = nvimgcodec.Decoder()
    rows.append(
        {"backend": "decode", "variant": "nvimgcodec_gpu", "pixels": int(film.size)}
        | _rate(1, _timed(lambda: decoder.decode(stream), iters, "cpu"))
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--arch", default="densenet121", help="architecture (densenet_tiny for smoke tests)")
    parser.add_argument("--film", default="3000x2500", help="rows x columns of the decoded film")
    parser.add_argument("--skip", default="", help="comma-separated: torch,onnxruntime,decode")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = _cuda_available()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    global ARCH
    ARCH = args.arch
    skip = {s for s in args.skip.split(",") if s}
    film = tuple(int(v) for v in args.film.lower().split("x"))
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "cuda_available": cuda,
        "device": device,
        "arch": args.arch,
    }
    if cuda:
        import torch

        report["gpu"] = torch.cuda.get_device_name(0)
    if device == "cuda" and not cuda:
        report["skipped"] = "CUDA requested but not available"
        rows: list[dict[str, Any]] = []
    else:
        rows = []
        for name, fn in (
            ("torch", lambda: torch_cases(device, args.batch, args.size, args.iters)),
            ("onnxruntime", lambda: onnxruntime_cases(device, args.batch, args.size, args.iters)),
            ("decode", lambda: decode_cases(args.iters, film)),
        ):
            if name in skip:
                continue
            try:
                rows += fn()
            except Exception as exc:  # one backend's failure is a row, not the end of the report
                rows.append({"backend": name, "error": f"{type(exc).__name__}: {exc}"})
    report["results"] = rows
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    main()
