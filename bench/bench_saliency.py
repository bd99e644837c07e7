"""Benchmark every saliency method on a DenseNet121-sized model; prints JSON.

For each method and device: seconds per batch (mean and min over ``--repeats`` after one warm-up call) and
peak memory, for mimicry's implementation (paper defaults, internal batching) and — where captum has the
method — side by side with captum's own default settings (e.g. integrated gradients: 50 Gauss–Legendre steps,
no internal batching). Each case runs in a fresh subprocess so that the CPU peak (``ru_maxrss`` growth over
the process's state after building the model and inputs, warm-up included) belongs to that case alone; on
CUDA the peak is ``torch.cuda.max_memory_allocated`` minus the memory allocated before the first call.

Model: ``monai.networks.nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)`` wrapped into the
:class:`~mimicry.models.base.CamClassifier` contract (MONAI builds ``nn.ReLU(inplace=True)``; the wrapper
switches every ReLU to ``inplace=False`` and moves the head's ReLU into the feature extractor). IBA's layer
statistics are estimated on a few random images (``--stats-samples``; the paper uses ≥ 1000) — fine for
timing, meaningless for maps.

Quick check (a few CPU minutes at most)::

    .venv/bin/python bench/bench_saliency.py --methods gradcam,gradient,integrated_gradients,occlusion \\
        --batch 2 --size 64 --repeats 1

Full run (batch 8 at 224², all methods, CPU and CUDA when available; tens of minutes on CPU)::

    .venv/bin/python bench/bench_saliency.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mimicry.models.base import CamClassifier, assert_contract
from mimicry.saliency import estimate_layer_stats, explain_raw, get_method, list_methods, occlusion_geometry

IBA_LAYER = "backbone.0.denseblock3"  # Khakzar et al.: the output of DenseBlock 3
MULTILAYER_LAYERS = ("backbone.0.denseblock1", "backbone.0.denseblock2", "backbone.0.denseblock3")


class DenseNet121Cam(CamClassifier):
    """MONAI DenseNet121 (1 input channel, 3 classes) under the CamClassifier contract.

    MONAI's ``DenseNet121`` is ``features`` (ending in ``norm5``) then ``class_layers`` = ReLU → adaptive
    average pool → flatten → ``out`` (Linear 1024 → K). Here ``backbone = Sequential(features, ReLU)`` is the
    cam layer (its output ``A`` is ``[N, 1024, H/32, W/32]``) and ``classifier = class_layers.out``.
    """

    def __init__(self, num_classes: int = 3) -> None:
        from monai.networks.nets import DenseNet121

        super().__init__()
        net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_classes)
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.backbone = nn.Sequential(net.features, nn.ReLU(inplace=False))
        self.classifier = net.class_layers.out

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone


CAPTUM_METHODS = (
    "gradcam",
    "gradient",
    "smoothgrad",
    "integrated_gradients",
    "smooth_ig",
    "gradient_shap",
    "guided_backprop",
    "guided_gradcam",
    "occlusion",
)


def _captum_default(
    method: str, model: DenseNet121Cam, x: Tensor, target: Tensor
) -> tuple[Callable[[], Any], dict]:
    """captum with its own defaults (only what it requires is given)."""
    from captum.attr import (
        GradientShap,
        GuidedBackprop,
        GuidedGradCam,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    xg = x.clone().requires_grad_(True)
    if method == "gradcam":
        lgc = LayerGradCam(model, model.cam_layer)
        return (
            lambda: LayerAttribution.interpolate(lgc.attribute(xg, target=target), tuple(x.shape[-2:])),
            {"relu_attributions": False, "interpolate_mode": "nearest"},
        )
    if method == "gradient":
        return lambda: Saliency(model).attribute(xg, target=target), {"abs": True}
    if method == "smoothgrad":
        nt = NoiseTunnel(Saliency(model))
        return lambda: nt.attribute(xg, target=target), {"nt_samples": 5, "stdevs": 1.0}
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        return lambda: ig.attribute(x, target=target), {
            "n_steps": 50,
            "method": "gausslegendre",
            "baseline": 0,
        }
    if method == "smooth_ig":
        nt = NoiseTunnel(IntegratedGradients(model))
        return lambda: nt.attribute(x, target=target), {"nt_samples": 5, "stdevs": 1.0, "n_steps": 50}
    if method == "gradient_shap":
        gs = GradientShap(model)
        refs = torch.zeros_like(x[:1])
        return lambda: gs.attribute(x, baselines=refs, target=target), {"n_samples": 5, "stdevs": 0.0}
    if method == "guided_backprop":
        return lambda: GuidedBackprop(model).attribute(xg, target=target), {}
    if method == "guided_gradcam":
        ggc = GuidedGradCam(model, model.cam_layer)
        return lambda: ggc.attribute(xg, target=target), {"interpolate_mode": "nearest"}
    if method == "occlusion":
        win, st = occlusion_geometry(x.shape[-2], x.shape[-1], None, None)
        occ = Occlusion(lambda t: torch.softmax(model(t), dim=1))
        return (
            lambda: occ.attribute(
                x, sliding_window_shapes=(1, win, win), strides=(1, st, st), baselines=0.0, target=target
            ),
            {"window": win, "stride": st, "perturbations_per_eval": 1},
        )
    raise ValueError(method)


def _ours(
    method: str, model: DenseNet121Cam, x: Tensor, target: Tensor, stats_samples: int
) -> tuple[Callable[[], Any], dict]:
    params: dict[str, Any] = {}
    if method in ("iba", "inverse_iba", "multilayer_iba"):
        g = torch.Generator().manual_seed(0)
        images = torch.randn(stats_samples, 1, x.shape[-2], x.shape[-1], generator=g).to(x.device)
        layers = MULTILAYER_LAYERS if method == "multilayer_iba" else (IBA_LAYER,)
        stats = [estimate_layer_stats(model, name, [images], n_samples=stats_samples) for name in layers]
        params["stats"] = stats if method == "multilayer_iba" else stats[0]
    settings = {k: v for k, v in {**get_method(method).defaults, **params}.items() if k != "stats"}
    if method == "occlusion":
        settings["window"], settings["stride"] = occlusion_geometry(x.shape[-2], x.shape[-1], None, None)
    return lambda: explain_raw(model, x, target, method, **params), settings


def _run_case(
    method: str, impl: str, device: str, batch: int, size: int, repeats: int, stats_samples: int
) -> dict:
    """One (method, implementation, device) case; the memory baseline is taken after building the model,
    the inputs and (for IBA) the layer statistics, before the warm-up call."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = DenseNet121Cam().to(dev).eval()
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    target = torch.arange(batch, device=dev) % 3
    if impl == "mimicry":
        fn, settings = _ours(method, model, x, target, stats_samples)
    else:
        fn, settings = _captum_default(method, model, x, target)

    def _sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()  # warm-up (allocator, kernels, lazy imports); its memory counts towards the peak
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        peak_kind = "cuda_max_memory_allocated_minus_setup"
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # ru_maxrss: KiB
        peak_kind = "ru_maxrss_growth_over_setup"
    return {
        "method": method,
        "impl": impl,
        "device": device,
        "batch": batch,
        "size": size,
        "seconds_per_batch": round(sum(times) / len(times), 4),
        "seconds_min": round(min(times), 4),
        "peak_mem_mib": round(peak_mib, 1),
        "peak_mem_kind": peak_kind,
        "settings": {
            k: (v if isinstance(v, int | float | str | bool | None) else str(v)) for k, v in settings.items()
        },
    }


def _child(args: argparse.Namespace) -> None:
    method, impl, device = args.case.split(":")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        json.dumps(_run_case(method, impl, device, args.batch, args.size, args.repeats, args.stats_samples))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(list_methods()), help="comma-separated method names")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", default=None, help="comma-separated; default cpu (+ cuda if available)")
    parser.add_argument("--no-captum", action="store_true", help="skip the captum-default reference runs")
    parser.add_argument(
        "--stats-samples", type=int, default=16, help="images for IBA statistics (timing only)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case and exit
    args = parser.parse_args(argv)
    if args.case:
        _child(args)
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(list_methods()))
    if unknown:
        parser.error(f"unknown methods: {', '.join(unknown)}")
    devices = (
        args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    assert_contract(DenseNet121Cam(), size=64)

    results = []
    for device in devices:
        for method in methods:
            impls = ["mimicry"] + (
                ["captum_default"] if method in CAPTUM_METHODS and not args.no_captum else []
            )
            for impl in impls:
                cmd = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--case",
                    f"{method}:{impl}:{device}",
                    "--batch",
                    str(args.batch),
                    "--size",
                    str(args.size),
                    "--repeats",
                    str(args.repeats),
                    "--stats-samples",
                    str(args.stats_samples),
                    "--threads",
                    str(args.threads),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
                    results.append({"method": method, "impl": impl, "device": device, "error": tail[0]})
                else:
                    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # progress

    report = {
        "benchmark": "saliency",
        "model": "monai DenseNet121(spatial_dims=2, in_channels=1, out_channels=3), CamClassifier wrapper",
        "config": {"batch": args.batch, "size": args.size, "repeats": args.repeats, "devices": devices},
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": args.threads or torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
