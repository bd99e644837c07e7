"""The DICOM listener: a Storage SCP (pynetdicom) that runs inference on every radiograph a PACS sends and
pushes the AI results back (docs/serving.md, "PACS integration").

* Accepts C-ECHO (Verification) and C-STORE of Computed Radiography Image Storage and Digital X-Ray Image
  Storage (For Presentation and For Processing), in the transfer syntaxes of :data:`TRANSFER_SYNTAXES`; any
  other SOP class is rejected at association negotiation (presentation context result "abstract syntax not
  supported"), so the PACS never sends it.
* Every received image goes through the serving pipeline in-process (:func:`serving.results.analyse`:
  ingest, model, Grad-CAM from the graph, the Structured Report and the saliency Segmentation, optionally the
  Secondary Capture) and the objects go to the push spool (:mod:`serving.push`), which delivers them to the
  configured destination. The C-STORE answers Success (0000) only once the results are spooled.
* Bounded concurrency: at most ``dimse.max_concurrent`` images are processed at once; a C-STORE waits up to
  ``dimse.wait_s`` for a slot, then gets A700 (Out of Resources) and the PACS retries later; A700 too when the
  push spool is full. An image the ingest refuses gets C000 (Cannot understand) with the ingest error code as
  Error Comment; a failure of the pipeline gets 0110 (Processing failure). Neither carries PHI; the listener
  stays up.

Run it: ``python -m serving.dimse`` (settings from ``MIMICRY_SERVE_*`` as for the HTTP service, e.g.
``MIMICRY_SERVE_DIMSE__PORT=11112 MIMICRY_SERVE_PUSH__KIND=dimse MIMICRY_SERVE_PUSH__AE_TITLE=ORTHANC
MIMICRY_SERVE_PUSH__PORT=4242 MIMICRY_SERVE_UID_SECRET=...``), or :func:`serve_dimse` from the CLI.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

from mimicry.dicom import DicomIngestError
from mimicry.dicom.results import ResultsError
from mimicry.registry import Registry
from serving import pipeline
from serving.push import PushQueue, QueueFull
from serving.results import analyse
from serving.settings import ServeSettings, load_serve_settings

__all__ = ["ACCEPTED_SOP_CLASSES", "TRANSFER_SYNTAXES", "DimseListener", "echo", "main", "serve_dimse"]

logger = logging.getLogger(__name__)

#: Storage SOP classes accepted (everything else is rejected at association negotiation).
ACCEPTED_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
#: Transfer syntaxes offered for them (those :func:`mimicry.dicom.read_dicom` decodes).
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

RECEIVED = Counter(
    "mimicry_dimse_stores_total", "C-STORE requests answered by the DICOM listener.", ["status"]
)
SECONDS = Histogram(
    "mimicry_dimse_processing_seconds",
    "Time from a C-STORE to its answer (inference, explanation and result objects).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


@dataclass
class DimseListener:
    """A running listener: the model, the push queue and the pynetdicom server (``shutdown()`` stops it)."""

    settings: ServeSettings
    model: pipeline.ServedModel
    push: PushQueue | None
    server: Any = None
    _slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.settings.dimse.max_concurrent)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def handle_store(self, event: Any) -> Dataset | int:
        """EVT_C_STORE: process one image and answer its status (module docstring)."""
        cfg = self.settings.dimse
        n_objects = 3 if cfg.secondary_capture else 2
        if self.push is not None and self.push.room() < n_objects:
            RECEIVED.labels(status="out_of_resources").inc()
            return _status(OUT_OF_RESOURCES, "result spool full")
        if not self._slots.acquire(timeout=cfg.wait_s):
            RECEIVED.labels(status="out_of_resources").inc()
            return _status(OUT_OF_RESOURCES, "busy")
        try:
            with SECONDS.time():
                data = event.encoded_dataset()
                objects = analyse(
                    data,
                    self.model,
                    self.settings,
                    method=cfg.method,
                    threshold=cfg.segmentation_threshold,
                    secondary_capture=cfg.secondary_capture,
                )
                if self.push is not None:
                    self.push.put(objects.part10())
        except DicomIngestError as exc:
            RECEIVED.labels(status="cannot_understand").inc()
            return _status(CANNOT_UNDERSTAND, f"refused: {exc.code}")
        except ResultsError:
            RECEIVED.labels(status="cannot_understand").inc()
            return _status(CANNOT_UNDERSTAND, "refused: missing identifying UIDs")
        except QueueFull:
            RECEIVED.labels(status="out_of_resources").inc()
            return _status(OUT_OF_RESOURCES, "result spool full")
        except Exception as exc:  # the listener stays up; the type only (no PHI: no message) goes to the log
            logger.error("C-STORE processing failed (%s)", type(exc).__name__)
            RECEIVED.labels(status="processing_failure").inc()
            return _status(PROCESSING_FAILURE, "processing failure")
        finally:
            self._slots.release()
        RECEIVED.labels(status="success").inc()
        if self.push is None:
            logger.info("results built; no push destination configured (push.kind: none)")
        return SUCCESS

    def shutdown(self) -> None:
        """Stop accepting associations and the push thread (spooled objects stay)."""
        if self.server is not None:
            self.server.shutdown()
        if self.push is not None:
            self.push.stop()


def _ae(settings: ServeSettings) -> AE:
    cfg = settings.dimse
    ae = AE(ae_title=cfg.ae_title)
    ae.maximum_associations = cfg.max_associations
    for sop in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    return ae


def serve_dimse(settings: ServeSettings | None = None, *, block: bool = True) -> DimseListener:
    """Load the first configured model, start the push thread and listen on ``dimse.host:dimse.port``.

    Args:
        settings: Serving settings (default: :func:`serving.settings.load_serve_settings`).
        block: Serve in this thread until interrupted (``False``: in the background; call
            :meth:`DimseListener.shutdown`).
    """
    settings = settings if settings is not None else load_serve_settings()
    # pynetdicom logs identifiers (SOP Instance UIDs, AE titles) and, at DEBUG, whole datasets: warnings only
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one INFO line per copied module otherwise
    registry = Registry(settings.registry)
    refs = pipeline.resolve_model_refs(registry, settings.models)
    if not refs:
        raise RuntimeError("the registry holds no model to serve")
    model = pipeline.load_served_model(registry, refs[0], settings)
    if settings.warmup:
        pipeline.warm_up(model)
    push = PushQueue.from_settings(settings.push)
    if push is not None:
        push.start()
    listener = DimseListener(settings, model, push)
    if settings.dimse.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.dimse.metrics_port, addr=settings.dimse.host)
    handlers = [(evt.EVT_C_STORE, listener.handle_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
    ae = _ae(settings)
    address = (settings.dimse.host, settings.dimse.port)
    logger.info("DICOM listener %s on %s:%d (model %s)", settings.dimse.ae_title, *address, model.card.ref)
    if block:
        try:
            ae.start_server(address, block=True, evt_handlers=handlers)
        finally:
            if push is not None:
                push.stop()
        return listener
    listener.server = ae.start_server(address, block=False, evt_handlers=handlers)
    return listener


def echo(settings: ServeSettings, *, host: str = "127.0.0.1", timeout_s: float = 5.0) -> bool:
    """C-ECHO the listener of ``settings`` (its port and AE title) on ``host``: True when it answers
    Success. The health check of a deployed listener (``python -m serving.dimse --echo``)."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    ae = AE(ae_title="MIMICRY-PROBE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, settings.dimse.port, ae_title=settings.dimse.ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return getattr(status, "Status", None) == SUCCESS


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.dimse``: the listener with the settings from the environment;
    ``python -m serving.dimse --echo``: exit 0 when the listener answers a C-ECHO, 1 otherwise."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args == ["--echo"]:
        return 0 if echo(load_serve_settings()) else 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_dimse(load_serve_settings(), block=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
