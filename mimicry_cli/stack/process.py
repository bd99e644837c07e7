"""Spawn, health-check and stop the local stack's processes by process group, and keep its state file.

``mimicry stack up`` starts its components as child processes it tracks by PID and ``mimicry stack down``
stops exactly those (docs/deploy.md, local stack). How that is made exact:

* every component runs in **its own session and process group** (``start_new_session=True``: pgid = sid =
  the leader's PID), so a component's helpers (BentoML's workers, PyTriton's ``tritonserver``) share the group
  and nothing else does;
* the state file records, per component, the leader's PID, its pgid, its command line and its start time
  (``psutil.Process.create_time``); a PID is only signalled when ``/proc/PID/cmdline`` still equals the
  recorded command **and** the start time is the recorded one, so a PID recycled by an unrelated process is
  never touched (:func:`is_recorded_process`);
* a group is stopped with SIGTERM to the whole group, a bounded wait until no member is left, then SIGKILL to
  the group (:func:`stop_record`); :func:`stop_all` stops components in reverse start order (Prometheus first,
  Triton last), so nothing scrapes or calls a component that is already gone;
* the state file is written atomically (temporary file in the same directory + :func:`os.replace`) after each
  spawn, so a crash half-way through ``up`` still leaves a state that ``down`` can use.

Nothing here imports ``serving`` or ``audit``: the components are commands started by subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import psutil

from mimicry.io import atomic_write_text

__all__ = [
    "STATE_VERSION",
    "ProcessRecord",
    "StackError",
    "StackStartError",
    "StateFileError",
    "StopOutcome",
    "descendants",
    "group_members",
    "http_ok",
    "is_recorded_process",
    "log_tail",
    "read_state",
    "spawn",
    "stop_all",
    "stop_record",
    "wait_healthy",
    "write_state",
]

#: Version of the state-file layout (``{"version": 1, "components": [ProcessRecord, ...]}``).
STATE_VERSION = 1

#: Two start times within this many seconds are the same process (psutil rounds to clock ticks).
_CREATE_TIME_TOLERANCE_S = 0.05


class StackError(RuntimeError):
    """Base class of the local stack's errors."""


class StateFileError(StackError):
    """The state file is missing, unreadable or not a stack state of this version."""


class StackStartError(StackError):
    """A component exited or did not become healthy in time.

    Attributes:
        component: The component's name (``triton``, ``service``, ...).
        log: The tail of its log file (process output only; the stack itself never logs request data).
    """

    def __init__(self, component: str, reason: str, log: str = "") -> None:
        super().__init__(f"{component}: {reason}")
        self.component = component
        self.reason = reason
        self.log = log


class StopOutcome(StrEnum):
    """What :func:`stop_record` did to one component."""

    STOPPED = "stopped"  # the group exited after SIGTERM
    KILLED = "killed"  # it outlived the SIGTERM timeout and was SIGKILLed
    NOT_RUNNING = "not running"  # nothing of the group was left
    FOREIGN = "skipped: PID reused by another process"  # never signalled


@dataclass(frozen=True)
class ProcessRecord:
    """One started component, as stored in the state file.

    Attributes:
        name: Component name.
        pid: PID of the group leader (the spawned command).
        pgid: Its process group (= ``pid``: each component leads its own session).
        port: Its main TCP port on 127.0.0.1 (None when it has none).
        url: Base URL printed to the user.
        health_url: URL answering 200 once the component is ready.
        command: The exact argv (compared with ``/proc/PID/cmdline`` before signalling).
        started: ISO 8601 UTC time the stack started it.
        create_time: ``psutil.Process(pid).create_time()`` right after the spawn (PID-reuse check).
        log: Its stdout/stderr log file.
    """

    name: str
    pid: int
    pgid: int
    port: int | None
    url: str
    health_url: str
    command: tuple[str, ...]
    started: str
    create_time: float
    log: str

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["command"] = list(self.command)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessRecord:
        try:
            return cls(
                name=str(data["name"]),
                pid=int(data["pid"]),  # type: ignore[call-overload]
                pgid=int(data["pgid"]),  # type: ignore[call-overload]
                port=None if data.get("port") is None else int(data["port"]),  # type: ignore[call-overload]
                url=str(data["url"]),
                health_url=str(data["health_url"]),
                command=tuple(str(a) for a in data["command"]),  # type: ignore[attr-defined]
                started=str(data["started"]),
                create_time=float(data["create_time"]),  # type: ignore[arg-type]
                log=str(data["log"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFileError(f"malformed component record ({type(exc).__name__}: {exc})") from exc


# ------------------------------------------------------------------------------------------------ state file
def write_state(path: Path, records: Sequence[ProcessRecord]) -> None:
    """Write the state JSON atomically (temporary file in the same directory, fsync, :func:`os.replace`)."""
    payload = {"version": STATE_VERSION, "components": [r.to_json() for r in records]}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def read_state(path: Path) -> list[ProcessRecord]:
    """The records of a state file, in start order.

    Raises:
        StateFileError: missing file, invalid JSON, another layout version or a malformed record.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StateFileError(f"no stack state at {path}") from exc
    except (OSError, ValueError) as exc:
        raise StateFileError(f"unreadable stack state {path} ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise StateFileError(f"{path} is not a version-{STATE_VERSION} stack state")
    components = data.get("components")
    if not isinstance(components, list):
        raise StateFileError(f"{path} has no component list")
    return [ProcessRecord.from_json(c) for c in components]


# ---------------------------------------------------------------------------------------------- processes
def spawn(
    name: str,
    command: Sequence[str],
    *,
    log_path: Path,
    health_url: str,
    url: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start ``command`` in a new session (its own process group), stdout and stderr appended to ``log_path``.

    Returns the record to store and the :class:`subprocess.Popen` (to notice an early exit while waiting).

    Raises:
        StackStartError: the executable could not be started (missing, not executable).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(a) for a in command]
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackStartError(name, f"cannot execute {argv[0]} ({exc.strerror or exc})") from exc
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # exited at once: keep a record that can never match a live process
        create_time = 0.0
    record = ProcessRecord(
        name=name,
        pid=proc.pid,
        pgid=proc.pid,
        port=port,
        url=url,
        health_url=health_url,
        command=tuple(argv),
        started=started,
        create_time=create_time,
        log=str(log_path),
    )
    return record, proc


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of this process (no-op otherwise)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_recorded_process(record: ProcessRecord) -> bool:
    """Whether ``record.pid`` is still the process the stack started: alive (not a zombie), with exactly the
    recorded command line (``/proc/PID/cmdline``) and the recorded start time."""
    _reap(record.pid)
    for attempt in range(3):
        try:
            proc = psutil.Process(record.pid)
            if not _alive(proc):
                return False
            cmdline = tuple(proc.cmdline())
            create_time = proc.create_time()
        except psutil.Error:
            return False
        if abs(create_time - record.create_time) > _CREATE_TIME_TOLERANCE_S:
            return False  # another process: never signal it
        if cmdline == record.command:
            return True
        # Same process (same start time) but an empty or transient command line: /proc/PID/cmdline can be
        # read mid-exec on a loaded machine. Look again before calling it foreign.
        time.sleep(0.05 * (attempt + 1))
    return False


def group_members(record: ProcessRecord) -> list[int]:
    """Live PIDs of the recorded process group: processes whose pgid **and** session id are the recorded
    ones, started no earlier than the leader (the kernel does not hand out a PID that is still some group's
    pgid, so while any member lives, the group number cannot belong to another stack)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != record.pgid or os.getsid(proc.pid) != record.pgid:
                continue
            if proc.create_time() + _CREATE_TIME_TOLERANCE_S < record.create_time:
                continue
            _reap(proc.pid)
            if _alive(proc):
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return sorted(members)


def descendants(record: ProcessRecord) -> list[psutil.Process]:
    """Live descendants of the recorded leader (empty unless :func:`is_recorded_process`).

    Some components put helpers in sessions of their own (BentoML's arbiter starts each worker with
    ``setsid``), out of reach of the group signal; they are tracked as :class:`psutil.Process` objects, whose
    ``kill`` / ``is_running`` compare the start time, so a recycled PID is never signalled either."""
    if not is_recorded_process(record):
        return []
    try:
        return [p for p in psutil.Process(record.pid).children(recursive=True) if _alive(p)]
    except psutil.Error:
        return []


def _remaining(tree: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``tree`` still running (exited children of ours are reaped)."""
    left = []
    for proc in tree:
        _reap(proc.pid)
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and _alive(proc):
                left.append(proc)
    return left


def _wait_gone(
    record: ProcessRecord, tree: list[psutil.Process], timeout_s: float, poll_s: float = 0.05
) -> bool:
    """Whether the group and every process of ``tree`` exited within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not group_members(record) and not _remaining(tree):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def stop_record(
    record: ProcessRecord, *, timeout_s: float = 15.0, kill_timeout_s: float = 5.0
) -> StopOutcome:
    """Stop one component: SIGTERM to its process group, wait up to ``timeout_s`` until every member and
    every descendant the leader had (:func:`descendants`) is gone, then SIGKILL the group and the remaining
    descendants and wait up to ``kill_timeout_s``.

    The group is signalled only when its leader is still the recorded process (:func:`is_recorded_process`),
    or, the leader having exited, when members of the recorded session remain (:func:`group_members`). A PID
    now used by another process is left alone (:attr:`StopOutcome.FOREIGN`).

    Raises:
        StackError: something survived SIGKILL (e.g. a process in uninterruptible sleep).
    """
    if not is_recorded_process(record):
        with contextlib.suppress(psutil.Error):
            if _alive(psutil.Process(record.pid)):
                # The PID is alive with another command line or start time: it was reused.
                return StopOutcome.FOREIGN
    tree = descendants(record)
    if not group_members(record) and not _remaining(tree):
        return StopOutcome.NOT_RUNNING
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pgid, signal.SIGTERM)
    if _wait_gone(record, tree, timeout_s):
        return StopOutcome.STOPPED
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pgid, signal.SIGKILL)
    for proc in _remaining(tree):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if _wait_gone(record, tree, kill_timeout_s):
        return StopOutcome.KILLED
    raise StackError(f"{record.name}: process group {record.pgid} survived SIGKILL")


def stop_all(
    records: Sequence[ProcessRecord],
    *,
    timeout_s: float = 15.0,
    kill_timeout_s: float = 5.0,
    on_stop: Callable[[ProcessRecord, StopOutcome], None] | None = None,
) -> list[tuple[ProcessRecord, StopOutcome]]:
    """Stop every recorded component in **reverse start order** and return what happened to each.

    A component whose group survives SIGKILL does not prevent stopping the others: the first such error is
    raised after all were tried.
    """
    results: list[tuple[ProcessRecord, StopOutcome]] = []
    error: StackError | None = None
    for record in reversed(records):
        try:
            outcome = stop_record(record, timeout_s=timeout_s, kill_timeout_s=kill_timeout_s)
        except StackError as exc:
            error = error or exc
            continue
        results.append((record, outcome))
        if on_stop is not None:
            on_stop(record, outcome)
    if error is not None:
        raise error
    return results


# ------------------------------------------------------------------------------------------------- health
def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200 (any connection error, timeout or other status: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path | str, max_chars: int = 4000) -> str:
    """The last ``max_chars`` characters of a log file ("" when missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * max_chars))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


@dataclass
class _Pending:
    record: ProcessRecord
    proc: subprocess.Popen[bytes] | None
    done: bool = field(default=False)


def wait_healthy(
    components: Iterable[tuple[ProcessRecord, subprocess.Popen[bytes] | None]],
    *,
    timeout_s: float,
    poll_s: float = 0.25,
    check: Callable[[str], bool] = http_ok,
) -> None:
    """Wait until every component's ``health_url`` answers 200, all within one bounded ``timeout_s``.

    Raises:
        StackStartError: a component exited first (its exit status and log tail), or was not healthy in time.
    """
    pending = [_Pending(r, p) for r, p in components]
    deadline = time.monotonic() + timeout_s
    while True:
        for item in pending:
            if item.done:
                continue
            code = item.proc.poll() if item.proc is not None else None
            if code is not None:
                raise StackStartError(
                    item.record.name,
                    f"exited with status {code} before it was healthy",
                    log_tail(item.record.log),
                )
            if item.proc is None and not is_recorded_process(item.record):
                raise StackStartError(item.record.name, "is no longer running", log_tail(item.record.log))
            item.done = check(item.record.health_url)
        if all(item.done for item in pending):
            return
        if time.monotonic() >= deadline:
            late = next(item for item in pending if not item.done)
            raise StackStartError(
                late.record.name,
                f"not healthy after {timeout_s:.0f} s ({late.record.health_url})",
                log_tail(late.record.log),
            )
        time.sleep(poll_s)
