"""A local Triton Inference Server for a registry, through PyTriton (docs/serving.md, "Triton").

PyTriton starts a real ``tritonserver`` (HTTP/REST + gRPC, KServe v2 protocol) whose python backend hands
each batch to this process, where the registry's verified ``model.onnx`` runs in ONNX Runtime. Every model
is bound **under its registry name, version and tensor names, dtypes and dims exactly as its generated
``config.pbtxt`` says** (``image`` in; ``logits``, ``probs``, ``cam`` out; ``max_batch_size`` and dynamic
batching as the generated file), so :class:`serving.backends.triton.TritonBackend` cannot tell it from a
production Triton serving the same directory with the onnxruntime backend (docs/serving.md).

API (reused by ``mimicry stack up``)::

    handle = start_triton(Path("registry"), ["cxr-ee"], http_port=8000, grpc_port=8001)
    handle.http_url, handle.grpc_url      # "127.0.0.1:8000", "127.0.0.1:8001"; handle.models
    handle.stop()                         # stops tritonserver (and kills it if it lingers)

Command line (blocks until SIGINT/SIGTERM)::

    python -m serving.triton_local --registry registry --models cxr-ee,cxr-base:2 --http-port 8000

On these machines ``tritonserver`` needs the interpreter's shared ``libpython``: :func:`start_triton`
prepends ``sysconfig.get_config_var("LIBDIR")`` to ``LD_LIBRARY_PATH`` before PyTriton spawns it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sysconfig
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimicry.registry import ModelCard, ModelRef, Registry
from mimicry.registry.pbtxt import TritonModelConfig

__all__ = ["TritonHandle", "bind_registry_model", "main", "start_triton"]

logger = logging.getLogger(__name__)

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


def _with_libdir(env_value: str | None) -> str:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [p for p in (env_value or "").split(os.pathsep) if p]
    if libdir and libdir not in parts:
        parts.insert(0, libdir)
    return os.pathsep.join(parts)


@dataclass
class TritonHandle:
    """A running PyTriton-managed ``tritonserver``.

    Attributes:
        host: Bind address.
        http_port, grpc_port, metrics_port: Its ports.
        models: ``{name: version}`` bound (as the registry resolved them).
    """

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: dict[str, int]
    _triton: Any = field(repr=False)
    _sessions: list[Any] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (tritonclient's ``url``, no scheme)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def server_pid(self) -> int | None:
        """PID of the ``tritonserver`` child (None when not running)."""
        server = getattr(self._triton, "_triton_server", None)
        proc = getattr(server, "_tritonserver_running_cmd", None)
        pid = getattr(proc, "pid", None)
        return int(pid) if pid else None

    def stop(self) -> None:
        """Stop tritonserver and the proxy threads; SIGKILL the tritonserver child if it survives.

        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        pid = self.server_pid()
        try:
            self._triton.stop()
        finally:
            if pid is not None:
                _kill_if_tritonserver(pid)
            self._sessions.clear()

    def __enter__(self) -> TritonHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_if_tritonserver(pid: int) -> None:
    """SIGKILL ``pid`` if it is still our ``tritonserver`` (checked by name: never a reused PID)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if "tritonserver" in proc.name() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.kill()
            proc.wait(timeout=5)


def _tensor_specs(config: TritonModelConfig) -> tuple[list[Any], list[Any]]:
    from pytriton.model_config import Tensor

    def spec(t: Any) -> Any:
        if t.data_type not in _DTYPES:
            raise ValueError(f"{config.name}: tensor {t.name} has unsupported type {t.data_type}")
        return Tensor(name=t.name, dtype=_DTYPES[t.data_type], shape=tuple(t.dims))

    return [spec(t) for t in config.inputs], [spec(t) for t in config.outputs]


def bind_registry_model(
    triton: Any, registry: Registry, ref: str, *, intra_op_threads: int = 1
) -> tuple[str, int]:
    """Bind one registry model version to a (not yet running) ``pytriton.triton.Triton``.

    The ONNX file is verified (sha256 against the card) and run in an ``onnxruntime.InferenceSession`` on
    CPU; names, dims, ``max_batch_size`` and the dynamic batcher's preferred sizes / queue delay come from
    ``config.pbtxt``; PyTriton's dynamic batcher waits at most 2 ms, like the generated config.
    Returns ``(name, version)``.
    """
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig

    card: ModelCard = registry.card(ref)
    config = registry.config(card.name)
    inputs, outputs = _tensor_specs(config)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(
        str(registry.load_onnx_path(card.ref)), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    in_name = config.inputs[0].name
    out_names = [t.name for t in config.outputs]
    lock = threading.Lock()

    @batch
    def infer(**arrays: np.ndarray) -> dict[str, np.ndarray]:
        with lock:
            results = session.run(out_names, {in_name: np.ascontiguousarray(arrays[in_name], np.float32)})
        return {n: np.asarray(r, dtype=np.float32) for n, r in zip(out_names, results, strict=True)}

    triton.bind(
        model_name=card.name,
        model_version=card.version,
        infer_func=infer,
        inputs=inputs,
        outputs=outputs,
        config=ModelConfig(
            batching=config.max_batch_size > 0,
            max_batch_size=max(config.max_batch_size, 1),
            batcher=DynamicBatcher(max_queue_delay_microseconds=2000),
        ),
        strict=True,
    )
    infer.session = session  # type: ignore[attr-defined]  # keep the session alive with the binding
    logger.info("bound %s to triton", card.ref)
    return card.name, card.version


def start_triton(
    registry: Path | str,
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    *,
    metrics_port: int | None = None,
    log_verbose: int = 0,
) -> TritonHandle:
    """Serve registry models from a local ``tritonserver`` (PyTriton) and return once it is live.

    Args:
        registry: Registry root (a Triton model repository).
        models: References (``name``, ``name:version``, ``name@alias``); None/empty: every model's latest.
        host: Bind address of the HTTP, gRPC and metrics endpoints.
        http_port, grpc_port: Ports (KServe v2 HTTP/REST and gRPC).
        metrics_port: Triton's Prometheus port (default ``http_port + 2``).
        log_verbose: tritonserver log verbosity.

    Raises:
        mimicry.registry errors: an unknown model or an artifact whose hash does not match the card.
        pytriton.exceptions.PyTritonError: tritonserver failed to start.
    """
    from pytriton.triton import Triton, TritonConfig

    reg = Registry(registry)
    refs = [str(ModelRef.parse(r)) for r in models] if models else sorted(reg.models())
    if not refs:
        raise ValueError("no model to serve: the registry is empty")
    os.environ["LD_LIBRARY_PATH"] = _with_libdir(os.environ.get("LD_LIBRARY_PATH"))
    metrics_port = metrics_port if metrics_port is not None else http_port + 2
    config = TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        metrics_address=host,
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
        log_verbose=log_verbose,
        exit_timeout_secs=5,
    )
    triton = Triton(config=config)
    try:
        bound = dict(bind_registry_model(triton, reg, ref) for ref in refs)
        triton.run()
    except BaseException:
        triton.stop()
        raise
    return TritonHandle(host, http_port, grpc_port, metrics_port, bound, triton)


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.triton_local --registry DIR --models a,b --http-port N [--grpc-port M]``."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.triton_local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--models", default="", help="Comma-separated references (default: every model).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=None, help="Default: HTTP port + 1.")
    parser.add_argument("--metrics-port", type=int, default=None, help="Default: HTTP port + 2.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    grpc_port = args.grpc_port if args.grpc_port is not None else args.http_port + 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    handle = start_triton(
        args.registry, models, args.host, args.http_port, grpc_port, metrics_port=args.metrics_port
    )
    try:
        print(
            f"triton ready: http={handle.http_url} grpc={handle.grpc_url} models={handle.models}", flush=True
        )
        while not done.wait(0.5):
            pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
