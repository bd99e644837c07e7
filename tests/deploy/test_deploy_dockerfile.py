"""The container image recipe (docs/deploy.md, "Container"): hadolint at the error threshold, multi-stage
venv, GPU default / CPU by build argument, non-root, HEALTHCHECK, OCI labels, the registry mounted or
baked, the audit data directory owned by the runtime user."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.deploy._support import K8S, ROOT, dockerfile_stages, owned_directories, render, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> dict[str, list[tuple[str, str]]]:
    return dockerfile_stages(DOCKERFILE)


def test_hadolint_passes_at_error_threshold_with_justified_ignores() -> None:
    hadolint = tool("hadolint")
    proc = run([hadolint, "--failure-threshold", "error", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = DOCKERFILE.read_text()
    ignored = re.findall(r"hadolint (?:global )?ignore=([A-Z0-9,]+)", text)
    for rule in {r for group in ignored for r in group.split(",")}:
        if (
            rule == "DL3006"
        ):  # the registry stage selector: `FROM registry-${REGISTRY}` names a stage, not an image
            continue
        assert re.search(rf"#\s+{rule} \(", text), f"{rule} is ignored without a justification comment"


def test_hadolint_fails_on_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:22.04\nWORKDIR relative/dir\n")
    proc = run([tool("hadolint"), "--failure-threshold", "error", str(bad)])
    assert proc.returncode == 1
    assert "DL3000" in proc.stdout


def test_multi_stage_venv_gpu_default_and_cpu_by_argument() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:[\w.]+-cudnn-runtime-ubuntu[\d.]+$", text, re.M)
    assert re.search(r"^ARG VARIANT=gpu$", text, re.M)
    stages = _stages()
    assert {"build", "runtime", "registry"} <= set(stages)
    runtime = stages["runtime"]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert not any(ins == "RUN" and "pip install" in args for ins, args in runtime)
    build = " ".join(args for ins, args in stages["build"] if ins == "RUN")
    assert "--constraint requirements.lock" in build
    assert "pip uninstall -y onnxruntime" in build
    assert "onnxruntime-gpu==" in build
    assert "download.pytorch.org/whl/cpu" in text
    assert "download.pytorch.org/whl/cu" in text


def test_runtime_is_non_root_with_healthcheck_labels_and_port() -> None:
    runtime = _stages()["runtime"]
    users = [args for ins, args in runtime if ins == "USER"]
    assert users == ["10001:10001"]
    (health,) = [args for ins, args in runtime if ins == "HEALTHCHECK"]
    assert "/livez" in health
    assert "127.0.0.1:3000" in health
    (expose,) = [args for ins, args in runtime if ins == "EXPOSE"]
    labels = " ".join(args for ins, args in runtime if ins == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    (entry,) = [args for ins, args in runtime if ins == "ENTRYPOINT"]
    argv = json.loads(entry)
    assert argv[:2] == ["sh", "-c"]
    # The integrity pre-flight runs first and gates the server, which then replaces the shell.
    preflight, serve = argv[2].split(" && ")
    assert preflight == "python -m serving.health preflight"
    assert serve.startswith("exec bentoml serve serving.service:MimicryService")
    assert serve.endswith('"$@"')
    # The image and the Kubernetes manifests agree on the port and the user.
    docs = render("cpu")
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mimicry-serving")
    pod = dep["spec"]["template"]["spec"]
    assert int(expose) == pod["containers"][0]["ports"][0]["containerPort"]
    assert pod["securityContext"]["runAsUser"] == 10001


def test_registry_is_mounted_by_default_or_baked_by_argument() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG REGISTRY=mounted$", text, re.M)
    stages = _stages()
    assert ("COPY", "deploy/docker/registry-placeholder/ /") in stages["registry-mounted"]
    assert ("COPY", "registry/ /") in stages["registry-baked"]
    assert "FROM registry-${REGISTRY} AS registry" in text
    assert any(ins == "COPY" and args.startswith("--from=registry ") for ins, args in stages["runtime"])
    assert (ROOT / "deploy" / "docker" / "registry-placeholder" / "README.md").is_file()
    serve = yaml.safe_load((K8S / "base" / "config" / "serve.yaml").read_text())
    assert "ENV" in dict(stages["runtime"])
    assert f"MIMICRY_SERVE_REGISTRY={serve['registry']}" in text


def test_every_copy_source_exists_and_dockerignore_keeps_them() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [p for p in ignore if p and not p.startswith("#")]
    assert {".git", ".venv", "data", "runs", "reports"} <= set(ignore)
    for stage, instructions in _stages().items():
        for ins, args in instructions:
            if ins != "COPY" or "--from=" in args:
                continue
            *sources, _dest = args.split()
            for src in sources:
                if stage == "registry-baked":
                    continue  # ./registry exists only after `mimicry registry publish`
                assert (ROOT / src).exists(), src
                assert src.rstrip("/").split("/")[0] not in ignore, src


def test_runtime_creates_the_audit_data_directory_for_its_user() -> None:
    """The audit's history/reports directory exists in the image, owned by the runtime user, so that a
    Docker named volume mounted there (compose) starts writable by uid 10001."""
    runtime = _stages()["runtime"]
    (user,) = [args for ins, args in runtime if ins == "USER"]
    owned = owned_directories(runtime)
    assert owned.get("/var/lib/mimicry") == user


def test_every_installed_top_level_package_is_copied_into_the_build() -> None:
    """The image installs the project from the copied sources: a top-level package the console script
    imports but the Dockerfile does not copy (e.g. the CLI package) would fail only inside the container."""
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    top = {p.split(".")[0] for p in find_packages(str(ROOT), include=include["include"])}
    assert {"mimicry", "mimicry_cli", "serving", "audit", "training"} <= top
    copies = {args for ins, args in _stages()["build"] if ins == "COPY"}
    for package in sorted(top):
        assert f"{package}/ {package}/" in copies, package
