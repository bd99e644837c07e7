"""``GET /docs.json`` serves one complete OpenAPI 3 document: BentoML's routes plus the mounted ones.

The structural check below follows the OpenAPI 3.0.3 specification (Document, Paths, Operation,
Parameter, Request Body, Response and Reference objects); ``openapi-spec-validator`` is not installed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.routing import Route

from serving.http import create_app
from serving.openapi import mounted_paths

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PATH_ITEM_KEYS = HTTP_METHODS | {"$ref", "summary", "description", "servers", "parameters"}
OPERATION_KEYS = {
    "tags",
    "summary",
    "description",
    "externalDocs",
    "operationId",
    "parameters",
    "requestBody",
    "responses",
    "callbacks",
    "deprecated",
    "security",
    "servers",
}
STATUS = re.compile(r"^(default|[1-5](\d\d|XX))$")
PROBLEM = "application/problem+json"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"external $ref {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), f"unresolvable $ref {ref}"
        assert part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _walk_refs(doc: dict[str, Any], node: Any) -> int:
    count = 0
    if isinstance(node, dict):
        if "$ref" in node:
            _resolve(doc, node["$ref"])
            count += 1
        for value in node.values():
            count += _walk_refs(doc, value)
    elif isinstance(node, list):
        for value in node:
            count += _walk_refs(doc, value)
    return count


def _fields(obj: dict[str, Any]) -> set[str]:
    """Fixed fields of an OpenAPI object (``x-`` specification extensions are always allowed)."""
    return {k for k in obj if not k.startswith("x-")}


def check_openapi3(doc: dict[str, Any]) -> None:
    """Raise AssertionError when ``doc`` is not a structurally valid OpenAPI 3.0 document."""
    assert isinstance(doc.get("openapi"), str)
    assert re.match(r"^3\.0\.\d+$", doc["openapi"])
    assert isinstance(doc["info"]["title"], str)
    assert isinstance(doc["info"]["version"], str)
    assert isinstance(doc["paths"], dict)
    assert doc["paths"]
    schemes = (doc.get("components") or {}).get("securitySchemes", {})
    op_ids: list[str] = []
    for path, item in doc["paths"].items():
        assert path.startswith("/"), path
        assert _fields(item) <= PATH_ITEM_KEYS, (path, _fields(item) - PATH_ITEM_KEYS)
        for method in set(item) & HTTP_METHODS:
            op = item[method]
            assert _fields(op) <= OPERATION_KEYS, (path, method, _fields(op) - OPERATION_KEYS)
            if "operationId" in op:
                op_ids.append(op["operationId"])
            assert op["responses"], (path, method)
            for status, response in op["responses"].items():
                assert STATUS.match(str(status)), (path, status)
                if "$ref" not in response:
                    assert isinstance(response["description"], str), (path, status)
                    for media in (response.get("content") or {}).values():
                        assert "schema" in media, (path, status)
            for param in op.get("parameters", []):
                assert param["in"] in {"query", "header", "path", "cookie"}, param
                assert isinstance(param["name"], str), param
                assert "schema" in param or "content" in param, param
                if param["in"] == "path":
                    assert param.get("required") is True
                    assert "{" + param["name"] + "}" in path
            if "requestBody" in op and "$ref" not in op["requestBody"]:
                assert op["requestBody"]["content"], (path, method)
            for requirement in op.get("security", []):
                assert set(requirement) <= set(schemes), requirement
    assert len(op_ids) == len(set(op_ids)), "operationId values must be unique"
    _walk_refs(doc, doc)


def _docs(client) -> dict[str, Any]:
    r = client.get("/docs.json")
    assert r.status_code == 200
    return r.json()


def test_docs_json_lists_mounted_routes_and_validates(client) -> None:
    doc = _docs(client)
    check_openapi3(doc)
    paths = doc["paths"]
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/v1/infer"):  # BentoML's own stay
        assert path in paths
    predict = paths["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {
        "application/dicom",
        "application/octet-stream",
        "multipart/form-data",
    }
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Prediction"
    }
    for status in ("400", "401", "404", "413", "415", "422", "503"):
        assert predict["responses"][status]["content"][PROBLEM]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    assert "Retry-After" in predict["responses"]["503"]["headers"]
    explain = paths["/v1/explain"]["post"]
    assert [p["name"] for p in explain["parameters"]] == [
        "model",
        "method",
        "target",
        "format",
        "encoding",
        "space",
        "params",
    ]
    fmt = next(p for p in explain["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["json", "png", "overlay", "dicom"]
    assert set(explain["responses"]["200"]["content"]) == {
        "application/json",
        "image/png",
        "application/dicom",
    }
    stow = paths["/dicomweb/studies"]["post"]
    assert set(stow["requestBody"]["content"]) == {"multipart/related"}
    for status in ("200", "202", "409"):
        assert "application/dicom+json" in stow["responses"][status]["content"]
    assert PROBLEM in stow["responses"]["415"]["content"]
    models = paths["/v1/models"]["get"]
    assert models["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ModelList")
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    schemas = doc["components"]["schemas"]
    assert schemas["Problem"]["required"] == ["type", "title", "status", "code"]
    assert "disagreement" in schemas["Uncertainty"]["properties"]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    # BentoML's own schemas survive the merge
    assert "InvalidArgument" in schemas
    assert "infer__Input" in schemas


def test_spec_covers_exactly_the_mounted_app_routes() -> None:
    served = {
        (r.path, m.lower()) for r in create_app().routes if isinstance(r, Route) for m in r.methods - {"HEAD"}
    }
    documented = {(p, m) for p, item in mounted_paths().items() for m in item if m in HTTP_METHODS}
    assert served == documented - {("/readyz", "get")}


def test_structural_check_rejects_broken_documents(client) -> None:
    doc = _docs(client)
    broken_ref = {**doc, "paths": {**doc["paths"], "/x": {"get": {"responses": {"200": {"$ref": "#/nope"}}}}}}
    with pytest.raises(AssertionError, match="unresolvable"):
        check_openapi3(broken_ref)
    bad_status = {**doc, "paths": {"/x": {"get": {"responses": {"2000": {"description": "x"}}}}}}
    with pytest.raises(AssertionError):
        check_openapi3(bad_status)
    bad_param = {
        **doc,
        "paths": {
            "/x": {
                "get": {
                    "responses": {"200": {"description": "x"}},
                    "parameters": [{"name": "a", "in": "body"}],
                }
            }
        },
    }
    with pytest.raises(AssertionError):
        check_openapi3(bad_param)
    with pytest.raises(AssertionError):
        check_openapi3({**doc, "openapi": "2.0"})


def test_docs_json_needs_no_token(serve_env) -> None:
    from tests.serving.conftest import make_client

    serve_env.setenv("MIMICRY_SERVE_API_TOKEN", "s3cret-token")
    with make_client() as client:
        assert client.get("/v1/models").status_code == 401
        check_openapi3(_docs(client))
