"""Fixtures: a toy registry (published once per session), phantom DICOMs with synthetic PHI, and the
BentoML ASGI app run in-process with its lifespan (starlette TestClient)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.registry import Registry, UncertaintySpec
from tests.registry import publish_toy

PHANTOM_SIZE = 96


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cxr-toy`` v1 (abstain threshold 0.5 nats) and ``cxr-toy2`` v1 (no uncertainty section)."""
    root = tmp_path_factory.mktemp("serving") / "registry"
    reg = Registry(root)
    publish_toy(
        reg,
        "cxr-toy",
        uncertainty=UncertaintySpec(abstain_threshold=0.5),
        reference_stats={"n_samples": 10, "image_mean": 0.3, "image_std": 0.05},
    )
    publish_toy(reg, "cxr-toy2")
    return root


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serving") / "phantom"
    generate_phantom_dataset(out, PhantomConfig(n=4, size=PHANTOM_SIZE, seed=5))
    return out


@pytest.fixture(scope="session")
def phantom_files(phantom_dir: Path) -> list[Path]:
    files = sorted(phantom_dir.rglob("*.dcm"))
    assert len(files) == 4
    return files


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch, registry_dir: Path) -> pytest.MonkeyPatch:
    for key in list(__import__("os").environ):
        if key.startswith("MIMICRY_SERVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MIMICRY_SERVE_REGISTRY", str(registry_dir))
    monkeypatch.setenv("MIMICRY_SERVE_MODELS", "cxr-toy,cxr-toy2:1")
    monkeypatch.setenv("MIMICRY_SERVE_MAX_REQUEST_BYTES", str(2 * 2**20))
    monkeypatch.setenv("MIMICRY_SERVE_INGEST__UID_SALT", "test-salt")
    return monkeypatch


@cache
def _asgi_app() -> object:
    """One ASGI app per test session (BentoML registers its request metrics once per app object); each
    TestClient context runs the lifespan, so every client gets a fresh service instance and settings."""
    from serving.service import MimicryService

    return MimicryService.to_asgi()


def make_client() -> TestClient:
    return TestClient(_asgi_app(), raise_server_exceptions=False)


@pytest.fixture
def client(serve_env: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with make_client() as c:
        yield c
