"""bench/bench_gpu.py on a machine without CUDA: every GPU case is skipped with its reason, the CPU cases run.

The GPU figures themselves come from ``bench/gpu_check.sh`` on a GPU machine (docs/benchmarks.md); this test
keeps the script runnable and its CPU fallbacks honest (providers read back from the session).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
def test_without_cuda_every_backend_reports_what_it_used(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    flags = {"--device": "auto", "--arch": "densenet_tiny", "--batch": "2", "--size": "32", "--iters": "1"}
    flags |= {"--film": "64x48", "--out": str(out)}
    report = _bench().main([item for pair in flags.items() for item in pair])
    assert out.is_file()
    assert report["cuda_available"] is False
    assert report["device"] == "cpu"
    rows = {(r["backend"], r.get("variant")): r for r in report["results"]}
    assert rows[("torch", "fp32")]["images_per_s_best"] > 0
    assert rows[("onnxruntime", "cpu")]["providers_used"] == ["CPUExecutionProvider"]
    assert rows[("decode", "openjpeg_cpu")]["pixels"] == 64 * 48
    assert "skipped" in rows[("decode", "nvimgcodec_gpu")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
def test_cuda_requested_without_cuda_is_skipped_not_faked() -> None:
    report = _bench().main(["--device", "cuda", "--batch", "2", "--size", "32", "--iters", "1"])
    assert report["skipped"] == "CUDA requested but not available"
    assert report["results"] == []
