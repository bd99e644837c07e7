"""Typed settings of the serving layer: configuration is typed and built once, at the edge (docs/serving.md).

Every field comes from, in decreasing priority: keyword arguments, environment variables with prefix
``MIMICRY_SERVE_`` (nested with ``__``, e.g. ``MIMICRY_SERVE_INGEST__MAX_PIXELS=20000000``,
``MIMICRY_SERVE_MODELS='["cxr-ee@production","cxr-base:2"]'``), an optional YAML file named by
``MIMICRY_SERVE_CONFIG`` (same field names), then the defaults below. The DICOM acceptance rules reuse
:class:`mimicry.settings.IngestSettings` unchanged.

``bentoml serve serving.service:MimicryService`` builds one :class:`ServeSettings` per worker process at
service start-up; :func:`mimicry.commands.serve.serve_command` exports the CLI options as these environment
variables so that every worker sees the same configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mimicry.settings import IngestSettings

__all__ = ["CONFIG_ENV", "ServeSettings", "load_serve_settings"]

#: Environment variable naming the optional YAML settings file.
CONFIG_ENV = "MIMICRY_SERVE_CONFIG"


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
    ingest: IngestSettings = Field(default_factory=IngestSettings)

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
