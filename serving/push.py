"""Push result objects to a destination (a PACS), surviving its outages (docs/serving.md, "PACS integration").

:class:`PushQueue` spools every object to disk first (``spool_dir``, one Part 10 file per SOP Instance UID,
written atomically), then a background thread sends the spool oldest first to the destination:

* :class:`StowDestination`: DICOMweb STOW-RS with dicomweb-client (optional bearer token or basic auth);
* :class:`DimseDestination`: C-STORE to a peer AE with pynetdicom.

Each object is tried ``attempts`` times with exponential back-off (tenacity); when they all fail, the object
stays in the spool and the thread waits (back-off up to ``max_backoff_s``) before trying the oldest object
again, so a destination outage loses nothing and a restart resends what is spooled. The spool is bounded
(``max_queued``): :meth:`PushQueue.put` raises :class:`QueueFull` beyond it, and the caller refuses new work.
Result UIDs are deterministic, so a resend after an ambiguous failure replaces the object, never duplicates.

Prometheus: ``mimicry_push_sent_total``, ``mimicry_push_failed_total`` (send attempts that failed) and
``mimicry_push_queued`` (objects in the spool), labelled by destination kind only.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import pydicom
from prometheus_client import Counter, Gauge
from pydicom.dataset import Dataset
from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

from serving.settings import PushSettings

__all__ = [
    "Destination",
    "DimseDestination",
    "PushError",
    "PushQueue",
    "QueueFull",
    "StowDestination",
    "build_destination",
    "shared_queue",
]

logger = logging.getLogger(__name__)

SENT = Counter("mimicry_push_sent_total", "Result objects delivered to the destination.", ["destination"])
FAILED = Counter("mimicry_push_failed_total", "Failed attempts to deliver a result object.", ["destination"])
QUEUED = Gauge("mimicry_push_queued", "Result objects spooled, not yet delivered.", ["destination"])


class PushError(RuntimeError):
    """The destination did not accept an object (message without PHI)."""


class QueueFull(RuntimeError):
    """The spool holds ``max_queued`` objects: new results are refused until it drains."""


class Destination(Protocol):
    kind: str

    def send(self, ds: Dataset) -> None:
        """Deliver one object or raise (any exception counts as a failed attempt)."""


class StowDestination:
    """DICOMweb STOW-RS (``POST {url}/studies``) through dicomweb-client."""

    kind = "stow"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if username is not None:
            session.auth = (username, password or "")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._timeout = timeout_s
        self._client = DICOMwebClient(url=url, session=session, headers=headers)
        session.request = _with_timeout(session.request, timeout_s)  # type: ignore[method-assign]

    def send(self, ds: Dataset) -> None:
        result = self._client.store_instances(datasets=[ds])
        failed = result.get("FailedSOPSequence") if result is not None else None
        if failed:
            reason = failed[0].get("FailureReason")
            raise PushError(f"STOW-RS refused the object (failure reason {reason})")


def _with_timeout(request: Any, timeout_s: float) -> Any:
    """``requests.Session.request`` with a default timeout."""

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout_s)
        return request(*args, **kwargs)

    return call


class DimseDestination:
    """C-STORE to a peer AE (one association per object)."""

    kind = "dimse"

    def __init__(
        self,
        ae_title: str,
        host: str,
        port: int,
        *,
        calling_ae_title: str = "MIMICRY",
        timeout_s: float = 30.0,
    ) -> None:
        self.ae_title, self.host, self.port = ae_title, host, port
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s

    def send(self, ds: Dataset) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise PushError(f"association with {self.ae_title} refused or failed")
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        if code is None or (code != 0x0000 and (code & 0xF000) != 0xB000):
            raise PushError(f"C-STORE status {'none' if code is None else hex(code)}")


def build_destination(settings: PushSettings) -> Destination | None:
    """The destination the settings name (``None`` for ``kind: none``)."""
    if settings.kind == "none":
        return None
    if settings.kind == "stow":
        if not settings.url:
            raise ValueError("push.url is required for kind 'stow'")
        return StowDestination(
            settings.url,
            token=None if settings.token is None else settings.token.get_secret_value(),
            username=settings.username,
            password=None if settings.password is None else settings.password.get_secret_value(),
            timeout_s=settings.timeout_s,
        )
    return DimseDestination(
        settings.ae_title,
        settings.host,
        settings.port,
        calling_ae_title=settings.calling_ae_title,
        timeout_s=settings.timeout_s,
    )


class PushQueue:
    """A disk spool and the thread that empties it into ``destination`` (module docstring).

    Args:
        destination: Where objects go.
        spool_dir: The spool (created; objects left by an earlier process are sent first).
        max_queued: Most objects in the spool.
        attempts: Tries per object per round.
        backoff_s: First wait between tries.
        max_backoff_s: Longest wait (between tries and between rounds while the destination is down).
    """

    def __init__(
        self,
        destination: Destination,
        spool_dir: Path,
        *,
        max_queued: int = 10_000,
        attempts: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.destination = destination
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.max_queued = max_queued
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._label = destination.kind
        QUEUED.labels(destination=self._label).set(len(self.pending()))

    @classmethod
    def from_settings(cls, settings: PushSettings) -> PushQueue | None:
        dest = build_destination(settings)
        if dest is None:
            return None
        return cls(
            dest,
            settings.spool_dir,
            max_queued=settings.max_queued,
            attempts=settings.attempts,
            backoff_s=settings.backoff_s,
            max_backoff_s=settings.max_backoff_s,
        )

    # ------------------------------------------------------------------ spool

    def pending(self) -> list[Path]:
        """Spooled objects, oldest first."""
        found = []
        for path in self.spool.glob("*.dcm"):
            try:
                found.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # sent meanwhile
                continue
        return [path for *_, path in sorted(found)]

    def room(self) -> int:
        """How many more objects the spool takes."""
        return max(0, self.max_queued - len(self.pending()))

    def put(self, objects: Iterable[bytes]) -> None:
        """Spool Part 10 objects (all or none) and wake the sender.

        Raises:
            QueueFull: they would not fit.
            ValueError: an object is not DICOM with a SOP Instance UID.
        """
        items = []
        for data in objects:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
            if not uid or "/" in uid:
                raise ValueError("result object without a valid SOP Instance UID")
            items.append((uid, data))
        with self._lock:
            if len(items) > self.room():
                raise QueueFull(f"push spool full ({self.max_queued} objects)")
            for uid, data in items:
                self._seq += 1
                tmp = self.spool / f".{uid}.{os.getpid()}.{self._seq}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, self.spool / f"{uid}.dcm")  # a resend of the same object replaces it
            QUEUED.labels(destination=self._label).set(len(self.pending()))
        self._wake.set()

    # ------------------------------------------------------------------ sending

    def _send_one(self, path: Path) -> bool:
        try:
            ds = pydicom.dcmread(path)
        except FileNotFoundError:  # another process sharing the spool (an HTTP worker) delivered it
            return True
        except Exception as exc:  # not readable as DICOM: set aside, the queue keeps moving
            logger.error("spooled object unreadable (%s); moved to *.bad", type(exc).__name__)
            os.replace(path, path.with_suffix(".bad"))
            return True

        def attempt() -> None:
            try:
                self.destination.send(ds)
            except Exception:
                FAILED.labels(destination=self._label).inc()
                raise

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            reraise=False,
        )
        try:
            retrying(attempt)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            logger.warning("push to %s failed (%s); object stays spooled", self._label, type(cause).__name__)
            return False
        path.unlink(missing_ok=True)
        SENT.labels(destination=self._label).inc()
        QUEUED.labels(destination=self._label).set(len(self.pending()))
        return True

    def drain(self) -> int:
        """Send the spool once, oldest first, stopping at the first object that still fails (the destination
        is down: later objects would fail too). Returns how many were delivered."""
        sent = 0
        for path in self.pending():
            if self._stop.is_set():
                break
            if not path.exists():
                continue
            if not self._send_one(path):
                break
            sent += 1
        return sent

    def _run(self) -> None:
        wait = self.backoff_s
        while not self._stop.is_set():
            self._wake.clear()
            self.drain()
            if self.pending():
                self._stop.wait(wait)  # destination down: recheck with a growing pause
                wait = min(wait * 2, self.max_backoff_s)
            else:
                wait = self.backoff_s
                self._wake.wait(self.max_backoff_s)

    def start(self) -> PushQueue:
        """Start the sender thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mimicry-push", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the sender thread (spooled objects stay for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait_empty(self, timeout_s: float) -> bool:
        """Block until the spool is empty or ``timeout_s`` passed; True when empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.pending():
                return True
            time.sleep(0.05)
        return not self.pending()


_shared: dict[Path, PushQueue] = {}
_shared_lock = threading.Lock()


def shared_queue(settings: PushSettings) -> PushQueue | None:
    """The push queue of this process for ``settings`` (created and started on first use; ``None`` for
    ``kind: none``). The HTTP service's workers each hold one on the same spool directory: an object is
    spooled by the worker that built it and delivered by whichever sender finds it first (result UIDs are
    deterministic, so a rare double delivery replaces the object)."""
    if settings.kind == "none":
        return None
    key = Path(settings.spool_dir).resolve()
    with _shared_lock:
        queue = _shared.get(key)
        if queue is None:
            queue = PushQueue.from_settings(settings)
            assert queue is not None
            _shared[key] = queue
        return queue.start()
