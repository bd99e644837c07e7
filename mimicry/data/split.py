"""Patient-level train/test split (MIMIC-CXR-EGD is split by ``patient_id``;
docs/methods.md, "Dataset formats").

Watson et al. (WACV 2023) use an 80/20 split; all images of one patient must land on the same side, or a
model can be scored on a patient it has already seen (several EGD patients have more than one study).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

__all__ = ["patient_split"]


def patient_split(
    df: pd.DataFrame,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    patient_column: str = "patient_id",
) -> pd.Series:
    """Assign whole patients to ``"train"`` or ``"test"``, deterministically.

    Uses scikit-learn's ``GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)`` with the
    patient id as the group: ``ceil(test_fraction * n_patients)`` *patients* (not images) go to test. The
    groups are the sorted unique patient ids, so the result depends only on the set of patients, the
    fraction and the seed, never on row order.

    Args:
        df: one row per image; must have ``patient_column``.
        test_fraction: fraction of patients in the test split, ``0 < test_fraction < 1``.
        seed: random state.
        patient_column: column holding the patient id (compared as strings).

    Returns:
        ``pd.Series`` of ``"train"`` / ``"test"`` aligned with ``df.index`` (name ``"split"``).

    Raises:
        KeyError: ``patient_column`` is missing.
        ValueError: the fraction is out of range, or there are fewer than 2 patients, or a patient id is
            missing.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if patient_column not in df.columns:
        raise KeyError(f"patient_split: column {patient_column!r} not in the frame")
    patients = df[patient_column]
    if patients.isna().any():
        raise ValueError(f"patient_split: column {patient_column!r} has missing values")
    groups = patients.astype(str).to_numpy()
    if len(np.unique(groups)) < 2:
        raise ValueError("patient_split needs at least 2 distinct patients")
    splitter = GroupShuffleSplit(n_splits=1, test_size=float(test_fraction), random_state=int(seed))
    _, test_idx = next(splitter.split(np.zeros(len(groups)), groups=groups))
    labels = np.full(len(groups), "train", dtype=object)
    labels[test_idx] = "test"
    return pd.Series(labels, index=df.index, name="split", dtype=object)
