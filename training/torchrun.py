"""``torchrun --nproc_per_node=N -m training.torchrun CONFIG RUN_DIR [--resume]``: data-parallel training.

The launcher's entry point lives here, above both :mod:`training.loop` (the engine) and
:mod:`training.distributed` (the process-group helpers the engine calls), so neither imports the other back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

from torch import nn

from training.config import load_config
from training.distributed import env_rank, env_world_size
from training.loop import train

__all__ = ["main", "state_digest"]


def state_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (sorted keys, CPU bytes): equal on ranks whose replicas agree."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Train ``CONFIG`` data-parallel (any launcher that sets the torchrun variables works; without them it is
    a single-process run) and print one JSON line per rank: ``rank``, ``world_size``, ``test_metrics`` and
    ``state_sha256`` (:func:`state_digest` of the rank's final modules: equal on every rank when the replicas
    stayed in sync). ``mimicry train`` under torchrun trains the same way.
    """
    parser = argparse.ArgumentParser(prog="python -m training.torchrun")
    parser.add_argument("config")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    result = train(load_config(args.config), args.run_dir, resume=args.resume)
    line = {
        "rank": env_rank(),
        "world_size": env_world_size(),
        "test_metrics": result.test_metrics,
        "state_sha256": state_digest(result.recipe.modules),
    }
    # One write of the whole line: ranks share stdout, and print() writes the text and the newline separately
    # (two syscalls when stdout is unbuffered), which let two ranks' lines interleave. A single write below
    # PIPE_BUF (4096 bytes) to a pipe is atomic.
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through torchrun in tests
    raise SystemExit(main())
