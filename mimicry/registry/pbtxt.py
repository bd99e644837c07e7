"""Triton ``config.pbtxt`` for a registry model: generation and a small parser to verify it.

A registry directory is a Triton model repository (docs/serving.md, Triton), so every model directory
carries the `model configuration <https://github.com/triton-inference-server/server/blob/main/docs/
user_guide/model_configuration.md>`_ Triton reads: ``platform: "onnxruntime_onnx"``, ``max_batch_size`` > 0
(so every ``dims`` below omits the batch dimension), one FP32 input ``image [1, H, W]`` and three FP32 outputs
``logits [K]``, ``probs [K]``, ``cam [K, h, w]``, ``dynamic_batching``, ``instance_group`` and
``version_policy: { all { } }`` — every published version stays loaded so that aliases (``production``,
``candidate``) can point at any of them (``latest { num_versions: N }`` would unload older aliased versions).

Triton requires one configuration for all versions of a model, hence :func:`check_compatible`.
Reading is protobuf's text-format parser with Triton's ``ModelConfig`` schema (from tritonclient), not a
parser of our own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mimicry.registry.errors import IncompatibleVersionError, RegistryError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

__all__ = [
    "PbtxtSyntaxError",
    "TensorConfig",
    "TritonConfig",
    "TritonModelConfig",
    "check_compatible",
    "parse_pbtxt",
    "read_model_config",
    "render_config",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probs", "cam")
CLASS_NAMES_PARAMETER = "mimicry.class_names"


class PbtxtSyntaxError(RegistryError, ValueError):
    """Text that is not a Triton ``ModelConfig`` in protobuf text format, or lacks what the registry needs."""


class TritonConfig(BaseModel):
    """Deployment settings rendered into every new model's ``config.pbtxt``.

    Defaults: ``max_batch_size`` 16, ``dynamic_batching { preferred_batch_size: [4, 8, 16],
    max_queue_delay_microseconds: 2000 }``, one ``KIND_AUTO`` instance (GPU when Triton has one, else CPU).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, gt=0)
    preferred_batch_size: list[int] = Field(default_factory=lambda: [4, 8, 16])
    max_queue_delay_microseconds: int = Field(2000, ge=0)
    instance_kind: Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU"] = "KIND_AUTO"
    instance_count: int = Field(1, gt=0)
    parameters: dict[str, str] = Field(default_factory=dict, description="Extra Triton string parameters.")

    @model_validator(mode="after")
    def _batches_fit(self) -> TritonConfig:
        bad = [b for b in self.preferred_batch_size if not 0 < b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_size {bad} must lie in 1..max_batch_size={self.max_batch_size}"
            )
        return self


@dataclass(frozen=True)
class TensorConfig:
    """One Triton input/output: name, data type and dims *without* the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonModelConfig:
    """The fields of a ``config.pbtxt`` that the registry relies on."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    version_policy: str
    class_names: tuple[str, ...] | None

    def signature(self) -> dict[str, tuple[int, ...]]:
        """Tensor name → dims (batch excluded), inputs then outputs."""
        return {t.name: t.dims for t in (*self.inputs, *self.outputs)}


def _q(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes ``\\" \\\\ \\n \\t`` are valid there; non-ASCII
    stays UTF-8, which protobuf text format accepts)."""
    return json.dumps(text, ensure_ascii=False)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def render_config(
    name: str,
    *,
    input_size: tuple[int, int],
    num_classes: int,
    cam_grid: tuple[int, int],
    class_names: list[str] | tuple[str, ...],
    settings: TritonConfig | None = None,
    generator: str = "mimicry",
) -> str:
    """Render the ``config.pbtxt`` of registry model ``name`` (see the module docstring for its content).

    Args:
        name: Model name (= the model directory name, as Triton requires).
        input_size: ``(H, W)`` of ``image``.
        num_classes: ``K``.
        cam_grid: ``(h, w)`` of the in-graph Grad-CAM.
        class_names: Output classes in logit order, stored as the ``mimicry.class_names`` parameter (a JSON
            list) so that a client of Triton alone can label the outputs.
        settings: Batching / instance settings (:class:`TritonConfig` defaults when ``None``).
        generator: Who generated the file (first comment line).
    """
    s = settings or TritonConfig()
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    h, w = input_size
    ch, cw = cam_grid
    k = num_classes
    tensors_out = [("logits", (k,)), ("probs", (k,)), ("cam", (k, ch, cw))]
    lines = [
        f"# Generated by {generator} (mimicry.registry.pbtxt). Do not edit: shared by every version.",
        f"name: {_q(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {s.max_batch_size}",
        "version_policy: { all { } }",
        "input [",
        "  {",
        f"    name: {_q(INPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {_dims((1, h, w))}",
        "  }",
        "]",
        "output [",
    ]
    for i, (tname, dims) in enumerate(tensors_out):
        lines += [
            "  {",
            f"    name: {_q(tname)}",
            "    data_type: TYPE_FP32",
            f"    dims: {_dims(dims)}",
            "  }" + ("," if i < len(tensors_out) - 1 else ""),
        ]
    lines += ["]", "dynamic_batching {"]
    if s.preferred_batch_size:
        lines.append(f"  preferred_batch_size: {_dims(tuple(s.preferred_batch_size))}")
    lines += [
        f"  max_queue_delay_microseconds: {s.max_queue_delay_microseconds}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {s.instance_count}",
        f"    kind: {s.instance_kind}",
        "  }",
        "]",
    ]
    params = {CLASS_NAMES_PARAMETER: json.dumps(list(class_names)), **s.parameters}
    for key, value in params.items():
        lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    return "\n".join(lines) + "\n"


def parse_pbtxt(text: str) -> ModelConfig:
    """Parse a ``config.pbtxt`` with protobuf's text-format parser into Triton's own ``ModelConfig`` message
    (``tritonclient.grpc.model_config_pb2``): the schema Triton itself loads, so an unknown field, a wrong
    type, an unknown enum value or a scalar given twice is refused exactly as Triton would refuse it.

    Raises:
        PbtxtSyntaxError: the text does not parse against the schema (the message gives line and column).
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        where = f"line {exc.GetLine()}, column {exc.GetColumn()}: " if exc.GetLine() is not None else ""
        raise PbtxtSyntaxError(f"config.pbtxt {where}{_parse_message(exc)}") from None


def _parse_message(exc: Exception) -> str:
    """The parser's reason without its own ``LINE:COLUMN :`` prefix."""
    return re.sub(r"^\d+:\d+ : ", "", str(exc))


def read_model_config(text: str) -> TritonModelConfig:
    """Parse a ``config.pbtxt`` (:func:`parse_pbtxt`) and extract the fields the registry checks.

    Raises:
        PbtxtSyntaxError: the text does not parse, or lacks ``name``, ``platform`` or a ``max_batch_size`` > 0
            (the registry's tensors omit the batch dimension), or its class-name parameter is not a JSON list.
    """
    from tritonclient.grpc import model_config_pb2

    config = parse_pbtxt(text)
    for key in ("name", "platform"):
        if not getattr(config, key):
            raise PbtxtSyntaxError(f"config: missing {key!r}")
    if config.max_batch_size <= 0:
        raise PbtxtSyntaxError("config: 'max_batch_size' is missing or not > 0")
    # No version_policy: Triton's default, latest 1.
    version_policy = config.version_policy.WhichOneof("policy_choice") or "latest"
    class_names: tuple[str, ...] | None = None
    if CLASS_NAMES_PARAMETER in config.parameters:
        raw = config.parameters[CLASS_NAMES_PARAMETER].string_value
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError:
            decoded = None
        if not isinstance(decoded, list):
            raise PbtxtSyntaxError(f"{CLASS_NAMES_PARAMETER} is not a JSON list")
        class_names = tuple(str(c) for c in decoded)

    def tensors(entries: Iterable[Any]) -> tuple[TensorConfig, ...]:
        return tuple(
            TensorConfig(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(int(d) for d in t.dims))
            for t in entries
        )

    return TritonModelConfig(
        name=config.name,
        platform=config.platform,
        max_batch_size=int(config.max_batch_size),
        inputs=tensors(config.input),
        outputs=tensors(config.output),
        version_policy=version_policy,
        class_names=class_names,
    )


def check_compatible(
    existing: TritonModelConfig,
    *,
    name: str,
    input_size: tuple[int, int],
    num_classes: int,
    cam_grid: tuple[int, int],
    class_names: list[str] | tuple[str, ...],
) -> None:
    """Refuse a new version that does not fit the model's existing ``config.pbtxt``.

    Triton serves every version of a model under one configuration, so the input size, class count (and
    names, in order) and CAM grid of a new version must equal the existing ones.

    Raises:
        IncompatibleVersionError: naming each differing property, old and new values.
    """
    k = num_classes
    wanted = {
        INPUT_NAME: (1, *input_size),
        "logits": (k,),
        "probs": (k,),
        "cam": (k, *cam_grid),
    }
    have = existing.signature()
    problems = []
    if existing.name != name:
        problems.append(f"config name {existing.name!r} != directory {name!r}")
    if existing.platform != "onnxruntime_onnx":
        problems.append(f"platform {existing.platform!r} is not onnxruntime_onnx")
    labels = {INPUT_NAME: "input size", "logits": "class count", "probs": "class count", "cam": "cam grid"}
    for tname, dims in wanted.items():
        if have.get(tname) != dims:
            problems.append(f"{labels[tname]}: {tname} dims {list(have.get(tname, ()))} != new {list(dims)}")
    bad_types = [t.name for t in (*existing.inputs, *existing.outputs) if t.data_type != "TYPE_FP32"]
    if bad_types:
        problems.append(f"non-FP32 tensors {bad_types}")
    if existing.class_names is not None and tuple(existing.class_names) != tuple(class_names):
        problems.append(f"class names {list(existing.class_names)} != new {list(class_names)}")
    if problems:
        raise IncompatibleVersionError(
            f"model {name!r}: the new version does not fit its config.pbtxt (Triton serves all versions of "
            f"a model with one config; publish it under another name): " + "; ".join(dict.fromkeys(problems))
        )
