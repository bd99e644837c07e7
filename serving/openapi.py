"""The service's OpenAPI 3 document at ``GET /docs.json``: BentoML's own spec plus the mounted routes.

How BentoML 1.4.39 builds it (``_bentoml_sdk/service/openapi.py::generate_spec``, served by
``_bentoml_impl/server/app.py::openapi_spec_view`` as ``service.openapi_spec.asdict()``): the infra
endpoints (``/healthz``, ``/livez``, ``/readyz``, ``/metrics``), every ``@bentoml.api`` route, and the
paths of mounted ASGI apps **only when they are FastAPI apps** (``fastapi.openapi.utils.get_openapi``). The
Starlette app of :mod:`serving.http` therefore contributes nothing by itself (FastAPI is not a dependency).

:func:`install_openapi` gives the service object a subclass of its class whose ``openapi_spec`` property
returns BentoML's document extended by :func:`extend_spec`: the mounted routes (``/v1/predict``,
``/v1/explain``, ``/v1/models``, ``/dicomweb/studies``) with their parameters, request bodies
(``application/dicom``, ``application/octet-stream``, ``multipart/form-data``, ``multipart/related``) and
responses (JSON schemas, ``image/png``, ``application/dicom``, ``application/dicom+json``, and RFC 9457
``application/problem+json``), ``/readyz`` details, and the optional bearer scheme (RFC 6750). The same
property feeds ``bentoml build`` (``apis/openapi.yaml``). Paths and operations are plain dicts in the
attrs ``OpenAPISpecification`` (as BentoML's own API routes are), so any OpenAPI 3.0 member is allowed.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["extend_spec", "install_openapi", "mounted_components", "mounted_paths"]

logger = logging.getLogger(__name__)

_REF = "#/components/schemas/"
_PROBLEM = "application/problem+json"
_TAG = "mimicry"
_SECURITY = [{"bearerAuth": []}, {}]  # bearer when a token is configured, none otherwise

_BINARY = {"type": "string", "format": "binary"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {_PROBLEM: {"schema": _ref("Problem")}}}
    if retry_after:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return out


_ERRORS_DICOM = {
    "400": _problem(
        "Malformed request or DICOM (`missing_dicom`, `not_dicom`, `truncated`, `unreadable`, "
        "`invalid_geometry`, `invalid_parameter`)."
    ),
    "401": _problem("Bearer token missing or wrong (`unauthorized`; only when a token is configured)."),
    "404": _problem("Model not served (`model_not_found`)."),
    "413": _problem(
        "Body over `max_request_bytes` (`request_too_large`) or image too large (`image_too_large`)."
    ),
    "415": _problem("Another Content-Type (`unsupported_media_type`)."),
    "422": _problem(
        "DICOM content not served (`unsupported_modality`, `no_pixel_data`, `multi_frame`, `colour_image`, "
        "`unsupported_transfer_syntax`)."
    ),
    "503": _problem("Not ready, backend unreachable or overloaded.", retry_after=True),
}


def _dicom_body(form_fields: dict[str, Any]) -> dict[str, Any]:
    dicom = {"schema": _BINARY}
    return {
        "required": True,
        "description": "One DICOM Part 10 instance (PS3.10), as the body or the multipart field `file`.",
        "content": {
            "application/dicom": dicom,
            "application/octet-stream": dicom,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": _BINARY, **form_fields},
                },
                "encoding": {"file": {"contentType": "application/dicom, application/octet-stream"}},
            },
        },
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_MODEL_PARAM = {"type": "string", "description": "NAME, NAME:VERSION or the configured reference."}
_EXPLAIN_FIELDS: dict[str, dict[str, Any]] = {
    "model": _MODEL_PARAM,
    "method": {"type": "string", "default": "gradcam", "description": "Saliency method (GET /v1/models)."},
    "target": {
        "type": "string",
        "default": "predicted",
        "description": "`predicted`, a class name or index.",
    },
    "format": {"type": "string", "enum": ["json", "png", "overlay", "dicom"], "default": "json"},
    "encoding": {"type": "string", "enum": ["png16", "float16"], "default": "png16"},
    "space": {"type": "string", "enum": ["source", "model"], "default": "source"},
    "params": {"type": "string", "description": "Method parameters as a JSON object."},
}


def mounted_paths() -> dict[str, dict[str, Any]]:
    """OpenAPI path items of the routes served by :mod:`serving.http` and the ``/readyz`` details."""
    predict = {
        "post": {
            "tags": [_TAG],
            "operationId": "mimicry__predict",
            "summary": "Predict one DICOM",
            "description": "Per-class probabilities in card order, predicted class, uncertainty (predictive "
            "entropy, ensemble disagreement, abstain, out-of-distribution), provenance, safe metadata.",
            "parameters": [_query("model", _MODEL_PARAM, "Served model (default: the first configured).")],
            "requestBody": _dicom_body({"model": _MODEL_PARAM}),
            "responses": {
                "200": {
                    "description": "The prediction.",
                    "content": {"application/json": {"schema": _ref("Prediction")}},
                },
                **_ERRORS_DICOM,
            },
            "security": _SECURITY,
        }
    }
    explain = {
        "post": {
            "tags": [_TAG],
            "operationId": "mimicry__explain",
            "summary": "Explain one DICOM",
            "description": "A saliency map of `target` by `method` (default `gradcam` from the ONNX `cam` "
            "output) as JSON, a PNG heatmap, an overlay, or a de-identified DICOM Secondary Capture.",
            "parameters": [_query(k, v, v.get("description", k)) for k, v in _EXPLAIN_FIELDS.items()],
            "requestBody": _dicom_body(_EXPLAIN_FIELDS),
            "responses": {
                "200": {
                    "description": "`format=json`: the map and the prediction; `png`/`overlay`: image/png; "
                    "`dicom`: a Secondary Capture (application/dicom).",
                    "content": {
                        "application/json": {"schema": _ref("Explanation")},
                        "image/png": {"schema": _BINARY},
                        "application/dicom": {"schema": _BINARY},
                    },
                },
                **_ERRORS_DICOM,
                "422": _problem(
                    "DICOM content not served, or `unknown_method` / `invalid_explanation_request`."
                ),
            },
            "security": _SECURITY,
        }
    }
    models = {
        "get": {
            "tags": [_TAG],
            "operationId": "mimicry__models",
            "summary": "Served models and their cards",
            "responses": {
                "200": {
                    "description": "The served models.",
                    "content": {"application/json": {"schema": _ref("ModelList")}},
                },
                "401": _ERRORS_DICOM["401"],
                "503": _ERRORS_DICOM["503"],
            },
            "security": _SECURITY,
        }
    }
    stow = {
        "post": {
            "tags": [_TAG, "DICOMweb"],
            "operationId": "mimicry__stow",
            "summary": "STOW-RS (PS3.18 §10.5): store instances, get predictions",
            "requestBody": {
                "required": True,
                "description": 'multipart/related; type="application/dicom"; one DICOM instance per part.',
                "content": {
                    "multipart/related": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "array", "items": _BINARY}},
                        },
                        "encoding": {"file": {"contentType": "application/dicom"}},
                    }
                },
            },
            "responses": {
                **{
                    code: {
                        "description": text,
                        "content": {"application/dicom+json": {"schema": _ref("StowResponse")}},
                    }
                    for code, text in (
                        ("200", "Every instance accepted."),
                        ("202", "Some instances failed."),
                        ("409", "Every instance failed."),
                    )
                },
                "400": _problem("Malformed multipart/related body (`invalid_parameter`)."),
                "401": _ERRORS_DICOM["401"],
                "413": _problem("Body over `max_request_bytes` (`request_too_large`)."),
                "415": _ERRORS_DICOM["415"],
                "503": _ERRORS_DICOM["503"],
            },
            "security": _SECURITY,
        }
    }
    readyz = {
        "get": {
            "tags": ["Infrastructure"],
            "operationId": "mimicry__readyz",
            "description": "200 once every model is loaded and warmed up and every backend answers; 503 with "
            "Retry-After otherwise.",
            "responses": {
                "200": {
                    "description": "Ready.",
                    "content": {"application/json": {"schema": _ref("Readiness")}},
                },
                "503": {
                    "description": "Not ready.",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    "content": {"application/json": {"schema": _ref("Readiness")}},
                },
            },
        }
    }
    return {
        "/v1/predict": predict,
        "/v1/explain": explain,
        "/v1/models": models,
        "/dicomweb/studies": stow,
        "/readyz": readyz,
    }


def _obj(properties: dict[str, Any], required: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, **kw}
    if required:
        out["required"] = required
    return out


_NUM = {"type": "number"}
_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}


def mounted_components() -> dict[str, dict[str, Any]]:
    """Component schemas of the mounted routes (``components.schemas``)."""
    model_info = _obj(
        {"name": _STR, "version": _INT, "sha256": _STR, "ref": _STR}, ["name", "version", "sha256"]
    )
    disagreement = _obj(
        {
            "measure": {"type": "string", "enum": ["mutual_information"]},
            "value": {**_NUM, "description": "Mutual information H(mean) − mean H(member), nats."},
            "mutual_information": _NUM,
            "mean_pairwise_tv": _NUM,
            "max_member_tv": _NUM,
            "members": _INT,
            "member_probabilities": {"type": "array", "items": {"type": "array", "items": _NUM}},
            "threshold": {**_NUM, "nullable": True},
            "threshold_source": {"type": "string", "enum": ["card", "settings", "none"]},
            "abstain": {**_BOOL, "nullable": True},
            "source": {"type": "string", "enum": ["twin", "backend"]},
        },
        ["measure", "value", "members"],
        nullable=True,
        description="Ensemble disagreement (null for a single model).",
    )
    uncertainty = _obj(
        {
            "predictive_entropy": _NUM,
            "normalized_entropy": _NUM,
            "abstain_threshold": {**_NUM, "nullable": True},
            "threshold_source": {"type": "string", "enum": ["card", "settings", "none"]},
            "abstain": {**_BOOL, "nullable": True},
            "abstain_reasons": {
                "type": "array",
                "items": {"type": "string", "enum": ["predictive_entropy", "disagreement"]},
            },
            "disagreement": _ref("Disagreement"),
            "ood": _obj(
                {"method": _STR, "statistic": _NUM, "z": _NUM, "threshold": _NUM, "ood": _BOOL}, nullable=True
            ),
        },
        ["predictive_entropy", "abstain"],
    )
    prediction = _obj(
        {
            "model": _ref("ModelInfo"),
            "probabilities": {"type": "object", "additionalProperties": _NUM},
            "class_names": {"type": "array", "items": _STR},
            "predicted_class": _STR,
            "predicted_index": _INT,
            "uncertainty": _ref("Uncertainty"),
            "instance": {"type": "object", "description": "PHI-free metadata (hashed SOP Instance UID)."},
            "intended_use": _STR,
            "timings_ms": {"type": "object", "additionalProperties": _NUM},
        },
        ["model", "probabilities", "predicted_class", "uncertainty"],
    )
    explanation = _obj(
        {
            "model": _ref("ModelInfo"),
            "method": _STR,
            "target": _obj({"class": _STR, "index": _INT}),
            "map": _obj(
                {
                    "encoding": {"type": "string", "enum": ["png16", "float16"]},
                    "data": {**_STR, "format": "byte"},
                    "scale": _INT,
                    "dtype": _STR,
                    "shape": {"type": "array", "items": _INT},
                    "space": {"type": "string", "enum": ["source", "model"]},
                },
                ["encoding", "data", "shape"],
            ),
            "indicators": _obj({"border_mass": _NUM, "entropy": _NUM}),
            "prediction": {"type": "object"},
            "timings_ms": {"type": "object", "additionalProperties": _NUM},
        },
        ["model", "method", "target", "map"],
    )
    problem = _obj(
        {
            "type": {**_STR, "format": "uri-reference"},
            "title": _STR,
            "status": _INT,
            "detail": _STR,
            "instance": {**_STR, "format": "uri-reference"},
            "code": {**_STR, "description": "Stable snake_case error code (docs/serving.md)."},
        },
        ["type", "title", "status", "code"],
        additionalProperties=True,
        description="RFC 9457 problem details.",
    )
    sop_ref = _obj(
        {
            "00081150": {"type": "object", "description": "Referenced SOP Class UID"},
            "00081155": {"type": "object", "description": "Referenced SOP Instance UID"},
            "00081197": {"type": "object", "description": "Failure Reason (US)"},
        }
    )
    seq = _obj({"vr": {"type": "string", "enum": ["SQ"]}, "Value": {"type": "array", "items": sop_ref}})
    stow = _obj(
        {
            "00081199": {**seq, "description": "Referenced SOP Sequence"},
            "00081198": {**seq, "description": "Failed SOP Sequence"},
            "mimicry": _obj({"predictions": {"type": "array", "items": {"type": "object"}}}),
        },
        description="DICOM JSON (PS3.18 F.2) STOW-RS response plus the `mimicry` predictions.",
    )
    model_entry = _obj(
        {
            "name": _STR,
            "version": _INT,
            "requested": _STR,
            "default": _BOOL,
            "backend": _STR,
            "provider": _STR,
            "sha256": _STR,
            "methods": {"type": "array", "items": _STR},
            "card": {"type": "object", "description": "The model card (mimicry.registry.ModelCard)."},
        },
        ["name", "version", "card"],
    )
    readiness = _obj(
        {
            "ready": _BOOL,
            "pid": _INT,
            "models": {
                "type": "array",
                "items": _obj(
                    {"name": _STR, "version": _INT, "backend": _STR, "provider": _STR, "ready": _BOOL}
                ),
            },
        },
        ["ready"],
    )
    return {
        "ModelInfo": model_info,
        "Disagreement": disagreement,
        "Uncertainty": uncertainty,
        "Prediction": prediction,
        "Explanation": explanation,
        "Problem": problem,
        "StowResponse": stow,
        "ModelList": _obj({"models": {"type": "array", "items": model_entry}}, ["models"]),
        "Readiness": readiness,
    }


def extend_spec(spec: Any) -> Any:
    """BentoML's ``OpenAPISpecification`` plus the mounted routes, schemas, tag and bearer scheme."""
    import attr

    components = dict(spec.components or {})
    components["schemas"] = {**dict(components.get("schemas") or {}), **mounted_components()}
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "Required on every route but health, metrics and OpenAPI when "
            "MIMICRY_SERVE_API_TOKEN is set.",
        }
    }
    from bentoml._internal.service.openapi.specification import PathItem, Tag

    paths = dict(spec.paths)
    for path, item in mounted_paths().items():
        paths[path] = PathItem(**item)
    tags = [
        *(spec.tags or []),
        Tag(name=_TAG, description="Predictions, explanations, models (serving.http)."),
    ]
    return attr.evolve(spec, paths=paths, components=components, tags=tags)


def install_openapi(service: Any) -> bool:
    """Make ``service.openapi_spec`` (and so ``GET /docs.json``) return :func:`extend_spec` of BentoML's.

    Swaps the service object's class for a slot-compatible subclass that overrides the property. Returns
    ``False`` (and logs) when this BentoML version's service class does not allow it.
    """
    base = type(service)
    if getattr(base, "__mimicry_openapi__", False):
        return True

    class _WithMountedOpenAPI(base):  # type: ignore[misc, valid-type]
        __slots__ = ()
        __mimicry_openapi__ = True

        @property
        def openapi_spec(self) -> Any:
            return extend_spec(super().openapi_spec)

    _WithMountedOpenAPI.__name__ = base.__name__
    _WithMountedOpenAPI.__qualname__ = base.__qualname__
    try:
        service.__class__ = _WithMountedOpenAPI
    except TypeError:
        logger.warning("OpenAPI: cannot extend %s; /docs.json lists BentoML's routes only", base.__name__)
        return False
    return True
