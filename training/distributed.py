"""Data-parallel training under ``torchrun`` (one process per device; gloo on CPU, NCCL on CUDA).

:func:`training.loop.train` calls :func:`setup` first: when ``WORLD_SIZE > 1`` (the variables ``torchrun``
sets: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) it joins the default
process group, otherwise it returns a single-process :class:`DistContext` and every helper here is a no-op.
A process group that is already initialised (by the caller) is used as is and left open.

How the engine uses it (the scheme of ``DistributedDataParallel``, done explicitly so that it also covers
recipes DDP cannot wrap — GradMask's and the explanation ensemble's ``create_graph=True`` double backward,
auxiliary optimisers, several classifiers):

* **Data.** Each epoch every rank draws the *same* shuffled order (``DistributedSampler`` seeded with the
  run's ``derive_seed(seed, "data", stream, epoch)``) and takes its own ``1/world`` share (padded to equal
  length), so every rank runs the same number of steps.
* **Gradients.** After ``loss.backward()`` the gradients of the ``main`` optimiser's parameters are averaged
  over ranks (:func:`average_gradients`, one flat all-reduce) before clipping and the step: with identical
  initial weights (broadcast from rank 0, :func:`broadcast_module`) the ranks stay identical.
* **Everything else.** Parameters the recipe updates itself (``after_step``: e.g. the explanation ensemble's
  discriminator) are averaged after each step (:func:`average_parameters`, local-SGD style); floating-point
  buffers (BatchNorm running statistics) are averaged at the end of each epoch, before validation
  (:func:`average_buffers`). Logged training terms are reduced over ranks (:func:`reduce_sums`).
* **Files.** Only rank 0 writes the run directory (config, metrics, checkpoints, weights, result); the
  others wait at barriers around each checkpoint and at the end (:func:`barrier`). Validation and test run on
  every rank on the full splits (identical weights, identical numbers); rank 0 records them.

Ensemble members are not spread over ranks: every rank trains all members on its share of the data.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "DistributedError",
    "average_buffers",
    "average_gradients",
    "average_parameters",
    "barrier",
    "broadcast_module",
    "env_rank",
    "env_world_size",
    "main_process_first",
    "reduce_sums",
    "resolved_device",
    "setup",
    "teardown",
]

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """The torchrun environment is inconsistent or the process group cannot be joined."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node).

    ``owns_group``: whether :func:`setup` initialised the process group (and :func:`teardown` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` from the environment (0 when unset)."""
    return _env_int("RANK", 0)


def setup(device: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1`` (module docstring).

    Args:
        device: The configured device (``cpu`` → gloo; ``cuda``/``cuda:N`` → NCCL on ``cuda:LOCAL_RANK``).

    Raises:
        DistributedError: the rank variables are out of range, or NCCL is asked for without CUDA.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), None, False)
    world = env_world_size()
    if world <= 1:
        return DistContext()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise DistributedError(f"RANK {rank} is outside [0, {world})")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError("device is cuda but CUDA is not available")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    log.info("joined the process group: rank %d of %d (%s)", rank, world, backend)
    return DistContext(rank, world, local, backend, True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def resolved_device(ctx: DistContext, device: str) -> torch.device:
    """``cuda`` under torchrun means this rank's GPU, ``cuda:LOCAL_RANK``; anything else as configured."""
    if ctx.enabled and device == "cuda":
        return torch.device(f"cuda:{ctx.local_rank}")
    return torch.device(device)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (generating a phantom, filling the tensor cache), the others after it."""
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.enabled and ctx.is_main:
        dist.barrier()


def broadcast_module(ctx: DistContext, module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def _comm_device() -> torch.device:
    """Where collective inputs must live: the current GPU under NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _flat_mean(tensors: list[Tensor], world: int) -> None:
    """All-reduce the float ``tensors`` (summed, then divided by ``world``) in one flat buffer, in place."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(_comm_device(), torch.float64) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view(t.shape))
        offset += n


def average_gradients(ctx: DistContext, params: Iterable[nn.Parameter]) -> None:
    """Average ``params``' gradients over ranks (a rank without a gradient for a parameter contributes
    zeros; a parameter that has none on every rank keeps ``grad = None``, so optimisers skip it as usual)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    present = torch.tensor(
        [0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float64, device=_comm_device()
    )
    dist.all_reduce(present)
    grads = []
    for p, flag in zip(params, present.tolist(), strict=True):
        if flag > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    with torch.no_grad():
        _flat_mean(grads, ctx.world_size)


def average_parameters(ctx: DistContext, params: Iterable[nn.Parameter]) -> None:
    """Average parameter *values* over ranks (for parameters updated outside the main optimiser)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        _flat_mean([p.data for p in params], ctx.world_size)


def average_buffers(ctx: DistContext, module: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over ranks; integer buffers
    (``num_batches_tracked``) are identical on every rank and left alone."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        _flat_mean([b for b in module.buffers() if b.is_floating_point()], ctx.world_size)


def reduce_sums(ctx: DistContext, sums: dict[str, float], weights: dict[str, float]) -> None:
    """Sum the per-key running ``sums`` and ``weights`` over ranks, in place (every rank must log the same
    keys; the key set of rank 0 is the reference and a missing key counts as 0)."""
    if not ctx.enabled:
        return
    keys = sorted(sums)
    key_lists: list[list[str] | None] = [None] * ctx.world_size
    dist.all_gather_object(key_lists, keys)
    all_keys = sorted({k for ks in key_lists for k in (ks or [])})
    vec = torch.tensor(
        [sums.get(k, 0.0) for k in all_keys] + [weights.get(k, 0.0) for k in all_keys],
        dtype=torch.float64,
        device=_comm_device(),
    )
    dist.all_reduce(vec)
    n = len(all_keys)
    for i, k in enumerate(all_keys):
        sums[k], weights[k] = float(vec[i]), float(vec[n + i])
