"""Model registry: ONNX export with in-graph Grad-CAM, safetensors twin, model card, Triton layout.

docs/architecture.md, "The registry" and "Why a twin". Public API::

    from mimicry.registry import Registry, ModelRef, ModelCard

    reg = Registry("registry")
    card = reg.publish(model, name="cxr-ee", held_batch=x_val[:8], preprocessing=spec,
                       architecture="toy", arch_kwargs={"width": 8}, seed=0, metrics={"auc": 0.9})
    reg.set_alias("cxr-ee", "candidate", card.version)
    reg.promote("cxr-ee@candidate", alias="production", gate=my_gate)
    session_path = reg.load_onnx_path("cxr-ee@production")   # verified sha256
    twin = reg.load_twin("cxr-ee:1")                           # safetensors, strict
"""

from mimicry.registry.card import (
    CARD_SCHEMA_VERSION,
    INTENDED_USE,
    CodeVersion,
    ModelCard,
    OnnxInfo,
    OnnxTensor,
    ParityReport,
    ReferenceStats,
    UncertaintySpec,
    code_version,
)
from mimicry.registry.errors import (
    AliasNotFoundError,
    CardError,
    ExportError,
    ExportParityError,
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
    ExportResult,
    check_onnx_parity,
    check_twin_parity,
    export_model,
    export_onnx,
)
from mimicry.registry.pbtxt import (
    PbtxtSyntaxError,
    TritonConfig,
    TritonModelConfig,
    parse_pbtxt,
    read_model_config,
    render_config,
)
from mimicry.registry.store import (
    ModelRef,
    ModelSummary,
    Promotion,
    PromotionGate,
    Registry,
    VerifyReport,
    VersionCheck,
)

__all__ = [
    "CARD_SCHEMA_VERSION",
    "DEFAULT_OPSET",
    "INTENDED_USE",
    "AliasNotFoundError",
    "CardError",
    "CodeVersion",
    "ExportError",
    "ExportParityError",
    "ExportResult",
    "IncompatibleVersionError",
    "IntegrityError",
    "InvalidReferenceError",
    "ModelCard",
    "ModelNotFoundError",
    "ModelRef",
    "ModelSummary",
    "OnnxInfo",
    "OnnxTensor",
    "ParityReport",
    "PbtxtSyntaxError",
    "Promotion",
    "PromotionGate",
    "PromotionRefusedError",
    "PublishError",
    "ReferenceStats",
    "Registry",
    "RegistryError",
    "TritonConfig",
    "TritonModelConfig",
    "UncertaintySpec",
    "VerifyReport",
    "VersionCheck",
    "check_onnx_parity",
    "check_twin_parity",
    "code_version",
    "export_model",
    "export_onnx",
    "parse_pbtxt",
    "read_model_config",
    "render_config",
]
