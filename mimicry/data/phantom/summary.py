"""Dataset summaries: counts per class / split / site, shortcut and nuisance agreement, files, speed.

:func:`summarize_dataset` re-reads a dataset's CSVs with pandas (brief: ``mimicry data summary DIR``), so the
numbers printed after generation and those printed later come from the same code path. It also accepts a
real MIMIC-CXR-EGD root (no ``phantom.json``, no phantom columns): then only the EGD parts are summarised.
A directory whose ``master_sheet.csv`` has the phantom columns but no ``phantom.json`` is an interrupted
generator run and raises :class:`IncompleteDatasetError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from mimicry.data.phantom.config import (
    CLASS_NAMES,
    NUISANCE_CLASS,
    NUISANCE_CUES,
    SITE_OF_CLASS,
    IncompleteDatasetError,
)

__all__ = ["format_summary", "summarize_dataset", "summarize_master_sheet"]


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(series.value_counts().items(), key=lambda kv: str(kv[0]))}


def _labels(df: pd.DataFrame) -> pd.Series:
    present = [c for c in CLASS_NAMES if c in df.columns]
    if not present:
        return pd.Series(["?"] * len(df), index=df.index)
    onehot = df[present].fillna(0).astype(int)
    return onehot.idxmax(axis=1).where(onehot.sum(axis=1) == 1, "?")


def summarize_master_sheet(df: pd.DataFrame) -> dict[str, Any]:
    """Counts and agreement rates from a ``master_sheet.csv`` frame (phantom columns optional)."""
    labels = _labels(df)
    out: dict[str, Any] = {"n": len(df), "class_counts": _counts(labels)}
    if "patient_id" in df.columns:
        out["patients"] = int(df["patient_id"].nunique())
    if "split" not in df.columns or "site" not in df.columns:
        return out
    canonical = labels.map(SITE_OF_CLASS)
    agree = df["site"] == canonical
    out["split_counts"] = _counts(df["split"])
    out["site_counts"] = _counts(df["site"])
    out["split_class_counts"] = {
        str(s): _counts(labels[df["split"] == s]) for s in sorted(df["split"].unique())
    }
    out["split_site_counts"] = {
        str(s): _counts(df.loc[df["split"] == s, "site"]) for s in sorted(df["split"].unique())
    }
    out["shortcut_agreement"] = {
        str(s): float(agree[df["split"] == s].mean()) for s in sorted(df["split"].unique())
    }
    if "shortcut_corr" in df.columns:
        out["shortcut_corr"] = {
            str(s): float(df.loc[df["split"] == s, "shortcut_corr"].iloc[0])
            for s in sorted(df["split"].unique())
        }
    nuis: dict[str, dict[str, float]] = {}
    for s in sorted(df["split"].unique()):
        sel = df["split"] == s
        rates = {}
        for cue in NUISANCE_CUES:
            col = f"nuisance_{cue}"
            if col in df.columns:
                indicator = (labels[sel] == NUISANCE_CLASS[cue]).astype(int)
                rates[cue] = float((df.loc[sel, col].astype(int) == indicator).mean())
        nuis[str(s)] = rates
    out["nuisance_agreement"] = nuis
    return out


def _file_counts(root: Path) -> dict[str, int]:
    dicoms = sum(1 for _ in (root / "files").rglob("*.dcm")) if (root / "files").is_dir() else 0
    pngs = 0
    for sub in ("audio_segmentation_transcripts", "masks"):
        if (root / sub).is_dir():
            pngs += sum(1 for _ in (root / sub).rglob("*.png"))
    csvs = sum(1 for p in root.glob("*.csv"))
    return {"dicom": dicoms, "png": pngs, "csv": csvs}


def summarize_dataset(root: str | Path) -> dict[str, Any]:
    """Summarise a phantom (or real EGD) dataset root from its files.

    Raises:
        IncompleteDatasetError: no ``master_sheet.csv``, or phantom columns without ``phantom.json``.
    """
    root = Path(root)
    sheet = root / "master_sheet.csv"
    if not sheet.is_file():
        raise IncompleteDatasetError(f"no master_sheet.csv in {root}")
    df = pd.read_csv(
        sheet, dtype={"dicom_id": str, "patient_id": str, "study_id": str}, keep_default_na=False
    )
    is_phantom = "split" in df.columns and "site" in df.columns
    meta_path = root / "phantom.json"
    if is_phantom and not meta_path.is_file():
        raise IncompleteDatasetError(
            f"{root} has phantom columns but no phantom.json: the generator run did not finish"
        )
    out = summarize_master_sheet(df)
    out["root"] = str(root)
    out["kind"] = "phantom" if is_phantom else "egd"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        out["size"] = meta.get("size")
        out["seed"] = meta.get("seed")
        out["generator_version"] = meta.get("generator_version")
        for key in ("photometric_counts", "transfer_syntax_counts"):
            if key in meta:
                out[key] = meta[key]
    fix = root / "fixations.csv"
    if fix.is_file():
        f = pd.read_csv(fix, usecols=["DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL"])
        off = (f["X_ORIGINAL"] == -1) & (f["Y_ORIGINAL"] == -1)
        out["fixations"] = {
            "rows": len(f),
            "off_image": int(off.sum()),
            "images": int(f["DICOM_ID"].nunique()),
        }
    out["files"] = _file_counts(root)
    return out


def _table(title: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    w = max(len(k) for k, _ in rows)
    return [title, *(f"  {k.ljust(w)}  {v}" for k, v in rows)]


def format_summary(summary: dict[str, Any]) -> str:
    """A readable, aligned text table of a summary dict (CLI output)."""
    lines: list[str] = []
    head = [("root", str(summary.get("root", ""))), ("kind", str(summary.get("kind", "phantom")))]
    for key in ("n", "patients", "size", "seed", "generator_version"):
        if summary.get(key) is not None:
            head.append((key, str(summary[key])))
    lines += _table("dataset", head)
    splits = summary.get("split_class_counts")
    if splits:
        classes = list(CLASS_NAMES)
        sites = sorted({s for c in summary.get("split_site_counts", {}).values() for s in c})
        cols = ["split", *classes, *sites, "total", "shortcut agree", "configured"]
        table = [cols]
        for split, counts in splits.items():
            site_counts = summary["split_site_counts"].get(split, {})
            table.append(
                [
                    split,
                    *(str(counts.get(c, 0)) for c in classes),
                    *(str(site_counts.get(s, 0)) for s in sites),
                    str(sum(counts.values())),
                    f"{summary['shortcut_agreement'][split]:.3f}",
                    f"{summary.get('shortcut_corr', {}).get(split, float('nan')):.3f}",
                ]
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
        lines.append("splits")
        lines += ["  " + "  ".join(r[i].rjust(widths[i]) for i in range(len(cols))) for r in table]
        nuis = summary.get("nuisance_agreement", {})
        lines += _table(
            "nuisance agreement",
            [
                (split, "  ".join(f"{cue}={rate:.3f}" for cue, rate in rates.items()))
                for split, rates in nuis.items()
            ],
        )
    else:
        lines += _table("classes", [(k, str(v)) for k, v in summary.get("class_counts", {}).items()])
    for key in ("photometric_counts", "transfer_syntax_counts"):
        if summary.get(key):
            lines += _table(key.replace("_", " "), [(k, str(v)) for k, v in summary[key].items()])
    if summary.get("fixations"):
        fx = summary["fixations"]
        lines += _table("fixations", [(k, str(v)) for k, v in fx.items()])
    if summary.get("files"):
        lines += _table("files", [(k, str(v)) for k, v in summary["files"].items()])
    if summary.get("seconds") is not None:
        speed = [
            ("seconds", f"{summary['seconds']:.2f}"),
            ("images/s", f"{summary['images_per_second']:.1f}"),
        ]
        speed += [(f"{k} s", f"{v:.2f}") for k, v in summary.get("stage_seconds", {}).items()]
        lines += _table("speed", speed)
    return "\n".join(lines)
