"""Atomic, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

Layout of ``run_dir/checkpoint/``::

    checkpoint.json          {"format", "tensors": "state-eNNNN.safetensors", "sha256", "epoch", "scalars"}
    state-eNNNN.safetensors  module / optimiser / best-weights / RNG tensors of the checkpoint

Writing is atomic: the tensor file is written under a temporary name, fsynced and renamed to a name unique
to the epoch; only then is ``checkpoint.json`` replaced (temporary file + ``os.replace``), and stale tensor
files are removed last. A crash at any point leaves the previous checkpoint readable. Loading verifies the
tensor file's sha256 against ``checkpoint.json``. No ``torch.load`` / pickle anywhere (project rule).

Optimiser states are flattened: tensor entries of ``optimizer.state_dict()["state"]`` become
``optim.<name>.state.<param index>.<key>`` tensors; non-tensor entries and ``param_groups`` go to JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mimicry.io import atomic_path, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "has_checkpoint",
    "load_checkpoint",
    "load_module_tensors",
    "load_optimizer_state",
    "module_tensors",
    "optimizer_state",
    "save_checkpoint",
    "sha256_file",
    "write_json_atomic",
    "write_text_atomic",
]

CHECKPOINT_FORMAT = 1
_INDEX = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the run it is loaded into."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (NaN/inf rejected) to ``path`` atomically."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`mimicry.io.atomic_write_text`)."""
    atomic_write_text(path, text)


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- flattening


def module_tensors(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    """``module.state_dict()`` as independent contiguous CPU tensors keyed ``{prefix}.{key}``."""
    return {
        f"{prefix}.{k}": v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()
    }


def load_module_tensors(module: nn.Module, tensors: Mapping[str, Tensor], prefix: str) -> None:
    """Load ``{prefix}.*`` tensors into ``module`` with ``strict=True``.

    Raises:
        CheckpointError: missing or unexpected keys / shapes.
    """
    head = prefix + "."
    state = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not match module {prefix!r}: {exc}") from exc


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flatten ``opt.state_dict()`` into (tensors, JSON-ready dict)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.state.{pid}.{key}"] = value.detach().to("cpu").clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = json.loads(json.dumps(sd["param_groups"]))  # tuples → lists; fails loudly on non-JSON values
    return tensors, {"state": scalars, "param_groups": groups}


def load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any], prefix: str
) -> None:
    """Inverse of :func:`optimizer_state` (``betas``-like lists become tuples again)."""
    head = prefix + ".state."
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(head):
            pid, name = key[len(head) :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, entry in scalars.get("state", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    groups = []
    for group in scalars["param_groups"]:
        groups.append(
            {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()}
        )
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not match optimiser {prefix!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------- files


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint index."""
    return (Path(directory) / _INDEX).is_file()


def save_checkpoint(
    directory: Path, *, epoch: int, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]
) -> Path:
    """Write a checkpoint atomically (module docstring); returns the index path.

    Args:
        directory: ``run_dir/checkpoint``.
        epoch: Number of completed epochs (the epoch to resume from, 0-based).
        tensors: Name → tensor (CPU, contiguous, no shared storage).
        scalars: JSON-ready state.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"state-e{epoch:04d}.safetensors"
    with atomic_path(directory / name, suffix=".safetensors") as tmp:
        save_file(dict(tensors), str(tmp), metadata={"format": str(CHECKPOINT_FORMAT), "epoch": str(epoch)})
    index = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "tensors": name,
        "sha256": sha256_file(directory / name),
        "scalars": scalars,
    }
    write_json_atomic(directory / _INDEX, index)
    for stale in directory.glob("state-e*.safetensors"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return directory / _INDEX


def load_checkpoint(directory: Path) -> tuple[int, dict[str, Tensor], dict[str, Any]]:
    """Read the checkpoint in ``directory``: ``(epoch, tensors, scalars)``.

    Raises:
        CheckpointError: no checkpoint, unreadable index, unknown format, missing or corrupt tensor file.
    """
    directory = Path(directory)
    path = directory / _INDEX
    if not path.is_file():
        raise CheckpointError("no checkpoint to resume from")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError("checkpoint.json is unreadable") from exc
    if index.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"unsupported checkpoint format {index.get('format')!r}")
    tensor_path = directory / str(index["tensors"])
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint tensor file {tensor_path.name} is missing")
    if sha256_file(tensor_path) != index["sha256"]:
        raise CheckpointError(f"checkpoint tensor file {tensor_path.name} does not match its sha256")
    return int(index["epoch"]), load_file(tensor_path, device="cpu"), dict(index["scalars"])
