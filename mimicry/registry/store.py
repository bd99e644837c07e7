"""The model registry: a directory that *is* a Triton model repository (docs/architecture.md, "The registry").

Layout (``tritonserver --model-repository=ROOT`` serves it unchanged)::

    ROOT/<name>/config.pbtxt                      generated once per model (mimicry.registry.pbtxt)
    ROOT/<name>/<version>/model.onnx              image[N,1,H,W] -> logits[N,K], probs[N,K], cam[N,K,h,w]
    ROOT/<name>/<version>/weights.safetensors     torch twin (state_dict; no pickle anywhere)
    ROOT/<name>/<version>/card.json               ModelCard: sha256 of model.onnx and of the twin, and
                                                  its own seal ``card_sha256`` (see mimicry.registry.card)
    ROOT/<name>/.publish-*/                       a publish in progress (or crashed): ignored everywhere
    ROOT/aliases.json                             {"<name>": {"<alias>": <version>, ...}, ...}
    ROOT/alias_history.jsonl                      append-only log of alias changes (who forced what)
    ROOT/.mimicry-registry.lock                   fcntl lock serialising version allocation and aliases

Triton only loads numerically named version directories (not starting with ``0``) and ignores other files
in them, so the card and the twin can sit next to ``model.onnx``; the staging directories start with ``.``
and are not numeric (a brand-new model's directory holds only its staging directory until the first version
lands; a polling Triton reports it unavailable until then); ``aliases.json`` and the history are plain files
at the top level, which Triton does not scan for models. ``config.pbtxt`` uses ``version_policy: { all { } }``
so that every version an alias points to is served.

Versions are immutable integers starting at 1. Publishing is atomic: artifacts are written and fsynced in
``ROOT/<name>/.publish-<random>/``, then, under an exclusive ``fcntl.flock`` on the lock file, the next free
integer is allocated, the sealed card is written, and the directory is renamed into place (and
the parent fsynced). Readers never lock: a version directory appears complete or not at all. Loading
verifies every sha256 and refuses a mismatch (:class:`~mimicry.registry.errors.IntegrityError` naming the
artifact). The twin is rebuilt with :func:`mimicry.models.zoo.build_model` and loaded with
``safetensors.torch.load_file`` and ``strict=True``.

References: ``name`` (latest version), ``name:version``, ``name@alias`` — parsed by :meth:`ModelRef.parse`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from torch import Tensor

from mimicry.io import atomic_write_bytes
from mimicry.models.base import CamClassifier
from mimicry.models.zoo import ArchitectureError, architecture_of, build_model
from mimicry.preprocess import PreprocessSpec
from mimicry.registry.card import (
    ModelCard,
    ReferenceStats,
    UncertaintySpec,
    check_card_seal,
    code_version,
    seal_card,
    utc_now,
)
from mimicry.registry.errors import (
    AliasNotFoundError,
    CardError,
    ExportError,
    IncompatibleVersionError,
    IntegrityError,
    InvalidReferenceError,
    ModelNotFoundError,
    PromotionRefusedError,
    PublishError,
    RegistryError,
)
from mimicry.registry.export import (
    DEFAULT_OPSET,
    Exporter,
    ExportResult,
    cam_layer_name,
    check_twin_parity,
    export_model,
    onnx_signature,
)
from mimicry.registry.pbtxt import (
    PbtxtSyntaxError,
    TritonConfig,
    TritonModelConfig,
    check_compatible,
    read_model_config,
    render_config,
)

_log = logging.getLogger(__name__)

__all__ = [
    "ALIASES_FILE",
    "CARD_FILE",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "LOCK_FILE",
    "ONNX_FILE",
    "TWIN_FILE",
    "ModelRef",
    "ModelSummary",
    "Promotion",
    "PromotionGate",
    "Registry",
    "VerifyReport",
    "VersionCheck",
]

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
TWIN_FILE = "weights.safetensors"
CARD_FILE = "card.json"
ALIASES_FILE = "aliases.json"
HISTORY_FILE = "alias_history.jsonl"
LOCK_FILE = ".mimicry-registry.lock"
STAGING_PREFIX = ".publish-"

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_VERSION = r"[1-9][0-9]{0,17}"
_ALIAS = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
_NAME_RE = re.compile(rf"^{_NAME}$")
_VERSION_RE = re.compile(rf"^{_VERSION}$")
_ALIAS_RE = re.compile(rf"^{_ALIAS}$")
_REF_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<version>{_VERSION})|@(?P<alias>{_ALIAS}))?$")

PromotionGate = Callable[[ModelCard], tuple[bool, str]]
"""A promotion check: ``gate(card) -> (ok, reason)`` (e.g. "the latest audit of this version passed")."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: ``name``, ``name:version`` or ``name@alias``."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str | ModelRef) -> ModelRef:
        """Parse ``name`` / ``name:version`` / ``name@alias``.

        Names: ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (≤ 128 chars; a directory and a Triton model name); versions:
        integers ≥ 1 without leading zeros (Triton ignores ``0…`` directories); aliases:
        ``[A-Za-z][A-Za-z0-9_-]*`` (≤ 64 chars, so an alias never looks like a version).

        Raises:
            InvalidReferenceError: anything else.
        """
        if isinstance(text, ModelRef):
            return text
        if not isinstance(text, str):
            raise InvalidReferenceError(f"a model reference must be a string, got {type(text).__name__}")
        m = _REF_RE.match(text)
        if m is None:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise InvalidReferenceError(
                f"invalid model reference {shown!r}: expected NAME, NAME:VERSION (an integer >= 1) or "
                "NAME@ALIAS; NAME is [A-Za-z0-9][A-Za-z0-9_.-]* and ALIAS [A-Za-z][A-Za-z0-9_-]*"
            )
        version = m.group("version")
        return cls(m.group("name"), int(version) if version else None, m.group("alias"))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


@dataclass(frozen=True)
class ModelSummary:
    """One row of :meth:`Registry.list` (fields of the latest version's card; ``None`` if unreadable)."""

    name: str
    versions: list[int]
    aliases: dict[str, int]
    latest: int
    created_at: datetime | None
    architecture: str | None


@dataclass
class VersionCheck:
    """Verification of one version: ``problems`` is empty when every check passed."""

    name: str
    version: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """Result of :meth:`Registry.verify`: per-version checks plus registry-level problems and warnings."""

    checks: list[VersionCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{**asdict(c), "ok": c.ok} for c in self.checks],
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Promotion:
    """What :meth:`Registry.promote` did."""

    name: str
    alias: str
    version: int
    previous: int | None
    forced: bool
    gate_ok: bool | None
    reason: str


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist), write, fsync, make read-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    path.chmod(0o444)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (:func:`mimicry.io.atomic_write_bytes`), mode 0644."""
    atomic_write_bytes(path, data, mode=0o644)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidReferenceError(f"invalid model name {name!r}: use [A-Za-z0-9][A-Za-z0-9_.-]*")
    return name


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
        raise InvalidReferenceError(f"invalid alias {alias!r}: use [A-Za-z][A-Za-z0-9_-]*")
    return alias


class Registry:
    """A model registry rooted at ``root`` (see the module docstring for the layout and guarantees).

    Args:
        root: The registry directory (created on first publish).
        triton: Settings rendered into the ``config.pbtxt`` of *new* models (existing configs are kept:
            all versions share one config).
    """

    def __init__(self, root: str | os.PathLike[str], *, triton: TritonConfig | None = None) -> None:
        self.root = Path(root)
        self.triton = triton or TritonConfig()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ------------------------------------------------------------------ locking / paths

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive ``fcntl.flock`` on ``ROOT/.mimicry-registry.lock`` (per open file: threads and
        processes exclude each other)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def model_dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(int(version))

    # ------------------------------------------------------------------ listing / resolving

    def models(self) -> list[str]:
        """Names of the models that have at least one published version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name) and self._versions(p)
        )

    @staticmethod
    def _versions(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if _VERSION_RE.match(p.name) and p.is_dir())

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending (staging directories are ignored).

        Raises:
            ModelNotFoundError: no version of ``name`` exists.
        """
        found = self._versions(self.model_dir(name))
        if not found:
            raise ModelNotFoundError(f"no model {name!r} in the registry")
        return found

    def resolve(self, ref: str | ModelRef) -> tuple[str, int]:
        """``name`` → latest version, ``name:version`` → that version, ``name@alias`` → the alias's target.

        Raises:
            InvalidReferenceError, ModelNotFoundError, AliasNotFoundError.
        """
        r = ModelRef.parse(ref)
        versions = self.versions(r.name)
        if r.alias is not None:
            version = self.aliases(r.name).get(r.alias)
            if version is None:
                raise AliasNotFoundError(f"model {r.name!r} has no alias {r.alias!r}")
            if version not in versions:
                raise ModelNotFoundError(f"alias {r} points to missing version {version}")
            return r.name, version
        if r.version is not None:
            if r.version not in versions:
                raise ModelNotFoundError(f"model {r.name!r} has no version {r.version} (has {versions})")
            return r.name, r.version
        return r.name, versions[-1]

    def list(self) -> list[ModelSummary]:
        """One summary per model (versions, aliases, latest card's creation time and architecture)."""
        all_aliases = self._read_aliases()
        out = []
        for name in self.models():
            versions = self._versions(self.model_dir(name))
            latest = versions[-1]
            created, arch = None, None
            try:
                card = ModelCard.model_validate_json(
                    (self.version_dir(name, latest) / CARD_FILE).read_bytes()
                )
                created, arch = card.created_at, card.architecture
            except (OSError, ValidationError) as exc:
                # Still list the model (verify() reports the damage in detail); say why the columns are empty.
                _log.warning(
                    "%s:%d: card unreadable (%s); run `mimicry registry verify`",
                    name,
                    latest,
                    type(exc).__name__,
                )
            out.append(ModelSummary(name, versions, dict(all_aliases.get(name, {})), latest, created, arch))
        return out

    # ------------------------------------------------------------------ verification

    def _check_version(
        self, name: str, version: int, *, hash_binaries: bool = True
    ) -> tuple[ModelCard | None, list[RegistryError]]:
        """The version's card and every integrity / card problem found (empty list = intact).

        ``card.json`` must match its ``card_sha256`` seal and validate; ``model.onnx`` and
        ``weights.safetensors`` must match the sha256 the card records (skipped when ``hash_binaries`` is
        false).
        """
        ref = f"{name}:{version}"
        vdir = self.version_dir(name, version)
        try:
            raw = (vdir / CARD_FILE).read_bytes()
        except OSError as exc:
            reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            return None, [
                IntegrityError(f"{ref}: artifact {CARD_FILE} is {reason}", artifact=CARD_FILE, ref=ref)
            ]
        problem = check_card_seal(raw)
        if problem is not None:
            message = f"{ref}: artifact {CARD_FILE} was modified or corrupted after publishing: {problem}"
            return None, [IntegrityError(message, artifact=CARD_FILE, ref=ref)]
        try:
            card = ModelCard.model_validate_json(raw)
        except ValidationError as exc:
            return None, [
                CardError(f"{ref}: {CARD_FILE} is not a valid model card ({exc.error_count()} errors)")
            ]
        errors: list[RegistryError] = []
        if card.name != name or card.version != version:
            errors.append(CardError(f"{ref}: {CARD_FILE} describes {card.ref}"))
        for fname in (ONNX_FILE, TWIN_FILE):
            recorded = card.artifacts.get(fname)
            if recorded is None:
                errors.append(CardError(f"{ref}: {CARD_FILE} records no sha256 for {fname}"))
                continue
            if not hash_binaries:
                continue
            path = vdir / fname
            if not path.is_file():
                errors.append(IntegrityError(f"{ref}: artifact {fname} is missing", artifact=fname, ref=ref))
                continue
            actual = _sha256_file(path)
            if actual != recorded:
                errors.append(
                    IntegrityError(
                        f"{ref}: artifact {fname} does not match the sha256 in its card (recorded "
                        f"{recorded[:12]}…, found {actual[:12]}…): "
                        "it was modified or corrupted after publishing",
                        artifact=fname,
                        ref=ref,
                    )
                )
        return card, errors

    def _verified(self, ref: str | ModelRef, *, hash_binaries: bool = True) -> ModelCard:
        name, version = self.resolve(ref)
        card, errors = self._check_version(name, version, hash_binaries=hash_binaries)
        if errors:
            raise errors[0]
        assert card is not None
        return card

    def card(self, ref: str | ModelRef) -> ModelCard:
        """The model card of ``ref`` (``card.json`` checked against its seal; the binaries are not hashed).

        Raises:
            IntegrityError: ``card.json`` was modified.
            CardError: the card does not validate.
        """
        return self._verified(ref, hash_binaries=False)

    def load_onnx_path(self, ref: str | ModelRef) -> Path:
        """Path of the verified ``model.onnx`` of ``ref`` (every artifact's sha256 checked).

        Raises:
            IntegrityError: naming the first artifact that does not match.
        """
        card = self._verified(ref)
        return self.version_dir(card.name, card.version) / ONNX_FILE

    def load_twin(self, ref: str | ModelRef, *, device: str = "cpu") -> CamClassifier:
        """The verified torch twin of ``ref`` in eval mode.

        Built with ``build_model(card.architecture, **card.arch_kwargs)``, weights from
        ``safetensors.torch.load_file`` with ``strict=True`` (never ``torch.load`` / pickle); ``class_names``
        and ``black_level`` are set from the card.

        Raises:
            IntegrityError: an artifact does not match its sha256.
            CardError: the card's architecture no longer rebuilds the saved weights.
        """
        from safetensors.torch import load_file

        card = self._verified(ref)
        path = self.version_dir(card.name, card.version) / TWIN_FILE
        try:
            model = build_model(card.architecture, **card.arch_kwargs)
            model.load_state_dict(load_file(path, device="cpu"), strict=True)
        except (ArchitectureError, RuntimeError) as exc:
            raise CardError(f"{card.ref}: cannot rebuild the twin from the card: {exc}") from exc
        if cam_layer_name(model) != card.cam_layer:
            raise CardError(
                f"{card.ref}: rebuilt cam_layer {cam_layer_name(model)!r} != card {card.cam_layer!r}"
            )
        model.class_names = tuple(card.class_names)
        model.black_level = card.black_level
        return model.to(device).eval()

    def config(self, name: str) -> TritonModelConfig:
        """The parsed ``config.pbtxt`` of model ``name``.

        Raises:
            ModelNotFoundError: no config; IntegrityError: it does not parse.
        """
        path = self.model_dir(name) / CONFIG_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {name!r} has no {CONFIG_FILE}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(
                f"{name}: {CONFIG_FILE} is unreadable", artifact=CONFIG_FILE, ref=name
            ) from exc
        try:
            return read_model_config(text)
        except PbtxtSyntaxError as exc:
            raise IntegrityError(
                f"{name}: {CONFIG_FILE} is invalid: {exc}", artifact=CONFIG_FILE, ref=name
            ) from exc

    def verify(self, ref: str | ModelRef | None = None) -> VerifyReport:
        """Check every artifact hash, the card, the ONNX signature vs the card and ``config.pbtxt``.

        ``ref=None`` checks every version of every model plus the aliases file; a ``name`` checks every
        version of that model; ``name:version`` / ``name@alias`` one version. Leftover staging directories
        of crashed publishes are reported as warnings (harmless, safe to delete when no publish runs).
        """
        report = VerifyReport()
        if ref is None:
            targets = [(n, v) for n in self.models() for v in self._versions(self.model_dir(n))]
        else:
            r = ModelRef.parse(ref)
            if r.version is None and r.alias is None:
                targets = [(r.name, v) for v in self.versions(r.name)]
            else:
                targets = [self.resolve(r)]
        configs: dict[str, TritonModelConfig | str] = {}
        for name, version in targets:
            check = VersionCheck(name, version)
            report.checks.append(check)
            card, errors = self._check_version(name, version)
            check.problems += [str(e) for e in errors]
            if card is None or errors:
                continue
            check.problems += self._structure_problems(name, card, configs)
        names = sorted({n for n, _ in targets})
        for name in names:
            staging = sorted(p.name for p in self.model_dir(name).glob(f"{STAGING_PREFIX}*"))
            if staging:
                report.warnings.append(f"{name}: leftover staging directories {staging} (ignored)")
        try:
            aliases = self._read_aliases()
        except IntegrityError as exc:
            report.problems.append(str(exc))
            aliases = {}
        for name, table in sorted(aliases.items()):
            if ref is not None and name not in names:
                continue
            existing = self._versions(self.model_dir(name)) if _NAME_RE.match(name) else []
            for alias, version in sorted(table.items()):
                if version not in existing:
                    report.problems.append(f"alias {name}@{alias} points to missing version {version}")
        return report

    def _structure_problems(
        self, name: str, card: ModelCard, configs: dict[str, TritonModelConfig | str]
    ) -> list[str]:
        problems: list[str] = []
        vdir = self.version_dir(name, card.version)
        if card.onnx is not None:
            try:
                inputs, outputs = onnx_signature((vdir / ONNX_FILE).read_bytes())
                if inputs != card.onnx.inputs or outputs != card.onnx.outputs:
                    problems.append(f"{card.ref}: {ONNX_FILE} signature differs from the card")
            except ExportError as exc:
                problems.append(f"{card.ref}: {ONNX_FILE}: {exc}")
            except Exception as exc:  # onnx parse errors
                problems.append(f"{card.ref}: {ONNX_FILE} does not parse: {type(exc).__name__}")
        if name not in configs:
            try:
                configs[name] = self.config(name)
            except RegistryError as exc:
                configs[name] = str(exc)
        config = configs[name]
        if isinstance(config, str):
            problems.append(config)
        elif card.onnx is not None:
            if config.version_policy != "all":
                problems.append(
                    f"{name}: {CONFIG_FILE} version_policy must be 'all' (aliases need every version)"
                )
            if config.max_batch_size <= 0:
                problems.append(f"{name}: {CONFIG_FILE} max_batch_size must be > 0 (dims omit the batch)")
            try:
                check_compatible(
                    config,
                    name=name,
                    input_size=card.onnx.input_size,
                    num_classes=card.onnx.num_classes,
                    cam_grid=card.onnx.cam_grid,
                    class_names=card.class_names,
                )
            except IncompatibleVersionError as exc:
                problems.append(f"{card.ref}: {exc}")
        return problems

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        model: CamClassifier,
        *,
        name: str,
        held_batch: Tensor | np.ndarray,
        preprocessing: PreprocessSpec,
        architecture: str | None = None,
        arch_kwargs: Mapping[str, Any] | None = None,
        exporter: Exporter = "dynamo",
        opset: int = DEFAULT_OPSET,
        probs_atol: float = 1e-5,
        logits_atol: float = 1e-4,
        cam_atol: float = 1e-4,
        **card_fields: Any,
    ) -> ModelCard:
        """Export ``model`` to ONNX, check parity on ``held_batch``, and publish the next version of ``name``.

        Args:
            model: The trained classifier.
            name: Model name (a directory and Triton model name).
            held_batch: Held-out images ``float32 [N, 1, size, size]`` preprocessed with ``preprocessing``.
            preprocessing: The preprocessing contract (its ``size`` must match the held batch).
            architecture: Name in :mod:`mimicry.models.zoo`; inferred from ``type(model)`` when ``None``.
            arch_kwargs: JSON-serialisable constructor kwargs that rebuild the model (default ``{}``).
            exporter, opset, probs_atol, logits_atol, cam_atol: See :func:`~mimicry.registry.export_model`.
            **card_fields: Optional card fields: ``training_config``, ``seed``, ``replicate_group``,
                ``dataset_fingerprint``, ``metrics``, ``uncertainty``, ``reference_stats``, ``iba_stats``,
                ``extra``, ``intended_use``.

        Returns:
            The published card.

        Raises:
            ExportError / ExportParityError: export or parity failed (nothing is written).
            IncompatibleVersionError: the version does not fit the model's ``config.pbtxt``.
            PublishError: bad arguments (e.g. an architecture that does not rebuild the weights).
        """
        if architecture is None:
            architecture = architecture_of(model)
            if architecture is None:
                raise PublishError(
                    f"{type(model).__name__} is not registered in mimicry.models.zoo: pass architecture="
                )
        _check_name(name)
        self._check_preprocessing(preprocessing, held_batch)
        exported = export_model(
            model,
            held_batch,
            exporter=exporter,
            opset=opset,
            probs_atol=probs_atol,
            logits_atol=logits_atol,
            cam_atol=cam_atol,
        )
        return self.publish_exported(
            exported,
            name=name,
            preprocessing=preprocessing,
            architecture=architecture,
            arch_kwargs=arch_kwargs,
            **card_fields,
        )

    @staticmethod
    def _check_preprocessing(spec: PreprocessSpec, held_batch: Tensor | np.ndarray) -> None:
        shape = tuple(held_batch.shape)
        if len(shape) != 4 or shape[2:] != (spec.size, spec.size):
            raise PublishError(
                f"held batch {list(shape)} does not match the preprocessing size {spec.size} "
                f"(expected [N, 1, {spec.size}, {spec.size}])"
            )

    def publish_exported(
        self,
        exported: ExportResult,
        *,
        name: str,
        preprocessing: PreprocessSpec,
        architecture: str,
        arch_kwargs: Mapping[str, Any] | None = None,
        training_config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        replicate_group: str | None = None,
        dataset_fingerprint: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
        uncertainty: UncertaintySpec | Mapping[str, Any] | None = None,
        reference_stats: ReferenceStats | Mapping[str, Any] | None = None,
        iba_stats: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        intended_use: str | None = None,
    ) -> ModelCard:
        """Publish an already exported model (:func:`~mimicry.registry.export_model`) as the next version.

        Steps: stage ``model.onnx`` + ``weights.safetensors`` in ``ROOT/<name>/.publish-*``; rebuild the twin
        from the staged safetensors with ``build_model(architecture, **arch_kwargs)`` (strict) and check it
        reproduces the source outputs; then under the registry lock: check / write ``config.pbtxt``,
        allocate ``max(versions) + 1``, write the sealed ``card.json``, fsync, rename into place.
        On any failure the staging directory is removed and nothing is published.
        """
        _check_name(name)
        if exported.onnx.input_size != (preprocessing.size, preprocessing.size):
            raise PublishError(
                f"exported input size {list(exported.onnx.input_size)} != "
                f"preprocessing size {preprocessing.size}"
            )
        kwargs = dict(arch_kwargs or {})
        for label, value in (("arch_kwargs", kwargs), ("training_config", dict(training_config or {}))):
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise PublishError(f"{label} must be JSON-serialisable: {exc}") from exc
        try:
            twin = build_model(architecture, **kwargs)
        except ArchitectureError as exc:
            raise PublishError(str(exc)) from exc

        model_dir = self.model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
        try:
            _write_new(staging / ONNX_FILE, exported.onnx_bytes)
            _write_new(staging / TWIN_FILE, exported.twin_bytes)
            twin_diff = self._check_staged_twin(twin, staging / TWIN_FILE, exported, architecture)
            base_fields: dict[str, Any] = {
                "name": name,
                "architecture": architecture,
                "arch_kwargs": kwargs,
                "cam_layer": exported.cam_layer,
                "class_names": list(exported.class_names),
                "preprocessing": preprocessing,
                "training_config": dict(training_config or {}),
                "seed": seed,
                "replicate_group": replicate_group,
                "dataset_fingerprint": dataset_fingerprint,
                "metrics": dict(metrics or {}),
                "artifacts": {
                    ONNX_FILE: hashlib.sha256(exported.onnx_bytes).hexdigest(),
                    TWIN_FILE: hashlib.sha256(exported.twin_bytes).hexdigest(),
                },
                "code_version": code_version(),
                "uncertainty": uncertainty,
                "reference_stats": reference_stats,
                "onnx": exported.onnx,
                "parity": exported.parity.model_copy(update={"twin_max_abs_diff": twin_diff}),
                "iba_stats": dict(iba_stats) if iba_stats is not None else None,
                "extra": dict(extra or {}),
            }
            if intended_use is not None:
                base_fields["intended_use"] = intended_use
            try:  # validate everything before taking the lock
                ModelCard.model_validate({**base_fields, "version": 1, "created_at": utc_now()})
            except ValidationError as exc:
                raise PublishError(f"invalid model card fields: {exc}") from exc
            with self._locked():
                wrote_config = self._ensure_config(name, exported)
                try:
                    version = (self._versions(model_dir) or [0])[-1] + 1
                    card = ModelCard.model_validate(
                        {**base_fields, "version": version, "created_at": utc_now()}
                    )
                    card_bytes = seal_card(card)
                    _write_new(staging / CARD_FILE, card_bytes)
                    card = ModelCard.model_validate_json(card_bytes)
                    _fsync_dir(staging)
                    target = model_dir / str(version)
                    try:
                        os.rename(staging, target)  # fails on an existing non-empty directory
                    except OSError as exc:
                        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                            raise PublishError(
                                f"{name}:{version} already exists; versions are immutable"
                            ) from exc
                        raise
                    _fsync_dir(model_dir)
                except BaseException:
                    if wrote_config and not self._versions(model_dir):
                        with contextlib.suppress(FileNotFoundError):
                            (model_dir / CONFIG_FILE).unlink()
                    raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return card

    @staticmethod
    def _check_staged_twin(
        twin: CamClassifier, path: Path, exported: ExportResult, architecture: str
    ) -> float:
        from safetensors.torch import load_file

        try:
            twin.load_state_dict(load_file(path, device="cpu"), strict=True)
        except RuntimeError as exc:
            raise PublishError(
                f"architecture {architecture!r} with these arch_kwargs does not rebuild the model's weights: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        if cam_layer_name(twin) != exported.cam_layer:
            raise PublishError(
                f"rebuilt cam_layer {cam_layer_name(twin)!r} != exported {exported.cam_layer!r}"
            )
        return check_twin_parity(twin, exported)

    def _ensure_config(self, name: str, exported: ExportResult) -> bool:
        """Under the lock: check the new version against ``config.pbtxt``, or write it for a new model.

        Returns ``True`` when this call wrote the file."""
        path = self.model_dir(name) / CONFIG_FILE
        info = exported.onnx
        if path.exists():
            check_compatible(
                self.config(name),
                name=name,
                input_size=info.input_size,
                num_classes=info.num_classes,
                cam_grid=info.cam_grid,
                class_names=exported.class_names,
            )
            return False
        from mimicry import __version__

        text = render_config(
            name,
            input_size=info.input_size,
            num_classes=info.num_classes,
            cam_grid=info.cam_grid,
            class_names=exported.class_names,
            settings=self.triton,
            generator=f"mimicry {__version__}",
        )
        _write_atomic(path, text.encode("utf-8"))
        return True

    # ------------------------------------------------------------------ aliases

    def _read_aliases(self) -> dict[str, dict[str, int]]:
        path = self.root / ALIASES_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntegrityError(
                f"{ALIASES_FILE} is unreadable", artifact=ALIASES_FILE, ref="registry"
            ) from exc
        valid = isinstance(raw, dict) and all(
            isinstance(t, dict)
            and all(
                isinstance(a, str) and isinstance(v, int) and not isinstance(v, bool) for a, v in t.items()
            )
            for t in raw.values()
        )
        if not valid:
            raise IntegrityError(
                f"{ALIASES_FILE} must map name -> alias -> version", artifact=ALIASES_FILE, ref="registry"
            )
        return raw

    def aliases(self, name: str | None = None) -> dict[str, Any]:
        """``{alias: version}`` of ``name``, or ``{name: {alias: version}}`` of every model."""
        table = self._read_aliases()
        if name is None:
            return table
        return dict(table.get(_check_name(name), {}))

    def _write_alias(self, name: str, alias: str, version: int | None, record: dict[str, Any]) -> int | None:
        """Under the lock: set (or remove, ``version=None``) an alias, append to the history."""
        table = self._read_aliases()
        entry = table.setdefault(name, {})
        previous = entry.get(alias)
        if version is None:
            entry.pop(alias, None)
            if not entry:
                table.pop(name)
        else:
            entry[alias] = int(version)
        body = json.dumps({n: dict(sorted(t.items())) for n, t in sorted(table.items())}, indent=2) + "\n"
        _write_atomic(self.root / ALIASES_FILE, body.encode("utf-8"))
        line = {"time": utc_now().isoformat(), "name": name, "alias": alias, "version": version}
        line |= {"previous": previous, **record}
        with (self.root / HISTORY_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return previous

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``name@alias`` at an existing ``version`` (atomic, under the lock). Returns the previous
        version or ``None``.

        Raises:
            InvalidReferenceError: bad alias; ModelNotFoundError: no such version.
        """
        _check_alias(alias)
        with self._locked():
            if int(version) not in self.versions(name):
                raise ModelNotFoundError(f"model {name!r} has no version {version}")
            return self._write_alias(name, alias, int(version), {"action": "set"})

    def unset_alias(self, name: str, alias: str) -> int:
        """Remove ``name@alias``; returns the version it pointed to.

        Raises:
            AliasNotFoundError: the alias is not set.
        """
        _check_alias(alias)
        with self._locked():
            if alias not in self.aliases(name):
                raise AliasNotFoundError(f"model {name!r} has no alias {alias!r}")
            previous = self._write_alias(name, alias, None, {"action": "unset"})
        assert previous is not None
        return previous

    def promote(
        self,
        ref: str | ModelRef,
        alias: str = "production",
        *,
        force: bool = False,
        gate: PromotionGate | None = None,
    ) -> Promotion:
        """Point ``alias`` at the version ``ref`` resolves to, after integrity checks and an optional gate.

        The version must verify (every sha256). ``gate(card) -> (ok, reason)`` is the hook for policy —
        the audit plugs in "refuse a version whose latest audit failed". A refusal raises unless ``force``;
        a forced promotion is recorded in ``alias_history.jsonl`` with the gate's reason.

        Raises:
            PromotionRefusedError: the gate refused and ``force`` is false.
            IntegrityError / CardError: the version is damaged (``force`` does not override this).
        """
        _check_alias(alias)
        card = self._verified(ref)
        gate_ok: bool | None = None
        reason = "no gate"
        if gate is not None:
            gate_ok, reason = gate(card)
            gate_ok = bool(gate_ok)
            if not gate_ok and not force:
                raise PromotionRefusedError(
                    f"promotion of {card.ref} to {alias!r} refused: {reason} (use force to override)",
                    reason=reason,
                )
        with self._locked():
            if card.version not in self.versions(card.name):  # pragma: no cover - versions are never removed
                raise ModelNotFoundError(f"{card.ref} disappeared")
            forced = bool(force and gate_ok is False)
            previous = self._write_alias(
                card.name,
                alias,
                card.version,
                {"action": "promote", "forced": forced, "gate_ok": gate_ok, "reason": reason},
            )
        return Promotion(card.name, alias, card.version, previous, forced, gate_ok, reason)
