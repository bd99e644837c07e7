"""Randomisation curves of small trained models, printed as JSON: which stages the audit randomises and how
Grad-CAM's SSIM to the trained model's map falls with them (docs/audit.md, "Randomisation").

Trains ``unet_tiny``, ``densenet_tiny`` and ``toy`` (``ToyCamNet``) on a synthetic task (a bright patch on the
left = class 0, on the right = class 1, none = class 2; S×S noise, default 32 px) with Adam, then on held-out
images: the stages top-down, the modules off the classification path, the cascading and independent
randomisation curves (mean SSIM per stage), the degradation threshold (SSIM between different images'
maps) and the random-logit SSIM. One CPU core; seconds per model.

Usage: ``python bench/randomisation_curves.py [--models unet,densenet,toy] [--steps 80] [--size 32]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from audit.checks import (  # noqa: E402
    cascading_randomisation,
    degradation_threshold,
    excluded_modules,
    independent_randomisation,
    random_logit,
)
from mimicry.models import ToyCamNet, densenet_tiny, unet_tiny  # noqa: E402
from mimicry.saliency import explain  # noqa: E402

BUILDERS = {"unet": unet_tiny, "densenet": densenet_tiny, "toy": ToyCamNet}


def blobs(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g) * 0.3
    y = torch.arange(n) % 3
    rows = torch.randint(6, size - 6, (n,), generator=g)
    for i in range(n):
        r = int(rows[i])
        if y[i] == 0:
            x[i, 0, r - 3 : r + 3, 3:9] += 2.0
        elif y[i] == 1:
            x[i, 0, r - 3 : r + 3, size - 9 : size - 3] += 2.0
    return x, y


def curves(name: str, steps: int, size: int, n_eval: int) -> dict:
    torch.manual_seed(0)
    model = BUILDERS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = blobs(16, 1000 + step, size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    train_s = time.perf_counter() - t0
    x, y = blobs(n_eval, 3, size)
    with torch.no_grad():
        pred = model(x).argmax(1)

    def gradcam(m: torch.nn.Module, xx: torch.Tensor, tt: torch.Tensor):
        return explain(m, xx, tt, "gradcam")

    keys = [f"k{i}" for i in range(n_eval)]
    maps = gradcam(model, x, pred)
    thr = degradation_threshold(maps)
    common = {"method": "gradcam", "keys": keys, "original": maps}
    casc = cascading_randomisation(model, x, pred, gradcam, **common)
    ind = independent_randomisation(model, x, pred, gradcam, **common)
    rl = random_logit(model, x, gradcam, targets=pred, **common)
    return {
        "model": name,
        "train_steps": steps,
        "train_s": round(train_s, 1),
        "accuracy": float((pred == y).float().mean()),
        "stages": casc.details["stages"],
        "excluded": excluded_modules(model, x),
        "cascading_ssim": dict(zip(casc.details["stages"], casc.details["curve"]["ssim"], strict=True)),
        "independent_ssim": dict(zip(ind.details["stages"], ind.details["curve"]["ssim"], strict=True)),
        "degradation_threshold_ssim": thr[0],
        "random_logit_ssim": rl.summaries["ssim"].mean,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="unet,densenet,toy")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-eval", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = [curves(m, a.steps, a.size, a.n_eval) for m in a.models.split(",")]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
