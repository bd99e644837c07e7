"""ONNX export of a :class:`~mimicry.models.base.CamClassifier` with in-graph Grad-CAM, plus parity checks.

The graph computes ``forward_with_cam``: input ``image`` float32 ``[N, 1, H, W]`` (dynamic ``N``), outputs
``logits [N, K]``, ``probs [N, K]`` (softmax) and ``cam [N, K, h, w]`` — Grad-CAM of every class at the
feature-map grid, exact as a forward op for a GAP → linear head (docs/architecture.md, "Why a twin";
Selvaraju et al.,
ICCV 2017, Eq. 1–2). Export fails loudly (:class:`~mimicry.registry.errors.ExportParityError`) unless, on the
caller's held batch and on batch sizes 1 and > 1 (so the dynamic axis really works):

* ONNX Runtime (CPU) and torch probabilities agree within ``probs_atol`` (1e-5) and logits within
  ``logits_atol`` (1e-4);
* the ONNX ``cam`` equals captum's ``LayerGradCam(model, model.cam_layer)`` with ``relu_attributions=True``,
  per class, within ``cam_atol`` (1e-4) — the in-graph formula is checked against real gradients;
* ``onnx.checker.check_model(full_check=True)`` accepts the graph and its signature is the registry's.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, needs ``onnxscript``)
with ``dynamic_shapes={"image": {0: Dim("batch")}}`` produces a clean graph on torch 2.13 (Conv / Relu /
ReduceMean / Gemm / Softmax / Conv / Div / Clip for the toy model) and is the default; the legacy TorchScript
exporter (``dynamo=False`` with ``dynamic_axes``) is kept as ``exporter="torchscript"``. Opset 18 by default.
The card records which one produced the graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mimicry.models.base import CamClassifier, ModelContractError, assert_contract
from mimicry.registry.card import OnnxInfo, OnnxTensor, ParityReport
from mimicry.registry.errors import ExportError, ExportParityError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "ExportResult",
    "Exporter",
    "cam_layer_name",
    "check_onnx_parity",
    "check_twin_parity",
    "export_model",
    "export_onnx",
    "onnx_signature",
    "twin_state_bytes",
]

Exporter = Literal["dynamo", "torchscript"]
DEFAULT_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probs", "cam")
BATCH_DIM = "batch"

_log = logging.getLogger(__name__)


class _CamGraph(nn.Module):
    """What the ONNX graph computes: ``image -> (logits, probs, cam)`` via ``forward_with_cam``."""

    def __init__(self, model: CamClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.forward_with_cam(image)


@dataclass(frozen=True)
class ExportResult:
    """An exported, parity-checked model, ready for :meth:`Registry.publish_exported`.

    Attributes:
        onnx_bytes: Serialised ``model.onnx``.
        twin_bytes: Serialised ``weights.safetensors`` (the model's ``state_dict``).
        onnx: Exporter and signature, for the card.
        parity: Measured differences (``twin_max_abs_diff`` is filled in at publish).
        class_names: Output classes, in logit order.
        cam_layer: Dotted module path of ``model.cam_layer``.
        reference_input: The held batch (float32 ``[N, 1, H, W]``, CPU numpy).
        reference_outputs: The torch model's ``logits``, ``probs``, ``cam`` on it (numpy).
    """

    onnx_bytes: bytes
    twin_bytes: bytes
    onnx: OnnxInfo
    parity: ParityReport
    class_names: tuple[str, ...]
    cam_layer: str
    reference_input: np.ndarray = field(repr=False)
    reference_outputs: dict[str, np.ndarray] = field(repr=False)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (missing torchvision ops, deprecation notices); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _members(model: CamClassifier) -> list[CamClassifier]:
    """The single models whose Grad-CAM makes up ``model``'s: its members for an ensemble, else itself."""
    from mimicry.models.ensemble import Ensemble

    return list(model.submodels) if isinstance(model, Ensemble) else [model]


def cam_layer_name(model: CamClassifier) -> str:
    """Dotted path of ``model.cam_layer`` among ``model.named_modules()``.

    An :class:`~mimicry.models.ensemble.Ensemble` has no single feature layer: its Grad-CAM is the mean of
    its members' maps, so its name is ``submodels.*.<member layer>`` (all members must agree).
    """
    members = _members(model)
    if members != [model]:
        names = {cam_layer_name(m) for m in members}
        if len(names) != 1:
            raise ExportError(f"ensemble members disagree on their cam layer: {sorted(names)}")
        return f"submodels.*.{names.pop()}"
    target = model.cam_layer
    for name, module in model.named_modules():
        if module is target and name:
            return name
    raise ExportError("model.cam_layer is not a named submodule of the model")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_batch(held_batch: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(held_batch)
    if x.dtype != torch.float32:
        raise ExportError(f"held batch must be float32, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[0] < 1:
        raise ExportError(f"held batch must be [N>=1, 1, H, W], got {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ExportError("held batch contains non-finite values")
    return x.detach().cpu().contiguous()


def _parity_batches(x: Tensor) -> list[Tensor]:
    """Batch size 1 and a batch > 1 (the held batch, or the single image next to its mirror image)."""
    if x.shape[0] > 1:
        return [x[:1], x]
    return [x, torch.cat([x, x.flip(-1)])]


def export_onnx(
    model: CamClassifier,
    example: Tensor,
    *,
    exporter: Exporter = "dynamo",
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """Export ``model.forward_with_cam`` to ONNX (dynamic batch) and return the checked, serialised graph.

    Args:
        model: The classifier (exported in eval mode; its mode is restored).
        example: An example input ``[N >= 2, 1, H, W]`` (torch.export would specialise a batch of 1).
        exporter: ``"dynamo"`` (default) or ``"torchscript"``.
        opset: ONNX opset (>= 17).

    Raises:
        ExportError: the exporter failed or ``onnx.checker`` refused the graph.
    """
    import onnx

    if opset < 17:
        raise ExportError(f"opset {opset} < 17 is not supported")
    if example.shape[0] < 2:
        raise ExportError("the export example must hold at least 2 images (dynamic batch)")
    device = _model_device(model)
    wrapper = _CamGraph(model)
    example = example.to(device)
    try:
        with _eval_mode(model), _quiet_exporter(), torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    wrapper,
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_shapes={INPUT_NAME: {0: torch.export.Dim(BATCH_DIM)}},
                    opset_version=opset,
                    optimize=True,
                    verbose=False,
                )
                if program is None:  # pragma: no cover - torch returns a program for dynamo=True
                    raise ExportError("torch.onnx.export(dynamo=True) returned no program")
                proto = program.model_proto
            elif exporter == "torchscript":
                import io

                buf = io.BytesIO()
                torch.onnx.export(
                    wrapper,
                    (example,),
                    buf,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_axes={n: {0: BATCH_DIM} for n in (INPUT_NAME, *OUTPUT_NAMES)},
                    opset_version=opset,
                    do_constant_folding=True,
                )
                proto = onnx.load_from_string(buf.getvalue())
            else:
                raise ExportError(f"unknown exporter {exporter!r}; use 'dynamo' or 'torchscript'")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export ({exporter}) failed: {type(exc).__name__}: {exc}") from exc
    class_names = list(model.class_names)
    onnx.helper.set_model_props(
        proto,
        {
            "mimicry.class_names": json.dumps(class_names),
            "mimicry.cam_layer": cam_layer_name(model),
            "mimicry.exporter": exporter,
        },
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker refused the exported graph: {exc}") from exc
    return proto.SerializeToString()


def onnx_signature(onnx_bytes: bytes) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    """Inputs and outputs of a serialised graph, checked against the registry signature.

    ``image`` float32 rank 4 with a symbolic batch dimension; outputs exactly ``logits`` (rank 2),
    ``probs`` (rank 2), ``cam`` (rank 4), float32, symbolic batch, static other dimensions.

    Raises:
        ExportError: the graph has another signature.
    """
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    initializers = {i.name for i in proto.graph.initializer}

    def tensors(values: Any) -> list[OnnxTensor]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            tt = v.type.tensor_type
            if tt.elem_type != onnx.TensorProto.FLOAT:
                raise ExportError(f"graph tensor {v.name!r} is not float32")
            shape: list[int | str] = [
                d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim
            ]
            out.append(OnnxTensor(name=v.name, shape=shape))
        return out

    inputs, outputs = tensors(proto.graph.input), tensors(proto.graph.output)
    if [t.name for t in inputs] != [INPUT_NAME] or [t.name for t in outputs] != list(OUTPUT_NAMES):
        raise ExportError(
            f"graph signature {[t.name for t in inputs]} -> {[t.name for t in outputs]} is not "
            f"[{INPUT_NAME!r}] -> {list(OUTPUT_NAMES)}"
        )
    for t, rank in zip((*inputs, *outputs), (4, 2, 2, 4), strict=True):
        if len(t.shape) != rank:
            raise ExportError(f"graph tensor {t.name!r} has rank {len(t.shape)}, expected {rank}")
        if not isinstance(t.shape[0], str):
            raise ExportError(f"graph tensor {t.name!r} has a static batch dimension {t.shape[0]}")
        if not all(isinstance(d, int) and d > 0 for d in t.shape[1:]):
            raise ExportError(f"graph tensor {t.name!r} must have static non-batch dims, got {t.shape[1:]}")
    return inputs, outputs


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _captum_cams(model: CamClassifier, x: Tensor) -> np.ndarray:
    """captum ``LayerGradCam(relu_attributions=True)`` at ``model.cam_layer``, every class → [N, K, h, w].

    For an ensemble: the mean of the members' captum maps (the ensemble's Grad-CAM by definition).
    """
    from captum.attr import LayerGradCam

    members = _members(model)
    if members != [model]:
        return np.mean([_captum_cams(m, x) for m in members], axis=0)

    gc = LayerGradCam(model, model.cam_layer)
    maps = []
    with torch.enable_grad():
        for c in range(model.num_classes):
            maps.append(gc.attribute(x, target=c, relu_attributions=True).detach()[:, 0])
    return torch.stack(maps, dim=1).cpu().numpy()


def _raise_if(check: str, measured: float, tolerance: float, details: dict[str, Any], what: str) -> None:
    if not measured <= tolerance:  # also catches NaN
        raise ExportParityError(
            f"export parity failed: {what}: max |diff| = {measured:.3g} > {tolerance:.3g}",
            check=check,
            measured=measured,
            tolerance=tolerance,
            details=details,
        )


def check_onnx_parity(
    model: CamClassifier,
    onnx_bytes: bytes,
    held_batch: Tensor | np.ndarray,
    *,
    probs_atol: float = 1e-5,
    logits_atol: float = 1e-4,
    cam_atol: float = 1e-4,
) -> ParityReport:
    """Run the graph in ONNX Runtime (CPU) on batch sizes 1 and > 1 from the held batch and compare.

    References: torch ``logits = model(x)``, ``probs = softmax(logits)`` (the plain forward, not
    ``forward_with_cam``, so a wrong probability head is caught) and captum ``LayerGradCam`` per class.

    Raises:
        ExportParityError: the first check that exceeds its tolerance (``check`` names it).
    """
    import captum

    x = _as_batch(held_batch)
    device = _model_device(model)
    session = _session(onnx_bytes)
    d: dict[str, float] = {"probs": 0.0, "logits": 0.0, "cam_vs_torch": 0.0, "cam_vs_captum": 0.0}
    batches = _parity_batches(x)
    with _eval_mode(model):
        for b in batches:
            ort_logits, ort_probs, ort_cam = session.run(list(OUTPUT_NAMES), {INPUT_NAME: b.numpy()})
            xb = b.to(device)
            with torch.no_grad():
                logits = model(xb)
                probs = torch.softmax(logits, dim=1)
                _, _, cam = model.forward_with_cam(xb)
            captum_cam = _captum_cams(model, xb)
            d["logits"] = max(d["logits"], _max_abs(ort_logits, logits.cpu().numpy()))
            d["probs"] = max(d["probs"], _max_abs(ort_probs, probs.cpu().numpy()))
            d["cam_vs_torch"] = max(d["cam_vs_torch"], _max_abs(ort_cam, cam.cpu().numpy()))
            d["cam_vs_captum"] = max(d["cam_vs_captum"], _max_abs(ort_cam, captum_cam))
    sizes = [int(b.shape[0]) for b in batches]
    _raise_if(
        "probs", d["probs"], probs_atol, d, f"ONNX Runtime vs torch probabilities (batch sizes {sizes})"
    )
    _raise_if("logits", d["logits"], logits_atol, d, f"ONNX Runtime vs torch logits (batch sizes {sizes})")
    _raise_if("cam_vs_torch", d["cam_vs_torch"], cam_atol, d, "ONNX cam vs torch forward_with_cam")
    _raise_if("cam_vs_captum", d["cam_vs_captum"], cam_atol, d, "ONNX cam vs captum LayerGradCam (per class)")
    return ParityReport(
        batch_sizes=sizes,
        held_batch_size=int(x.shape[0]),
        probs_max_abs_diff=d["probs"],
        logits_max_abs_diff=d["logits"],
        cam_vs_torch_max_abs_diff=d["cam_vs_torch"],
        cam_vs_captum_max_abs_diff=d["cam_vs_captum"],
        probs_atol=probs_atol,
        logits_atol=logits_atol,
        cam_atol=cam_atol,
        captum_version=str(captum.__version__),
        onnxruntime_provider=session.get_providers()[0],
    )


def check_twin_parity(twin: CamClassifier, result: ExportResult) -> float:
    """Compare a rebuilt twin's ``forward_with_cam`` on the held batch with the source model's outputs.

    Returns:
        The maximum absolute difference over logits, probs and cam.

    Raises:
        ExportParityError: (``check="twin"``) a difference above the export tolerances.
    """
    x = torch.from_numpy(result.reference_input).to(_model_device(twin))
    with _eval_mode(twin), torch.no_grad():
        outs = [o.cpu().numpy() for o in twin.forward_with_cam(x)]
    tol = {
        "logits": result.parity.logits_atol,
        "probs": result.parity.probs_atol,
        "cam": result.parity.cam_atol,
    }
    diffs = {n: _max_abs(o, result.reference_outputs[n]) for n, o in zip(OUTPUT_NAMES, outs, strict=True)}
    for n in OUTPUT_NAMES:
        _raise_if("twin", diffs[n], tol[n], diffs, f"safetensors twin vs source model ({n})")
    return max(diffs.values())


def twin_state_bytes(model: nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """The model's ``state_dict`` serialised with safetensors (CPU, contiguous; no pickle)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        return save(tensors, metadata=metadata)
    except Exception as exc:  # e.g. tied weights sharing storage
        raise ExportError(f"cannot serialise the state_dict with safetensors: {exc}") from exc


def export_model(
    model: CamClassifier,
    held_batch: Tensor | np.ndarray,
    *,
    exporter: Exporter = "dynamo",
    opset: int = DEFAULT_OPSET,
    probs_atol: float = 1e-5,
    logits_atol: float = 1e-4,
    cam_atol: float = 1e-4,
) -> ExportResult:
    """Check the model contract, export to ONNX, check parity, and serialise the safetensors twin.

    Args:
        model: A :class:`CamClassifier` (any device; exported in eval mode).
        held_batch: Held-out images ``float32 [N, 1, H, W]`` preprocessed as the card says.
        exporter, opset: See :func:`export_onnx`.
        probs_atol, logits_atol, cam_atol: Parity tolerances (spec: 1e-5 probs, 1e-4 Grad-CAM).

    Raises:
        ExportError: the model breaks the contract or the exporter fails.
        ExportParityError: a parity check fails.
    """
    import onnx
    import onnxruntime

    x = _as_batch(held_batch)
    h, w = int(x.shape[2]), int(x.shape[3])
    if not isinstance(model, CamClassifier):
        raise ExportError(f"{type(model).__name__} is not a CamClassifier")
    try:
        for member in _members(model):
            assert_contract(member, size=h)
    except ModelContractError as exc:
        raise ExportError(f"model breaks the CamClassifier contract: {exc}") from exc
    batches = _parity_batches(x)
    onnx_bytes = export_onnx(model, batches[-1], exporter=exporter, opset=opset)
    inputs, outputs = onnx_signature(onnx_bytes)
    parity = check_onnx_parity(
        model, onnx_bytes, x, probs_atol=probs_atol, logits_atol=logits_atol, cam_atol=cam_atol
    )
    k = model.num_classes
    if inputs[0].shape[1:] != [1, h, w] or outputs[0].shape[1:] != [k] or outputs[1].shape[1:] != [k]:
        raise ExportError(f"graph shapes {inputs[0].shape} -> {outputs[0].shape} do not match the model")
    cam_shape = outputs[2].shape
    if cam_shape[1] != k:
        raise ExportError(f"graph cam has {cam_shape[1]} classes, model has {k}")
    call = (
        f"torch.onnx.export(dynamo=True, dynamic_shapes={{'{INPUT_NAME}': {{0: Dim('{BATCH_DIM}')}}}}, "
        "optimize=True)"
        if exporter == "dynamo"
        else "torch.onnx.export(dynamo=False, dynamic_axes=batch on every tensor, do_constant_folding=True)"
    )
    info = OnnxInfo(
        opset=opset,
        ir_version=int(onnx.load_from_string(onnx_bytes).ir_version),
        exporter=exporter,
        exporter_call=call,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        onnxruntime_version=onnxruntime.__version__,
        inputs=inputs,
        outputs=outputs,
        input_size=(h, w),
        num_classes=k,
        cam_grid=(int(cam_shape[2]), int(cam_shape[3])),
    )
    device = _model_device(model)
    with _eval_mode(model), torch.no_grad():
        ref = model.forward_with_cam(x.to(device))
    reference = {n: t.detach().cpu().numpy() for n, t in zip(OUTPUT_NAMES, ref, strict=True)}
    twin = twin_state_bytes(model, metadata={"format": "pt"})
    _log.info("exported %s (%s, opset %d): parity %s", type(model).__name__, exporter, opset, parity)
    return ExportResult(
        onnx_bytes=onnx_bytes,
        twin_bytes=twin,
        onnx=info,
        parity=parity,
        class_names=tuple(model.class_names),
        cam_layer=cam_layer_name(model),
        reference_input=x.numpy().copy(),
        reference_outputs=reference,
    )
