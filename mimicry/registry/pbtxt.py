"""Triton ``config.pbtxt`` for a registry model: generation and a small parser to verify it.

A registry directory is a Triton model repository (DESIGN.md, "The registry"), so every model directory
carries the `model configuration <https://github.com/triton-inference-server/server/blob/main/docs/
user_guide/model_configuration.md>`_ Triton reads: ``platform: "onnxruntime_onnx"``, ``max_batch_size`` > 0
(so every ``dims`` below omits the batch dimension), one FP32 input ``image [1, H, W]`` and three FP32 outputs
``logits [K]``, ``probs [K]``, ``cam [K, h, w]``, ``dynamic_batching``, ``instance_group`` and
``version_policy: { all { } }`` — every published version stays loaded so that aliases (``production``,
``candidate``) can point at any of them (``latest { num_versions: N }`` would unload older aliased versions).

Triton requires one configuration for all versions of a model, hence :func:`check_compatible`.
The parser reads the protobuf text format subset Triton configs use (messages, repeated fields, ``[ ]``
lists, strings, numbers, enum identifiers, ``#`` comments); it returns plain dicts of lists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mimicry.registry.errors import IncompatibleVersionError, RegistryError

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
    """Text that is not a (supported) protobuf text-format message."""


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


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]:,;<>])
    """,
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise PbtxtSyntaxError(f"unexpected character at line {line}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, m.group()))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise PbtxtSyntaxError("unexpected end of text")
        if value is not None and tok[1] != value:
            raise PbtxtSyntaxError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def message(self, close: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise PbtxtSyntaxError(f"missing {close!r}")
                return fields
            if close is not None and tok[1] == close:
                self.take()
                return fields
            kind, key = self.take()
            if kind != "ident":
                raise PbtxtSyntaxError(f"expected a field name, got {key!r}")
            nxt = self.peek()
            if nxt is not None and nxt[1] == ":":
                self.take()
            values = fields.setdefault(key, [])
            nxt = self.peek()
            if nxt is not None and nxt[1] == "[":
                self.take()
                if self.peek() is not None and self.peek()[1] == "]":  # type: ignore[index]
                    self.take()
                else:
                    while True:
                        values.append(self.value())
                        sep = self.take()[1]
                        if sep == "]":
                            break
                        if sep != ",":
                            raise PbtxtSyntaxError(f"expected ',' or ']' in a list of {key!r}")
            else:
                values.append(self.value())
            nxt = self.peek()
            if nxt is not None and nxt[1] in (",", ";"):
                self.take()

    def value(self) -> Any:
        kind, tok = self.take()
        if tok in ("{", "<"):
            return self.message("}" if tok == "{" else ">")
        if kind == "str":
            parts = [tok]
            while self.peek() is not None and self.peek()[0] == "str":  # type: ignore[index]
                parts.append(self.take()[1])  # adjacent literals concatenate
            return "".join(_unquote(p) for p in parts)
        if kind == "num":
            return float(tok) if any(c in tok for c in ".eE") else int(tok)
        if kind == "ident":
            return tok
        raise PbtxtSyntaxError(f"unexpected {tok!r}")


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise PbtxtSyntaxError("bad escape in a string literal") from exc


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [values…]}`` (every field is a list: repeated or not).

    Nested messages become nested dicts of the same shape; enum values are returned as identifiers
    (``"TYPE_FP32"``), integers as ``int``.
    """
    return _Parser(text).message(None)


def _one(fields: dict[str, list[Any]], key: str, where: str) -> Any:
    values = fields.get(key, [])
    if len(values) != 1:
        raise PbtxtSyntaxError(f"{where}: expected exactly one {key!r}, found {len(values)}")
    return values[0]


def _tensors(fields: dict[str, list[Any]], key: str) -> tuple[TensorConfig, ...]:
    out = []
    for t in fields.get(key, []):
        if not isinstance(t, dict):
            raise PbtxtSyntaxError(f"{key} entries must be messages")
        dims = tuple(int(d) for d in t.get("dims", []))
        out.append(TensorConfig(str(_one(t, "name", key)), str(_one(t, "data_type", key)), dims))
    return tuple(out)


def read_model_config(text: str) -> TritonModelConfig:
    """Parse a ``config.pbtxt`` and extract the fields the registry checks.

    Raises:
        PbtxtSyntaxError: the text does not parse or lacks a required field.
    """
    fields = parse_pbtxt(text)
    policy = fields.get("version_policy", [])
    if not policy:
        version_policy = "latest"  # Triton's default: latest 1
    elif isinstance(policy[0], dict) and len(policy[0]) == 1:
        version_policy = next(iter(policy[0]))
    else:
        raise PbtxtSyntaxError("version_policy must hold one of all / latest / specific")
    class_names: tuple[str, ...] | None = None
    for p in fields.get("parameters", []):
        if isinstance(p, dict) and p.get("key") == [CLASS_NAMES_PARAMETER]:
            value = _one(p, "value", "parameters")
            raw = _one(value, "string_value", "parameters") if isinstance(value, dict) else None
            try:
                decoded = json.loads(str(raw))
            except json.JSONDecodeError as exc:
                raise PbtxtSyntaxError(f"{CLASS_NAMES_PARAMETER} is not a JSON list") from exc
            if not isinstance(decoded, list):
                raise PbtxtSyntaxError(f"{CLASS_NAMES_PARAMETER} is not a JSON list")
            class_names = tuple(str(c) for c in decoded)
    return TritonModelConfig(
        name=str(_one(fields, "name", "config")),
        platform=str(_one(fields, "platform", "config")),
        max_batch_size=int(_one(fields, "max_batch_size", "config")),
        inputs=_tensors(fields, "input"),
        outputs=_tensors(fields, "output"),
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
