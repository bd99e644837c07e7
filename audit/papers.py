"""The seed papers' tables on the phantom, scored by the audit and read back from its history.

Two tables, each from one :func:`audit.runner.run_audit` of a published model (with a history database), then
read back from that database (:class:`audit.history.History`: summaries and verdicts of the model's latest
finished run) — the same numbers ``mimicry audit run --history DB`` stores and ``mimicry audit history``
prints; no metric is computed here.

* :func:`arun_table` — Arun et al. 2021 (Radiology: AI, "Assessing the trustworthiness of saliency maps for
  localizing abnormalities in medical imaging"), Table 2: the eight methods × Utility (localisation AUPRC vs
  the average-mask low baseline "AVG"), Randomization (cascading randomisation to the bottom-most layer: SSIM
  vs the degradation threshold), Repeatability (SSIM between two seeds of one architecture vs the low
  baseline SSIM = 0.5, "LOW") and Reproducibility (SSIM between two architectures trained on the same data vs
  0.5), PASS/FAIL by the policy's criteria ``utility_avg``, ``randomisation``, ``repeatability_low`` and
  ``reproducibility_low``. The paper's high baselines (a U-Net / RetinaNet trained as localisers: the UNET and
  RNET sub-columns) are not trained here: those cells are "—".
* :func:`khakzar_table` — Khakzar et al. 2021 (MICCAI, "Towards semantic interpretation of thoracic disease
  and COVID-19 diagnosis models"): IBA, Inverse IBA and multi-layer IBA vs Grad-CAM and integrated gradients
  (the paper's Table 1 columns we have), rows: mean IoU of the thresholded map with the finding (Table 1; our
  threshold is the map's top 10 %), AUPRC and pointing game against the finding masks, insertion / deletion
  AUC (Fig. 2, blurred-image baseline); plus the mean IoU per class (the shape of the paper's Table 2, one
  row per detector) and the faithfulness criterion's verdict. The bottleneck sits on the output of the last
  dense block, multi-layer IBA on dense blocks 1-3, as in the paper.

Each table also states which of the paper's claims hold on the phantom (``claims``: a boolean per claim,
computed from the table's values). Presets (:data:`AUDIT_PRESETS`) size the audit (cases, pairwise cases,
method parameters); the training side is :mod:`training.papers`, the command ``mimicry bench arun2021`` /
``khakzar2021`` composes the two.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError

__all__ = [
    "ARUN_CRITERIA",
    "ARUN_METHODS",
    "ARUN_PAPER",
    "AUDIT_PRESETS",
    "IBA_LAYERS",
    "KHAKZAR_METHODS",
    "KHAKZAR_METRICS",
    "AuditPreset",
    "PapersAuditError",
    "arun_table",
    "khakzar_table",
    "render_arun",
    "render_khakzar",
]


class PapersAuditError(AuditError):
    """A paper table cannot be produced (unknown preset, the audit reported errors, no stored run)."""


#: Arun et al.'s eight methods in the paper's row order, with the paper's abbreviations.
ARUN_METHODS: dict[str, str] = {
    "gradient": "GRAD",
    "smoothgrad": "SG",
    "integrated_gradients": "IG",
    "smooth_ig": "SIG",
    "gradcam": "GCAM",
    "xrai": "XRAI",
    "guided_backprop": "GBP",
    "guided_gradcam": "GGCAM",
}
#: Table 2's columns: (policy criterion id, group, sub-column). The UNET/RNET high-baseline columns are "—".
ARUN_CRITERIA: tuple[tuple[str, str, str], ...] = (
    ("utility_avg", "Utility", "AVG"),
    ("randomisation", "Randomization", ""),
    ("repeatability_low", "Repeatability", "LOW"),
    ("reproducibility_low", "Reproducibility", "LOW"),
)
ARUN_CHECKS: tuple[str, ...] = ("localisation", "cascading_randomisation", "repeatability", "reproducibility")
#: The paper's Table 2 (AVG, randomisation, repeatability LOW, reproducibility LOW) for (a) SIIM-ACR
#: pneumothorax and (b) RSNA pneumonia, True = PASS.
ARUN_PAPER: dict[str, dict[str, tuple[bool, bool, bool, bool]]] = {
    "siim": {
        "gradient": (False, False, False, False),
        "smoothgrad": (False, False, False, False),
        "integrated_gradients": (False, False, False, False),
        "smooth_ig": (False, False, False, False),
        "gradcam": (False, True, False, False),
        "xrai": (True, False, True, False),
        "guided_backprop": (False, True, False, False),
        "guided_gradcam": (False, True, True, False),
    },
    "rsna": {
        "gradient": (False, True, False, False),
        "smoothgrad": (False, True, False, False),
        "integrated_gradients": (False, False, False, False),
        "smooth_ig": (False, True, False, False),
        "gradcam": (False, True, True, True),
        "xrai": (True, False, True, True),
        "guided_backprop": (False, True, True, False),
        "guided_gradcam": (False, True, True, True),
    },
}

#: Khakzar et al.'s comparison, in the paper's column order (the methods we have).
KHAKZAR_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "integrated_gradients": "InteGrad",
    "iba": "IBA",
    "inverse_iba": "Inverse IBA",
    "multilayer_iba": "Multi-layer IBA",
}
#: Rows: (check, metric, label, direction: +1 higher is better).
KHAKZAR_METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("localisation", "iou", "mean IoU (top 10 %) ↑", 1),
    ("localisation", "auprc", "AUPRC ↑", 1),
    ("localisation", "pointing_game", "pointing game ↑", 1),
    ("faithfulness", "insertion_auc", "insertion AUC ↑", 1),
    ("faithfulness", "deletion_auc", "deletion AUC ↓", -1),
    ("faithfulness", "insertion_minus_deletion", "insertion − deletion ↑", 1),
)
KHAKZAR_CHECKS: tuple[str, ...] = ("localisation", "faithfulness")
KHAKZAR_CRITERION = "faithfulness"

#: Bottleneck layers per architecture: (IBA / Inverse IBA layer, multi-layer IBA layers). The paper inserts
#: the bottleneck after DenseBlock 3 and multi-layer IBA after DenseBlocks 1, 2 and 3.
IBA_LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "densenet_tiny": (
        "backbone.denseblock3",
        ("backbone.denseblock1", "backbone.denseblock2", "backbone.denseblock3"),
    ),
    "densenet121": (
        "backbone.denseblock3",
        ("backbone.denseblock1", "backbone.denseblock2", "backbone.denseblock3"),
    ),
}


@dataclass(frozen=True)
class AuditPreset:
    """Sizes of the audit behind a table.

    Attributes:
        max_cases: test cases scored (``None``: all). pairwise_cases: cases of the model-level checks
            (randomisation, repeatability, reproducibility).
        n_pairs: image pairs of the degradation threshold.
        faithfulness_steps: insertion / deletion steps. stats_samples: training images for IBA's statistics.
        method_params: per-method keyword arguments (the paper defaults where not given).
    """

    max_cases: int | None
    pairwise_cases: int
    n_pairs: int
    faithfulness_steps: int
    stats_samples: int
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)


AUDIT_PRESETS: dict[str, AuditPreset] = {
    "smoke": AuditPreset(
        max_cases=4,
        pairwise_cases=2,
        n_pairs=3,
        faithfulness_steps=4,
        stats_samples=8,
        method_params={
            "smoothgrad": {"n_samples": 2},
            "integrated_gradients": {"steps": 4},
            "smooth_ig": {"n_samples": 2, "steps": 4},
            "xrai": {"steps": 4, "algorithm": "fast"},
            "iba": {"steps": 2},
            "inverse_iba": {"steps": 2},
            "multilayer_iba": {"steps": 2},
        },
    ),
    # One core: at 64² XRAI ("fast", 50 steps) and IBA cost about 0.5 s of CPU per map, multi-layer IBA three
    # times that, the others under 0.1 s (smooth IG 0.3 s); the full test split, 16 pairwise cases. Audit CPU
    # time: 312 s for Arun et al.'s table, 60 s for Khakzar et al.'s (docs/results.md).
    "quick": AuditPreset(
        max_cases=None,
        pairwise_cases=16,
        n_pairs=50,
        faithfulness_steps=32,
        stats_samples=256,
        method_params={
            "integrated_gradients": {"steps": 25},
            "smooth_ig": {"n_samples": 10, "steps": 25},
            "xrai": {"steps": 50, "algorithm": "fast"},
        },
    ),
    # The paper defaults (XRAI full with 100 steps, SmoothGrad / smooth IG 25 samples, IBA 10 steps).
    "gpu": AuditPreset(
        max_cases=None,
        pairwise_cases=32,
        n_pairs=50,
        faithfulness_steps=64,
        stats_samples=1000,
        method_params={"integrated_gradients": {"steps": 25}},
    ),
}


def _preset(preset: str | AuditPreset) -> tuple[str, AuditPreset]:
    if isinstance(preset, AuditPreset):
        return "custom", preset
    if preset not in AUDIT_PRESETS:
        raise PapersAuditError(f"unknown preset {preset!r}; use one of {', '.join(AUDIT_PRESETS)}")
    return preset, AUDIT_PRESETS[preset]


def paper_policy(preset: AuditPreset, methods: list[str], architecture: str, policy_path: Path | None = None):
    """The policy (default, or ``policy_path``: its criteria and statistics settings) with the preset's
    sizes and method parameters, and the bottleneck layers of ``architecture`` for the IBA methods."""
    from audit.policy import Policy, load_policy

    base = load_policy(policy_path)
    # The preset's parameters replace the policy's (the methods' paper defaults where the preset is silent).
    params: dict[str, dict[str, Any]] = {m: dict(preset.method_params.get(m, {})) for m in methods}
    if architecture in IBA_LAYERS:
        layer, layers = IBA_LAYERS[architecture]
        for m in ("iba", "inverse_iba"):
            params[m] = {"layer": layer, **params.get(m, {})}
        params["multilayer_iba"] = {"layers": list(layers), **params.get("multilayer_iba", {})}
    for m in ("iba", "inverse_iba", "multilayer_iba"):
        if m in methods:
            params[m] = {"stats_samples": preset.stats_samples, **params[m]}
    data = base.model_dump(mode="python")
    data.update(
        methods=list(methods),
        method_params={m: params[m] for m in methods if params.get(m)},
        max_cases=preset.max_cases,
        pairwise_cases=preset.pairwise_cases,
        randomisation={**data["randomisation"], "n_pairs": preset.n_pairs},
        faithfulness={**data["faithfulness"], "steps": preset.faithfulness_steps},
    )
    return Policy.model_validate(data)


def _audit_and_read(
    registry: Path,
    model: str,
    reference: Path,
    methods: list[str],
    checks: tuple[str, ...],
    policy: Any,
    history_path: Path,
) -> dict[str, Any]:
    """Run the audit of ``model`` into ``history_path`` and read its latest finished run back."""
    from audit.history import History
    from audit.runner import AuditConfig, run_audit

    t0 = time.perf_counter()
    c0 = time.process_time()
    report = run_audit(
        AuditConfig(
            registry=registry,
            models=[model],
            reference=reference,
            policy=policy,
            methods=methods,
            checks=list(checks),
            history_path=history_path,
        )
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    errors = [e for a in report.models for e in a.errors]
    if errors:
        raise PapersAuditError(f"the audit of {model} reported errors: {'; '.join(errors)}")
    audited = report.models[0]
    with History(history_path) as history:
        run = history.latest_finished(audited.name, audited.version, audited.sha256)
        if run is None:
            raise PapersAuditError(f"the history {history_path} holds no finished run of {audited.ref}")
        summaries = {(s["check"], s["method"], s["metric"]): s for s in history.summaries(run.id)}
        verdicts = {(v["criterion"], v["method"]): v for v in history.verdicts(run.id)}
        results = history.results(run.id)
    return {
        "run_id": run.id,
        "ref": audited.ref,
        "architecture": audited.architecture,
        "summaries": summaries,
        "verdicts": verdicts,
        "results": results,
        "audit_seconds": seconds,
        "audit_cpu_seconds": cpu,
    }


def _num(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _card_architecture(registry: Path, model: str) -> str:
    from mimicry.registry import Registry

    return Registry(registry).card(model).architecture


def _write(out: Path, table: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(table, indent=2, allow_nan=False), encoding="utf-8")
    (out / "results.md").write_text(markdown, encoding="utf-8")


# --------------------------------------------------------------------------------------------- Arun et al.


def arun_table(
    registry: str | Path,
    model: str,
    reference: str | Path,
    out: str | Path,
    *,
    preset: str | AuditPreset = "quick",
    policy_path: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Arun et al.'s Table 2 for ``model`` (its replicates and other architectures come from the registry).

    Writes ``out/results.json`` + ``out/results.md`` and the history ``out/history.sqlite``; returns the
    table:
    ``rows[method][criterion] = {value, threshold, status, op, n}`` (status from the stored verdict),
    ``criteria`` (id, group, label, check, metric, statistic, op, threshold spec), ``paper`` (the paper's
    PASS/FAIL), ``agreement`` (cells equal to the paper's, per dataset) and ``claims``.
    """
    name, p = _preset(preset)
    registry, reference, out = Path(registry), Path(reference), Path(out)
    methods = list(ARUN_METHODS)
    policy = paper_policy(p, methods, _card_architecture(registry, model), policy_path)
    criteria = {c.id: c for c in policy.criteria}
    missing = [cid for cid, *_ in ARUN_CRITERIA if cid not in criteria]
    if missing:
        raise PapersAuditError(f"the policy has no criteria {missing} (Arun et al.'s Table 2 needs them)")
    read = _audit_and_read(registry, model, reference, methods, ARUN_CHECKS, policy, out / "history.sqlite")
    rows: dict[str, dict[str, Any]] = {}
    for m in methods:
        row: dict[str, Any] = {}
        for cid, *_ in ARUN_CRITERIA:
            c = criteria[cid]
            v = read["verdicts"].get((cid, m))
            s = read["summaries"].get((c.check, m, c.metric))
            row[cid] = {
                "value": _num(v["value"]) if v else None,
                "threshold": _num(v["threshold"]) if v else None,
                "status": v["status"] if v else "N/A",
                "op": c.op,
                "n": int(s["n"]) if s else 0,
                "mean": _num(s["mean"]) if s else None,
                "std": _num(s["std"]) if s else None,
            }
        rows[m] = row
    agreement = {}
    for dataset, paper in ARUN_PAPER.items():
        same = total = 0
        for m in methods:
            for i, (cid, *_) in enumerate(ARUN_CRITERIA):
                st = rows[m][cid]["status"]
                if st in ("PASS", "FAIL"):
                    total += 1
                    same += int((st == "PASS") == paper[m][i])
        agreement[dataset] = {"agree": same, "of": total}

    def passes(m: str, cid: str) -> bool:
        return rows[m][cid]["status"] == "PASS"

    claims = {
        "no method passes all four criteria": not any(
            all(passes(m, c) for c, *_ in ARUN_CRITERIA) for m in methods
        ),
        "XRAI is the only method above the average-mask utility baseline": [
            m for m in methods if passes(m, "utility_avg")
        ]
        == ["xrai"],
        "Grad-CAM, guided backprop and guided Grad-CAM pass the randomisation test": all(
            passes(m, "randomisation") for m in ("gradcam", "guided_backprop", "guided_gradcam")
        ),
        "integrated gradients fails the randomisation test": not passes(
            "integrated_gradients", "randomisation"
        ),
        "gradient, SmoothGrad, IG and smooth IG fail repeatability and reproducibility": not any(
            passes(m, c)
            for m in ("gradient", "smoothgrad", "integrated_gradients", "smooth_ig")
            for c in ("repeatability_low", "reproducibility_low")
        ),
        "Grad-CAM-based methods and XRAI are the most repeatable (SSIM)": _top_by(
            rows, "repeatability_low", {"gradcam", "guided_gradcam", "xrai"}
        ),
    }
    table = {
        "format": 1,
        "paper": "Arun et al. 2021, Table 2",
        "meta": {
            "preset": name,
            "audit_preset": asdict(p),
            "model": read["ref"],
            "architecture": read["architecture"],
            "history": str(out / "history.sqlite"),
            "history_run_id": read["run_id"],
            "checks": list(ARUN_CHECKS),
            "policy_sha256": policy.sha256,
            "audit_seconds": round(read["audit_seconds"], 1),
            "audit_cpu_seconds": round(read["audit_cpu_seconds"], 1),
            **(meta or {}),
        },
        "criteria": [
            {
                "id": cid,
                "group": group,
                "label": label,
                "check": criteria[cid].check,
                "metric": criteria[cid].metric,
                "statistic": criteria[cid].statistic,
                "op": criteria[cid].op,
                "threshold": (
                    criteria[cid].threshold.model_dump()
                    if hasattr(criteria[cid].threshold, "model_dump")
                    else criteria[cid].threshold
                ),
            }
            for cid, group, label in ARUN_CRITERIA
        ],
        "rows": rows,
        "paper_table": {d: {m: list(v) for m, v in t.items()} for d, t in ARUN_PAPER.items()},
        "agreement": agreement,
        "claims": claims,
    }
    _write(out, table, render_arun(table))
    return table


def _top_by(rows: dict[str, dict[str, Any]], cid: str, expected: set[str]) -> bool:
    """Whether the ``len(expected)`` methods with the highest value of ``cid`` are ``expected``."""
    vals = [(r[cid]["value"], m) for m, r in rows.items() if r[cid]["value"] is not None]
    if len(vals) < len(expected):
        return False
    top = {m for _, m in sorted(vals, reverse=True)[: len(expected)]}
    return top == expected


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def render_arun(table: dict[str, Any]) -> str:
    """Table 2 as markdown: PASS/FAIL (value vs threshold) per method and criterion; "—" = not run here."""
    head1 = "| Method | Utility AVG | Utility UNET | Randomization | Repeatability LOW | Repeatability UNET "
    head1 += "| Reproducibility LOW | Reproducibility UNET |"
    lines = [head1, "|" + "---|" * 8]
    for m, abbr in ARUN_METHODS.items():
        row = table["rows"][m]
        cells = []
        for cid, *_ in ARUN_CRITERIA:
            c = row[cid]
            cells.append(f"{c['status']} ({_fmt(c['value'])} {c['op']} {_fmt(c['threshold'])})")
        lines.append(f"| {abbr} | {cells[0]} | — | {cells[1]} | {cells[2]} | — | {cells[3]} | — |")
    meta = table["meta"]
    lines += [
        "",
        "Paper (SIIM-ACR / RSNA) for comparison, AVG · Randomization · Repeat. LOW · Reprod. LOW:",
        "",
    ]
    lines += ["| Method | SIIM-ACR | RSNA | this run |", "|---|---|---|---|"]
    for m, abbr in ARUN_METHODS.items():

        def pf(bits: list[bool]) -> str:
            return " ".join("PASS" if b else "FAIL" for b in bits)

        ours = " ".join(table["rows"][m][cid]["status"] for cid, *_ in ARUN_CRITERIA)
        paper = table["paper_table"]
        lines.append(f"| {abbr} | {pf(paper['siim'][m])} | {pf(paper['rsna'][m])} | {ours} |")
    ag = table["agreement"]
    lines += [
        "",
        f"Cells equal to the paper's: SIIM-ACR {ag['siim']['agree']}/{ag['siim']['of']}, "
        f"RSNA {ag['rsna']['agree']}/{ag['rsna']['of']}.",
        "",
        "Claims of the paper on this run:",
        "",
    ]
    lines += [f"* {claim}: {'yes' if ok else 'no'}" for claim, ok in table["claims"].items()]
    lines += [
        "",
        f"model `{meta['model']}` ({meta['architecture']}), preset `{meta['preset']}`, history run "
        f"{meta['history_run_id']}; audit {meta['audit_seconds']} s wall, {meta['audit_cpu_seconds']} s CPU.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- Khakzar et al.


def khakzar_table(
    registry: str | Path,
    model: str,
    reference: str | Path,
    out: str | Path,
    *,
    preset: str | AuditPreset = "quick",
    policy_path: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Khakzar et al.'s comparison for ``model``: ``metrics[metric][method] = {mean, std, n}``,
    ``per_class[class][method]`` = mean IoU, ``verdicts[method]`` = the faithfulness criterion, ``claims``.
    Writes ``out/results.json`` + ``out/results.md`` and the history ``out/history.sqlite``.
    """
    name, p = _preset(preset)
    registry, reference, out = Path(registry), Path(reference), Path(out)
    methods = list(KHAKZAR_METHODS)
    architecture = _card_architecture(registry, model)
    if architecture not in IBA_LAYERS:
        raise PapersAuditError(
            f"no bottleneck layers known for {architecture!r}; Khakzar et al.'s table needs one of "
            f"{', '.join(IBA_LAYERS)}"
        )
    policy = paper_policy(p, methods, architecture, policy_path)
    criteria = {c.id: c for c in policy.criteria}
    read = _audit_and_read(
        registry, model, reference, methods, KHAKZAR_CHECKS, policy, out / "history.sqlite"
    )
    metrics: dict[str, dict[str, Any]] = {}
    for check, metric, _, _ in KHAKZAR_METRICS:
        metrics[metric] = {}
        for m in methods:
            s = read["summaries"].get((check, m, metric))
            metrics[metric][m] = {
                "mean": _num(s["mean"]) if s else None,
                "std": _num(s["std"]) if s else None,
                "n": int(s["n"]) if s else 0,
            }
    # Mean IoU per class from the stored per-case values (the shape of the paper's Table 2).
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for check, method, metric, cls, _case, value in read["results"]:
        if check == "localisation" and metric == "iou" and value is not None and math.isfinite(value):
            acc[cls][method].append(float(value))
    per_class = {
        cls: {m: (sum(v) / len(v) if (v := by[m]) else None) for m in methods}
        for cls, by in sorted(acc.items())
    }
    verdicts = {}
    if KHAKZAR_CRITERION in criteria:
        for m in methods:
            v = read["verdicts"].get((KHAKZAR_CRITERION, m))
            verdicts[m] = {
                "status": v["status"] if v else "N/A",
                "value": _num(v["value"]) if v else None,
                "threshold": _num(v["threshold"]) if v else None,
                "op": criteria[KHAKZAR_CRITERION].op,
            }

    def mean(metric: str, m: str) -> float:
        v = metrics[metric][m]["mean"]
        return -math.inf if v is None else v

    iba = ("iba", "inverse_iba", "multilayer_iba")
    claims = {
        "multi-layer IBA has the highest mean IoU (Table 1)": max(methods, key=lambda m: mean("iou", m))
        == "multilayer_iba",
        "IBA's mean IoU is at least Grad-CAM's and IG's (Table 1)": mean("iou", "iba")
        >= max(mean("iou", "gradcam"), mean("iou", "integrated_gradients")),
        "Inverse IBA's mean IoU exceeds IBA's (Table 2, BrixIA)": mean("iou", "inverse_iba")
        > mean("iou", "iba"),
        "an IBA variant has the highest insertion AUC (Fig. 2)": max(
            methods, key=lambda m: mean("insertion_auc", m)
        )
        in iba,
        "an IBA variant has the lowest deletion AUC (Fig. 2)": max(
            methods, key=lambda m: -mean("deletion_auc", m)
        )
        in iba,
    }
    table = {
        "format": 1,
        "paper": "Khakzar et al. 2021, Table 1 / Table 2 / Fig. 2",
        "meta": {
            "preset": name,
            "audit_preset": asdict(p),
            "model": read["ref"],
            "architecture": architecture,
            "iba_layers": {
                "iba": IBA_LAYERS[architecture][0],
                "multilayer_iba": list(IBA_LAYERS[architecture][1]),
            },
            "history": str(out / "history.sqlite"),
            "history_run_id": read["run_id"],
            "checks": list(KHAKZAR_CHECKS),
            "policy_sha256": policy.sha256,
            "audit_seconds": round(read["audit_seconds"], 1),
            "audit_cpu_seconds": round(read["audit_cpu_seconds"], 1),
            **(meta or {}),
        },
        "methods": methods,
        "metrics": metrics,
        "per_class_iou": per_class,
        "criterion": (
            {
                "id": KHAKZAR_CRITERION,
                "metric": criteria[KHAKZAR_CRITERION].metric,
                "op": criteria[KHAKZAR_CRITERION].op,
            }
            if KHAKZAR_CRITERION in criteria
            else None
        ),
        "verdicts": verdicts,
        "claims": claims,
    }
    _write(out, table, render_khakzar(table))
    return table


def render_khakzar(table: dict[str, Any]) -> str:
    """The comparison as markdown: one column per method (the paper's layout), one row per metric."""
    methods = table["methods"]
    lines = [
        "| metric | " + " | ".join(KHAKZAR_METHODS[m] for m in methods) + " |",
        "|" + "---|" * (len(methods) + 1),
    ]
    for _, metric, label, _ in KHAKZAR_METRICS:
        cells = []
        for m in methods:
            c = table["metrics"][metric][m]
            cells.append("n/a" if c["mean"] is None else f"{c['mean']:.3f} ± {c['std'] or 0.0:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table["verdicts"]:
        lines.append(
            "| faithfulness criterion (INS − DEL > 0) | "
            + " | ".join(table["verdicts"][m]["status"] for m in methods)
            + " |"
        )
    lines += ["", "Mean IoU (top 10 %) per class (cases with a finding):", ""]
    lines += [
        "| class | " + " | ".join(KHAKZAR_METHODS[m] for m in methods) + " |",
        "|" + "---|" * (len(methods) + 1),
    ]
    for cls, by in table["per_class_iou"].items():
        lines.append(f"| {cls} | " + " | ".join(_fmt(by[m]) for m in methods) + " |")
    lines += ["", "Claims of the paper on this run:", ""]
    lines += [f"* {claim}: {'yes' if ok else 'no'}" for claim, ok in table["claims"].items()]
    meta = table["meta"]
    lines += [
        "",
        f"model `{meta['model']}` ({meta['architecture']}; IBA after `{meta['iba_layers']['iba']}`, "
        f"multi-layer IBA after {', '.join(f'`{x}`' for x in meta['iba_layers']['multilayer_iba'])}), preset "
        f"`{meta['preset']}`, history run {meta['history_run_id']}; audit {meta['audit_seconds']} s wall, "
        f"{meta['audit_cpu_seconds']} s CPU.",
    ]
    return "\n".join(lines) + "\n"
