"""Benchmark the phantom generator on ONE core and print JSON (brief: >= 50 images/s at 256 x 256).

Runs :func:`mimicry.data.phantom.generate_phantom_dataset` with ``workers=1`` into temporary directories,
for 256 x 256 and 128 x 128 films, with no compression and with the default compressed share, and reports
images/s over wall time (everything: planning, rendering, gaze, DICOM / PNG / CSV writing and
``phantom.json``), images/s over process CPU time, and the per-stage milliseconds per image (render / gaze /
write / csv). Each run is a fresh subprocess (same interpreter, ``OMP_NUM_THREADS=1``); the best and the
median of ``--repeats`` runs are reported.

File-system cost is part of the measurement (five files and up to five directories per case, written through
the kernel's page cache). Each run starts and ends with ``os.sync()`` outside the timed region, so that one
run's writeback and deletions (TRIM on a ``discard``-mounted ext4, as on this VM) do not slow the next: a user
generates a dataset once into a fresh directory. By default every setting runs side by side into the system
temp dir (disk-backed here) and into ``/dev/shm`` (tmpfs, when present), which separates the generator's
compute from the disk; ``--dir`` (repeatable) picks others.

``--against REF`` also runs the generator of git revision ``REF`` (its ``mimicry/`` package extracted with
``git archive`` into a temporary directory and imported instead of this checkout's), interleaved run by run
with the current code (alternating which goes first), and reports the ratio of medians per setting: on a
shared machine only such side-by-side ratios are comparable across sessions.

Usage: ``python bench/bench_phantom.py [--n 200] [--repeats 3] [--dir DIR ...] [--against REF]
[--sizes 256 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from mimicry.data.phantom import PhantomConfig

REPO = Path(__file__).resolve().parents[1]

# Runs one generation in a fresh interpreter, importing the ``mimicry`` package of ``code_root`` (this
# checkout or an extracted revision) whatever is installed: the editable install's finder is removed from
# ``sys.meta_path`` and the root goes first on ``sys.path``.
_CHILD = r"""
import json, os, sys, tempfile, time
from pathlib import Path
args = json.loads(sys.argv[1])
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__name__", "").lower()]
sys.path.insert(0, args["code_root"])
import mimicry
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.data.phantom.config import GENERATOR_VERSION
config = PhantomConfig(n=args["n"], size=args["size"], seed=args["seed"], compressed_share=args["share"])
os.sync()  # untimed: earlier runs' dirty pages and deletions (TRIM on a discard mount) are flushed first
with tempfile.TemporaryDirectory(prefix="mimicry-bench-", dir=args["base"]) as tmp:
    cpu0 = time.process_time()
    summary = generate_phantom_dataset(Path(tmp) / "ds", config, workers=1)
    cpu = time.process_time() - cpu0
os.sync()
print(json.dumps({
    "package": str(Path(mimicry.__file__).parent),
    "generator_version": GENERATOR_VERSION,
    "images_per_second": summary["images_per_second"],
    "images_per_cpu_second": args["n"] / cpu,
    "stage_ms_per_image": {k: 1e3 * v / args["n"] for k, v in summary["stage_seconds"].items()},
}))
"""


def _child(code_root: str, size: int, n: int, share: float, base: str, seed: int) -> dict[str, object]:
    payload = {"code_root": code_root, "size": size, "n": n, "share": share, "base": base, "seed": seed}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: its directory would shadow the code root
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed ({code_root}):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = Path(code_root) / "mimicry"
    if Path(result["package"]).resolve() != expected.resolve():
        raise SystemExit(f"benchmark imported {result['package']}, expected {expected}")
    return result


def _summarise(results: list[dict[str, object]]) -> dict[str, object]:
    wall = [float(r["images_per_second"]) for r in results]  # type: ignore[arg-type]
    cpu = [float(r["images_per_cpu_second"]) for r in results]  # type: ignore[arg-type]
    best = max(results, key=lambda r: float(r["images_per_second"]))  # type: ignore[arg-type]
    return {
        "generator_version": results[0]["generator_version"],
        "images_per_second": {"best": round(max(wall), 2), "median": round(statistics.median(wall), 2)},
        "images_per_cpu_second": {"best": round(max(cpu), 2), "median": round(statistics.median(cpu), 2)},
        "stage_ms_per_image_of_best": {k: round(v, 3) for k, v in best["stage_ms_per_image"].items()},  # type: ignore[union-attr]
        "runs_images_per_second": [round(w, 2) for w in wall],
    }


def _extract(ref: str, into: Path) -> str:
    """``git archive REF mimicry`` into ``into``; returns the commit it resolved to."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        raise SystemExit(f"--against: not a git revision of {REPO}: {ref}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit.stdout.strip(), "mimicry"],
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cases per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (best and median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128], help="film sizes")
    parser.add_argument(
        "--dir",
        action="append",
        default=None,
        help="where to write the datasets (repeatable; default: the system temp dir and /dev/shm)",
    )
    parser.add_argument("--against", default=None, help="git revision to compare with, side by side")
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    dirs = args.dir or [tempfile.gettempdir()] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
    default_share = PhantomConfig().compressed_share
    with tempfile.TemporaryDirectory(prefix="mimicry-bench-code-") as code_tmp:
        baseline_root = None
        baseline_commit = None
        if args.against:
            baseline_commit = _extract(args.against, Path(code_tmp))
            baseline_root = code_tmp
        settings = []
        for size in args.sizes:
            for share in (0.0, default_share):
                for base in dirs:
                    current: list[dict[str, object]] = []
                    baseline: list[dict[str, object]] = []
                    for rep in range(args.repeats):
                        order = (
                            [(str(REPO), current), (baseline_root, baseline)]
                            if baseline_root
                            else [(str(REPO), current)]
                        )
                        if rep % 2 == 1:
                            order.reverse()  # alternate which goes first: drift hits both equally
                        for root, sink in order:
                            sink.append(_child(root, size, args.n, share, base, seed=rep))
                    entry: dict[str, object] = {
                        "output_dir": base,
                        "size": size,
                        "n": args.n,
                        "compressed_share": share,
                        "current": _summarise(current),
                    }
                    if baseline:
                        entry["baseline"] = _summarise(baseline)
                        cur = statistics.median(float(r["images_per_second"]) for r in current)  # type: ignore[arg-type]
                        old = statistics.median(float(r["images_per_second"]) for r in baseline)  # type: ignore[arg-type]
                        entry["speedup_of_medians"] = round(cur / old, 3)
                    settings.append(entry)
                    print(json.dumps(entry), file=sys.stderr)  # progress
    print(
        json.dumps(
            {
                "benchmark": "phantom_generator",
                "workers": 1,
                "against": {"ref": args.against, "commit": baseline_commit} if args.against else None,
                "output_dirs": dirs,
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "target_images_per_second_256": 50,
                "settings": settings,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
