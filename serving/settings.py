"""Typed settings of the serving layer: configuration is typed and built once, at the edge (docs/serving.md).

Every field comes from, in decreasing priority: keyword arguments, environment variables with prefix
``MIMICRY_SERVE_`` (nested with ``__``, e.g. ``MIMICRY_SERVE_INGEST__MAX_PIXELS=20000000``,
``MIMICRY_SERVE_MODELS='["cxr-ee@production","cxr-base:2"]'``), an optional YAML file named by
``MIMICRY_SERVE_CONFIG`` (same field names), then the defaults below. The DICOM acceptance rules reuse
:class:`mimicry.settings.IngestSettings` unchanged.

``bentoml serve serving.service:MimicryService`` builds one :class:`ServeSettings` per worker process at
service start-up; :func:`mimicry_cli.commands.serve.serve_command` exports the CLI options as these
environment variables so that every worker sees the same configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mimicry.settings import IngestSettings

__all__ = ["CONFIG_ENV", "DimseSettings", "PushSettings", "ServeSettings", "load_serve_settings"]

#: Environment variable naming the optional YAML settings file.
CONFIG_ENV = "MIMICRY_SERVE_CONFIG"


class DimseSettings(BaseModel):
    """The DICOM listener (:mod:`serving.dimse`): a Storage SCP for CR/DX with C-ECHO."""

    ae_title: str = Field("MIMICRY", min_length=1, max_length=16, description="Our AE title.")
    host: str = Field("127.0.0.1", description="Listen address (0.0.0.0 in a container).")
    port: int = Field(11112, ge=1, le=65535, description="Listen port.")
    max_concurrent: int = Field(
        2, ge=1, description="Images processed at once; a C-STORE waits up to 'wait_s' for a slot."
    )
    wait_s: float = Field(
        30.0, gt=0, description="Longest wait of a C-STORE for a slot (then status A700, out of resources)."
    )
    max_associations: int = Field(10, ge=1, description="Simultaneous associations accepted.")
    method: str = Field("gradcam", description="Saliency method of the overlay of every received image.")
    segmentation_threshold: float = Field(
        0.5, ge=0, le=1, description="The Segmentation holds the saliency map >= this value (BINARY)."
    )
    secondary_capture: bool = Field(
        False, description="Also push the RGB overlay as a Secondary Capture (3 bytes a pixel: large)."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve the listener's Prometheus /metrics on this port (None: off)."
    )


class PushSettings(BaseModel):
    """Where result objects are sent (:mod:`serving.push`)."""

    kind: Literal["none", "stow", "dimse"] = Field("none", description="Destination ('none': no push).")
    url: str | None = Field(None, description="STOW-RS: DICOMweb service root (no /studies).")
    token: SecretStr | None = Field(None, description="STOW-RS: bearer token (Authorization header).")
    username: str | None = Field(None, description="STOW-RS: HTTP basic auth user (with 'password').")
    password: SecretStr | None = Field(None, description="STOW-RS: HTTP basic auth password.")
    ae_title: str = Field("PACS", min_length=1, max_length=16, description="C-STORE peer: its AE title.")
    host: str = Field("127.0.0.1", description="C-STORE peer: host.")
    port: int = Field(104, ge=1, le=65535, description="C-STORE peer: port.")
    calling_ae_title: str = Field("MIMICRY", min_length=1, max_length=16, description="Our AE title as SCU.")
    spool_dir: Path = Field(Path("spool/push"), description="Objects not yet delivered (survives restarts).")
    max_queued: int = Field(10_000, ge=1, description="Most objects spooled; beyond, results are refused.")
    attempts: int = Field(3, ge=1, description="Tries per object before it is left in the spool for later.")
    backoff_s: float = Field(1.0, gt=0, description="First wait between tries (doubles up to max_backoff_s).")
    max_backoff_s: float = Field(60.0, gt=0, description="Longest wait between tries / outage rechecks.")
    timeout_s: float = Field(30.0, gt=0, description="Network timeout of one send.")


class ServeSettings(BaseSettings):
    """Settings of ``mimicry serve`` / :class:`serving.service.MimicryService`."""

    model_config = SettingsConfigDict(
        env_prefix="MIMICRY_SERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    registry: Path = Field(Path("registry"), description="Registry root (a Triton model repository).")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Model references to serve (NAME, NAME:VERSION or NAME@ALIAS). Empty: the latest version of "
            "every model in the registry. The first one is the default model of the endpoints."
        ),
    )
    backend: Literal["onnxruntime", "triton"] = Field("onnxruntime", description="Inference backend.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "'auto': CUDA when onnxruntime offers CUDAExecutionProvider (and torch sees a GPU for the "
            "twin), CPU otherwise; 'cuda' fails start-up when CUDA is missing."
        ),
    )
    api_token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token required on every endpoint except health, metrics and OpenAPI (RFC 6750). None: "
            "no authentication (bind to 127.0.0.1 or put the service behind an authenticating proxy)."
        ),
    )
    max_request_bytes: int = Field(
        64 * 2**20,
        gt=0,
        description="Largest request body accepted (413 beyond, checked while reading); for STOW-RS the "
        "largest instance (each larger part fails with 0xA700, the others are processed).",
    )
    max_batch_size: int = Field(32, ge=1, description="Adaptive batching: largest batch sent to a backend.")
    max_latency_ms: int = Field(
        10_000, ge=1, description="Adaptive batching: longest a request may wait (503 'overloaded' beyond)."
    )
    max_concurrent_decodes: int = Field(
        1,
        ge=1,
        description=(
            "Admission control, per worker: DICOM bodies decoded and preprocessed at once (the full-size "
            "pixel arrays of a film are what costs memory). 1 per worker fits a 2-core pod running the "
            "default 2 workers; raise it with the cores per worker."
        ),
    )
    max_queued: int = Field(
        16,
        ge=0,
        description=(
            "Admission control, per worker: requests admitted beyond 'max_concurrent_decodes' (each holds "
            "at most 'max_request_bytes' of body while it waits). A request arriving when all are taken is "
            "refused before its body is read: 503 'overloaded' with Retry-After."
        ),
    )
    malloc_arena_max: int = Field(
        2,
        ge=0,
        description=(
            "glibc malloc arenas per worker (mallopt M_ARENA_MAX, set at start-up): fewer arenas keep less "
            "freed memory per decode thread (docs/benchmarks.md, serving memory). 0: glibc's default "
            "(8 per core)."
        ),
    )
    malloc_trim_bytes: int = Field(
        2**20,
        ge=0,
        description=(
            "After a request whose body is at least this large, hand freed heap memory back to the "
            "operating system (glibc malloc_trim; docs/benchmarks.md, serving memory). 0: never."
        ),
    )
    request_timeout_s: float | None = Field(
        600.0,
        gt=0,
        description="Longest a request may run (504 'request_timeout' beyond); cancelled when it ends. "
        "None: no limit.",
    )
    warmup: bool = Field(True, description="Run one dummy batch per model before /readyz turns true.")
    ood_z_threshold: float = Field(
        4.0,
        gt=0,
        description=(
            "An input is flagged out-of-distribution when its image statistics lie more than this many "
            "reference standard deviations from the card's reference_stats."
        ),
    )
    default_abstain_entropy: float | None = Field(
        None,
        ge=0,
        description="Abstention threshold (nats) for models whose card has no 'uncertainty' section.",
    )
    ensemble_disagreement: bool = Field(
        True,
        description=(
            "For ensembles (card architecture 'ensemble'), report the disagreement between sub-models on "
            "every prediction. The registry's ONNX graph has no per-member outputs, so the members' "
            "probabilities come from a dedicated copy of the torch twin, run on each adaptive batch "
            "(about one more ensemble forward per batch); False skips it (disagreement: null)."
        ),
    )
    default_abstain_disagreement: float | None = Field(
        None,
        ge=0,
        description=(
            "Abstention threshold (nats) on the ensemble mutual information, for ensembles whose card has "
            "no 'uncertainty.disagreement_threshold'. None: disagreement is reported but never abstains."
        ),
    )
    explain_methods: list[str] | None = Field(
        None, description="Saliency methods offered by /v1/explain (None: every registered method)."
    )
    saliency_device: str | None = Field(None, description="Torch device of the twin (None: from 'device').")
    triton_url: str = Field("127.0.0.1:8000", description="Triton endpoint host:port (no scheme).")
    triton_protocol: Literal["http", "grpc"] = Field("http", description="tritonclient protocol.")
    triton_timeout_s: float = Field(10.0, gt=0, description="Per-request timeout towards Triton.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After (seconds) sent with 503 answers.")
    workers: int = Field(
        2,
        ge=1,
        description=(
            "BentoML worker processes when the launch does not set a count (the container's bentoml serve). "
            "2: a worker that crashes or is restarted leaves another serving while the arbiter replaces it "
            "(its in-flight requests are lost and must be retried). Each worker holds its own copy of the "
            "models (and of the torch twin), so memory grows with the count."
        ),
    )
    probe_interval_s: float = Field(
        1.0, gt=0, description="Background readiness probe of every backend: seconds between probes."
    )
    probe_timeout_s: float = Field(
        1.0, gt=0, description="Deadline of one readiness probe (a backend slower than this is not ready)."
    )
    breaker_fail_max: int = Field(
        3, ge=1, description="Consecutive backend failures (unreachable, deadline) that open its breaker."
    )
    breaker_reset_s: float = Field(
        5.0, gt=0, description="Seconds an open breaker refuses calls before letting one trial through."
    )
    integrity_interval_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds between checks of the served registry artifacts (stat; sha256 re-verified on change). "
            "A model whose artifacts no longer match its card is not ready and refuses requests."
        ),
    )
    integrity_rehash_s: float = Field(
        3600.0,
        ge=0,
        description="Seconds between full sha256 re-verifications even without a visible change (0: never).",
    )
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    uid_secret: SecretStr | None = Field(
        None,
        description=(
            "Key of every UID derived for result objects (Structured Report, Segmentation, Secondary "
            "Capture) and of the de-identified study mapping: set the same value on every worker and replica "
            "(MIMICRY_SERVE_UID_SECRET, from a Secret). None: the ingest uid_salt stands in (random per "
            "process unless set), so results of different processes land in different series/studies."
        ),
    )
    results_study: Literal["original", "deidentified"] = Field(
        "original",
        description=(
            "Study of the result objects: 'original' (the source's Study Instance UID, filed beside the "
            "image) or 'deidentified' (the de-identified copy of the study, keyed by uid_secret)."
        ),
    )
    dimse: DimseSettings = Field(default_factory=DimseSettings)
    push: PushSettings = Field(default_factory=PushSettings)

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """Accept a JSON list or a comma-separated string (``MIMICRY_SERVE_MODELS=a,b@prod``)."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_ENV)
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def load_serve_settings(**overrides: Any) -> ServeSettings:
    """Build the settings once, at the edge (service start-up, CLI).

    Raises:
        pydantic.ValidationError: an invalid value (the message names the field, never a secret).
        FileNotFoundError: ``MIMICRY_SERVE_CONFIG`` names a missing file.
    """
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"{CONFIG_ENV} names a file that does not exist")
    return ServeSettings(**overrides)
