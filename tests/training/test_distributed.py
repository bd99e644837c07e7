"""Data-parallel training: two ``torchrun`` processes (gloo, CPU) against a single-process run of one config.

The 2-process run must: finish with both replicas holding bit-identical weights (gradients averaged, buffers
averaged, identical test metrics on every rank); write the run directory once (rank 0) with the same files,
shapes and metric keys as the single-process run; record ``world_size`` 2; and report sane values. The
sampler gives each rank a disjoint half of every epoch's order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.training import cache_dir, phantom_root
from training import distributed
from training.config import load_config
from training.data import make_loader
from training.loop import read_metrics, train

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, factory: pytest.TempPathFactory) -> Path:
    data = {
        "seed": 0,
        "num_threads": 1,
        "progress": False,
        "data": {
            "root": str(phantom_root(factory)),
            "cache_dir": str(cache_dir(factory)),
            "masks_available": 0.5,
        },
        "preprocessing": {"size": 32},
        "model": {"arch": "toy", "arch_kwargs": {"width": 8}},
        "schedule": {"epochs": 2, "batch_size": 4},
        # GradMask: a double-backward (create_graph=True) recipe, which plain DDP wrapping cannot run
        "recipe": {"name": "gradmask", "lambda_grad": 1.0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_distributed_sampler_shards_one_shared_order() -> None:
    from tests.training import easy_bundle

    split = easy_bundle(n_train=10).train
    seen = []
    for rank in (0, 1):
        loader = make_loader(split, 3, shuffle=True, seed=7, rank=rank, world_size=2)
        seen.append([i for b in loader for i in b.index.tolist()])
    assert len(seen[0]) == len(seen[1]) == 5
    assert sorted(seen[0] + seen[1]) == list(range(10))  # disjoint halves covering the epoch
    again = make_loader(split, 3, shuffle=True, seed=7, rank=0, world_size=2)
    assert [i for b in again for i in b.index.tolist()] == seen[0]


def test_single_process_context_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.enabled, ctx.is_main, ctx.world_size) == (False, True, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(distributed.DistributedError, match="RANK"):
        distributed.setup("cpu")


@pytest.mark.integration
def test_two_gloo_processes_match_a_single_process_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = _config(tmp_path, tmp_path_factory)
    single = train(load_config(config), tmp_path / "single")  # also fills the shared tensor cache

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore::RuntimeWarning")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "training.torchrun", str(config), str(tmp_path / "ddp"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["rank"] for line in lines) == [0, 1]
    assert {line["world_size"] for line in lines} == {2}
    # the replicas stayed in sync: identical weights (and hence identical test metrics) on both ranks
    assert lines[0]["state_sha256"] == lines[1]["state_sha256"]
    assert lines[0]["test_metrics"] == lines[1]["test_metrics"]

    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_summary = json.loads((ddp_dir / "result.json").read_text(encoding="utf-8"))
    one_summary = json.loads((one_dir / "result.json").read_text(encoding="utf-8"))
    assert ddp_summary["world_size"] == 2
    assert one_summary["world_size"] == 1
    assert ddp_summary["test_metrics"] == lines[0]["test_metrics"]
    assert ddp_summary.keys() == one_summary.keys()
    assert ddp_summary["test_metrics"].keys() == single.test_metrics.keys()
    assert ddp_summary["split_sizes"] == one_summary["split_sizes"]
    assert ddp_summary["replicate_group"] == one_summary["replicate_group"]
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())

    ddp_w, one_w = (load_file(d / "weights" / "model.safetensors") for d in (ddp_dir, one_dir))
    assert {k: v.shape for k, v in ddp_w.items()} == {k: v.shape for k, v in one_w.items()}
    assert any(not bool((ddp_w[k] == one_w[k]).all()) for k in ddp_w)  # it trained (differently batched)

    ddp_hist, one_hist = read_metrics(ddp_dir), read_metrics(one_dir)
    assert [r["epoch"] for r in ddp_hist] == [r["epoch"] for r in one_hist] == [0, 1]
    for a, b in zip(ddp_hist, one_hist, strict=True):
        assert a.keys() == b.keys()
        assert 0.0 <= a["val_accuracy"] <= 1.0
        assert 0.0 < a["train_loss"] < 3.0
        assert a["train_gradmask"] > 0.0
        # the logged terms are the global means: same magnitude as the single-process run's
        assert a["train_cls"] == pytest.approx(b["train_cls"], rel=0.2)
