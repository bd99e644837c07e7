"""Start and stop ``bentoml serve serving.service:MimicryService`` as a child process (CLI, tests, bench).

:func:`build_serve_invocation` is the pure part (argv + environment, tested without a server);
:func:`start_service` runs it in its **own process group** (``start_new_session=True``), waits until
``/readyz`` answers 200, and returns a :class:`ServiceProcess` whose :meth:`~ServiceProcess.stop` signals
exactly that group (SIGTERM, then SIGKILL after a bounded wait): BentoML's arbiter and its worker processes
all live in it, and nothing else does.

BentoML 1.4's ``serve`` has no workers flag: the worker count goes in through
``BENTOML_CONFIG_OPTIONS=services.mimicry.workers=N``; BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` in every
worker and ``/metrics`` aggregates them (see :mod:`serving.metrics`).

**One state directory per instance.** ``bentoml serve`` wipes and then uses
``$BENTOML_HOME/prometheus_multiproc_dir``: two services sharing a ``BENTOML_HOME`` zero each other's
counters. :func:`build_serve_invocation` therefore always sets ``BENTOML_HOME`` to a directory of this
instance: ``state_dir`` when given, else ``<tmp>/mimicry-serve-<uid>-<host>-<port>`` (one service per
address at a time); :func:`start_service` gives each child a fresh temporary directory, removed by
:meth:`ServiceProcess.stop`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "SERVICE",
    "ServiceProcess",
    "ServiceStartError",
    "build_serve_invocation",
    "default_state_dir",
    "free_port",
    "start_service",
    "stop_process_group",
]

#: The BentoML service import path.
SERVICE = "serving.service:MimicryService"


class ServiceStartError(RuntimeError):
    """The service process exited or did not become ready in time (the message carries its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_state_dir(host: str, port: int) -> Path:
    """The per-address state directory used when the caller names none."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    safe_host = "".join(c if c.isalnum() else "_" for c in host)
    return Path(tempfile.gettempdir()) / f"mimicry-serve-{uid}-{safe_host}-{port}"


def build_serve_invocation(
    *,
    host: str,
    port: int,
    workers: int,
    registry: Path,
    models: list[str],
    backend: str,
    device: str,
    config: Path | None = None,
    state_dir: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` argv and the environment additions (pure; tested without starting a server).

    ``state_dir`` becomes ``BENTOML_HOME`` (this instance's own Prometheus multiprocess directory); default
    :func:`default_state_dir`.
    """
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    env = {
        "BENTOML_HOME": str(state_dir if state_dir is not None else default_state_dir(host, port)),
        # BentoML 1.4 takes the worker count from the service config, not a CLI flag
        "BENTOML_CONFIG_OPTIONS": f"services.mimicry.workers={workers}",
        "MIMICRY_SERVE_REGISTRY": str(registry),
        "MIMICRY_SERVE_BACKEND": backend,
        "MIMICRY_SERVE_DEVICE": device,
    }
    if models:
        env["MIMICRY_SERVE_MODELS"] = ",".join(models)
    if config is not None:
        env["MIMICRY_SERVE_CONFIG"] = str(config)
    return argv, env


def stop_process_group(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session=True``), wait at most
    ``timeout_s``, then SIGKILL the group. Returns the exit status (None if it could not be reaped)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return proc.poll()
    if pgid != proc.pid:  # never signal a group we do not lead (e.g. the caller's own)
        proc.terminate()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    if pgid == proc.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    else:
        proc.kill()
    try:
        return proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        return None


@dataclass
class ServiceProcess:
    """A running ``bentoml serve`` child: its process, base URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)
    state_dir: Path | None = None
    _owns_state: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Stop the server's whole process group (idempotent)."""
        code = stop_process_group(self.proc, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._owns_state and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._owns_state = False
        return code

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_service(
    registry: Path,
    models: list[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    backend: str = "onnxruntime",
    device: str = "cpu",
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 60.0,
    cwd: Path | None = None,
    state_dir: Path | None = None,
) -> ServiceProcess:
    """Run the service as a child process and wait for ``/readyz`` = 200.

    Args:
        registry: Registry root.
        models: Model references (empty/None: every model).
        host: Bind address (loopback by default).
        port: TCP port (None: a free one).
        workers: BentoML worker processes.
        backend, device: As :class:`serving.settings.ServeSettings`.
        env: Further environment variables (``MIMICRY_SERVE_*`` settings); inherited environment otherwise,
            minus any ``MIMICRY_SERVE_*`` and ``BENTOML_CONFIG_OPTIONS`` of the caller.
        log_path: Where stdout/stderr go (default: a temporary file).
        ready_timeout_s: Bound of the readiness wait.
        cwd: Working directory (default: the repository root, so ``serving`` is importable).
        state_dir: This instance's ``BENTOML_HOME`` (default: a fresh temporary directory, removed by
            :meth:`ServiceProcess.stop`).

    Raises:
        ServiceStartError: the process exited, or was not ready within ``ready_timeout_s`` (it is stopped).
    """
    port = port or free_port(host)
    owns_state = state_dir is None
    state = Path(tempfile.mkdtemp(prefix="mimicry-serve-state-")) if state_dir is None else Path(state_dir)
    argv, extra = build_serve_invocation(
        host=host,
        port=port,
        workers=workers,
        registry=Path(registry),
        models=list(models or []),
        backend=backend,
        device=device,
        state_dir=state,
    )
    child_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MIMICRY_SERVE_")
        and k not in ("BENTOML_CONFIG_OPTIONS", "PROMETHEUS_MULTIPROC_DIR", "BENTOML_HOME")
    }
    child_env.update(extra)
    child_env.update(env or {})
    root = cwd or Path(__file__).resolve().parents[1]
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), child_env.get("PYTHONPATH", "")) if p)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="mimicry-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log = open(log_path, "wb")  # noqa: SIM115 - closed by ServiceProcess.stop
    proc = subprocess.Popen(
        argv,
        cwd=root,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = ServiceProcess(proc, f"http://{host}:{port}", Path(log_path), log, state, owns_state)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            service.stop()
            raise ServiceStartError(
                f"bentoml serve exited with {proc.returncode}:\n{service.log_text()[-3000:]}"
            )
        if _ready(service.url):
            return service
        time.sleep(0.25)
    service.stop()
    raise ServiceStartError(f"not ready after {ready_timeout_s:.0f} s:\n{service.log_text()[-3000:]}")
