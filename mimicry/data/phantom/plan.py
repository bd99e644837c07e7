"""Case planning: every per-case choice that is not a pixel (the metadata-only path).

A *plan* fixes, for each case, its identifiers (EGD-style ``dicom_id``, ``patient_id``, ``study_id``,
``stay_id``, ``path``), demographics and synthetic PHI, label, split, site, nuisance-cue flags, DICOM storage
choices (photometric interpretation, transfer syntax, rescale, view) and the letterbox pads of the
eye-tracking screen. Planning is cheap (no pixels), so tests can check shortcut statistics on thousands of
cases in milliseconds with :func:`plan_cases`.

Determinism (brief, "Deterministic for a seed"): patient ``j`` draws from
``default_rng(SeedSequence(seed, spawn_key=(PATIENT_STREAM, j)))`` and case ``i`` from
``SeedSequence(seed, spawn_key=(CASE_STREAM, i))``; the pixels and the gaze of case ``i`` use their own
streams (``RENDER_STREAM``, ``GAZE_STREAM``). A case therefore never depends on the order in which cases are
generated. Patients own 1-3 consecutive cases (studies); the test split takes whole patients (split
by ``patient_id``, as in MIMIC-CXR-EGD) in the order of a per-patient random key until
``round(test_fraction * n)`` cases are reached, so it is the only part that depends on ``n``.

Rates follow :mod:`mimicry.data.phantom.config`: ``shortcut_corr`` = P(site == canonical site of the label)
and ``nuisance_<cue>_corr`` = P(cue present == (label == cue class)), per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from mimicry.data.phantom.config import (
    CLASS_NAMES,
    COMPRESSED_SYNTAXES,
    NUISANCE_CLASS,
    NUISANCE_CUES,
    REVERSED_SITE_OF_CLASS,
    SCREEN_SIZE,
    SITE_OF_CLASS,
    SITES,
    PhantomConfig,
)

__all__ = [
    "CASE_STREAM",
    "GAZE_STREAM",
    "PATIENT_STREAM",
    "RENDER_STREAM",
    "CasePlan",
    "case_rng",
    "plan_cases",
]

PATIENT_STREAM = 0
CASE_STREAM = 1
RENDER_STREAM = 2
GAZE_STREAM = 3
_ID_STREAM = 4

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MEDIA_PER_SESSION = 20
"""Images read per simulated eye-tracking session (``SESSION_ID`` / ``MEDIA_ID`` of fixations.csv)."""

# Multipliers coprime with the ID ranges make ``index -> id`` a bijection (unique IDs, random-looking).
_PATIENT_MULT = 2654435761
_STUDY_MULT = 2246822519
_STAY_MULT = 3266489917
_ACCESSION_MULT = 668265263

_GIVEN_F = (
    "MARIA",
    "ANNA",
    "LINDA",
    "SARAH",
    "GRACE",
    "ELENA",
    "NORA",
    "RUTH",
    "CLARA",
    "JUNE",
    "ROSA",
    "IRIS",
)
_GIVEN_M = ("JAMES", "DAVID", "CARLOS", "PETER", "SAMUEL", "OMAR", "HENRY", "LUCAS", "VICTOR", "ELI", "IVAN")
_INITIALS = "ABCDEFGHJKLMNPRSTW"
_PHYSICIANS = ("PHANTOM^ADA^DR", "PHANTOM^GALEN^DR", "PHANTOM^OSLER^DR", "PHANTOM^LISTER^DR")
INSTITUTION_OF_SITE = {
    "site_a": "PHANTOM GENERAL HOSPITAL",
    "site_b": "PHANTOM MEMORIAL MEDICAL CENTER",
    "site_c": "PHANTOM VALLEY CLINIC",
}

# (dx text, ICD code): ICD-10 / ICD-9 spellings as in EGD's dx columns ("Heart failure, unspecified", I50.9).
_DX = {
    "Normal": (
        ("Chest pain, unspecified", "R07.9"),
        ("CHEST PAIN NOS", "786.50"),
        ("Syncope and collapse", "R55"),
    ),
    "CHF": (("Heart failure, unspecified", "I50.9"), ("CONGESTIVE HEART FAILURE, UNSPEC", "428")),
    "pneumonia": (("Pneumonia, unspecified organism", "J18.9"), ("PNEUMONIA,ORGANISM UNSPECIFIED", "486")),
}
_COMORBID = (
    ("Essential (primary) hypertension", "I10"),
    ("HYPERTENSION NOS", "401.9"),
    ("Type 2 diabetes mellitus without complications", "E11.9"),
    ("Hyperlipidemia, unspecified", "E78.5"),
    ("Atrial fibrillation, unspecified", "I48.91"),
    ("Chronic obstructive pulmonary disease, unspecified", "J44.9"),
)
_INDICATION = {
    "Normal": (
        "___{g} with chest pain // eval for acute process",
        "History: ___{g} with syncope",
        "___{g} with shortness of breath // ?infiltrate",
    ),
    "CHF": (
        "___{g} with CHF and shortness of breath // ?Pulmonary edema",
        "___{g} with dyspnea, leg swelling // eval for volume overload",
        "___{g} with shortness of breath // ?infiltrate",
    ),
    "pneumonia": (
        "___{g} with cough and fever // ?pneumonia",
        "History: ___{g} with productive cough",
        "___{g} with shortness of breath // ?infiltrate",
    ),
}

LABEL_COLUMNS: tuple[str, ...] = (
    "consolidation",
    "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis",
    "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__",
    "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity",
    "normal_anatomically",
    "elevated_hemidiaphragm",
    "hyperaeration",
    "vascular_redistribution",
)
CHX_COLUMNS: tuple[str, ...] = (
    "atelectasis__chx",
    "cardiomegaly__chx",
    "consolidation__chx",
    "edema__chx",
    "enlarged_cardiomediastinum__chx",
    "fracture__chx",
    "lung_lesion__chx",
    "lung_opacity__chx",
    "no_finding__chx",
    "pleural_effusion__chx",
    "pleural_other__chx",
    "pneumonia__chx",
    "pneumothorax__chx",
    "support_devices__chx",
)


def case_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one (stream, index) pair: independent of every other case and of generation order."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


@dataclass(frozen=True)
class CasePlan:
    """Everything about one case except its pixels and fixations (see module docstring)."""

    index: int
    patient_index: int
    dicom_id: str
    patient_id: str
    study_id: str
    stay_id: str
    path: str
    gender: str
    age: int
    anchor_age: str
    label: str
    split: str
    site: str
    shortcut_mode: str
    rates: dict[str, float]
    nuisance: dict[str, bool]
    photometric: str
    transfer_syntax: str
    view: str
    rescale_slope: float
    rescale_intercept: float
    film_width_mm: float
    magnification: float
    pads: tuple[int, int, int, int]
    session_id: int
    media_id: int
    patient_name: str
    birth_date: str
    study_date: str
    study_time: str
    accession: str
    institution: str
    referring_physician: str
    dx: tuple[tuple[str, str], ...]
    label_columns: dict[str, int]
    chx_columns: dict[str, str]
    indication: str

    @property
    def label_index(self) -> int:
        """Index of :attr:`label` in :data:`CLASS_NAMES`."""
        return CLASS_NAMES.index(self.label)

    @property
    def compressed(self) -> bool:
        """Whether the DICOM uses a compressed (encapsulated or deflated) transfer syntax."""
        return self.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN

    @property
    def shortcut_agrees(self) -> bool:
        """Whether the site is the canonical site of the label (the training shortcut)."""
        return self.site == SITE_OF_CLASS[self.label]


@dataclass(frozen=True)
class _Patient:
    index: int
    first_case: int
    n_studies: int
    patient_id: str
    gender: str
    age: int
    given: str
    initial: str
    birth: date
    first_study: date
    split_key: float


def _id_offsets(seed: int) -> np.ndarray:
    return np.random.SeedSequence(seed, spawn_key=(_ID_STREAM,)).generate_state(4, dtype=np.uint64)


def _plan_patients(config: PhantomConfig) -> list[_Patient]:
    offsets = _id_offsets(config.seed)
    patients: list[_Patient] = []
    case = 0
    j = 0
    while case < config.n:
        rng = case_rng(config.seed, PATIENT_STREAM, j)
        n_studies = int(rng.choice(3, p=(0.75, 0.18, 0.07))) + 1
        n_studies = min(n_studies, config.n - case)
        gender = "F" if rng.random() < 0.5 else "M"
        age = int(rng.integers(21, 90))
        given = str(rng.choice(_GIVEN_F if gender == "F" else _GIVEN_M))
        initial = _INITIALS[int(rng.integers(len(_INITIALS)))]
        # MIMIC shifts dates into 2100-2200; keep that look.
        first_study = date(2110, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 70)))
        birth = date(first_study.year - age, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
        pid = 10_000_000 + (j * _PATIENT_MULT + int(offsets[0])) % 10_000_000
        patients.append(
            _Patient(
                j,
                case,
                n_studies,
                f"{pid:08d}",
                gender,
                age,
                given,
                initial,
                birth,
                first_study,
                rng.random(),
            )
        )
        case += n_studies
        j += 1
    return patients


def _test_patients(patients: list[_Patient], config: PhantomConfig) -> set[int]:
    target = round(config.test_fraction * config.n)
    chosen: set[int] = set()
    count = 0
    for p in sorted(patients, key=lambda p: (p.split_key, p.index)):
        if count >= target:
            break
        chosen.add(p.index)
        count += p.n_studies
    return chosen


def _pick_site(label: str, split_mode: str, rate: float, u_target: float, u_other: float) -> str:
    """Site of one case: the split's target site with probability ``rate``, else one of the other two."""
    if split_mode == "decorrelated":
        return SITES[min(int(u_other * len(SITES)), len(SITES) - 1)]
    target = SITE_OF_CLASS[label] if split_mode == "correlated" else REVERSED_SITE_OF_CLASS[label]
    if u_target < rate:
        return target
    others = [s for s in SITES if s != target]
    return others[min(int(u_other * len(others)), len(others) - 1)]


def _label_columns(label: str, rng: np.random.Generator) -> tuple[dict[str, int], dict[str, str]]:
    cols = dict.fromkeys(LABEL_COLUMNS, 0)
    chx = dict.fromkeys(CHX_COLUMNS, "")
    if label == "Normal":
        cols["normal_anatomically"] = 1
        chx["no_finding__chx"] = "1"
    elif label == "CHF":
        cols["enlarged_cardiac_silhouette"] = 1
        cols["pulmonary_edema__hazy_opacity"] = 1
        cols["pleural_effusion_or_thickening"] = 1
        cols["vascular_redistribution"] = int(rng.random() < 0.5)
        chx["cardiomegaly__chx"] = "1"
        chx["edema__chx"] = "1" if rng.random() < 0.7 else "-1"
        chx["pleural_effusion__chx"] = "1"
    else:
        cols["consolidation"] = 1
        cols["not_otherwise_specified_opacity___pleural__parenchymal_opacity__"] = int(rng.random() < 0.3)
        chx["pneumonia__chx"] = "1" if rng.random() < 0.6 else "-1"
        chx["lung_opacity__chx"] = "1"
        chx["consolidation__chx"] = "1" if rng.random() < 0.4 else ""
    return cols, chx


def plan_cases(config: PhantomConfig) -> list[CasePlan]:
    """Plan all ``config.n`` cases (no pixels). Deterministic for ``config`` (module docstring)."""
    patients = _plan_patients(config)
    test = _test_patients(patients, config)
    offsets = _id_offsets(config.seed)
    weights = np.asarray(config.class_weights, dtype=float)
    weights = weights / weights.sum()
    plans: list[CasePlan] = []
    for patient in patients:
        for k in range(patient.n_studies):
            i = patient.first_case + k
            rng = case_rng(config.seed, CASE_STREAM, i)
            # Fixed draw order: every uniform is drawn whatever the split/shares, so changing one share
            # never reshuffles the other choices.
            u = rng.random(12)
            label = CLASS_NAMES[int(np.searchsorted(np.cumsum(weights), u[0], side="right").clip(0, 2))]
            split = "test" if patient.index in test else "train"
            mode = config.shortcut_mode(split)
            rates = config.split_rates(split)
            site = _pick_site(label, mode, float(config.shortcut_corr), u[1], u[2])
            nuisance = {}
            for c, cue in enumerate(NUISANCE_CUES):
                indicator = label == NUISANCE_CLASS[cue]
                agree = u[3 + c] < rates[f"nuisance_{cue}_corr"]
                nuisance[cue] = indicator if agree else not indicator
            photometric = "MONOCHROME1" if u[6] < config.monochrome1_share else "MONOCHROME2"
            syntax = (
                COMPRESSED_SYNTAXES[i % len(COMPRESSED_SYNTAXES)]
                if u[7] < config.compressed_share
                else EXPLICIT_VR_LITTLE_ENDIAN
            )
            view = "AP" if u[8] < config.ap_share else "PA"
            if u[9] < config.rescale_share:
                slope, intercept = ((1.0, -1024.0), (2.0, 0.0))[int(u[10] < 0.5)]
            else:
                slope, intercept = 1.0, 0.0
            film_width_mm = float(rng.uniform(350.0, 430.0))
            magnification = float(rng.uniform(1.05, 1.15)) if view == "PA" else float(rng.uniform(1.15, 1.25))
            top = int(rng.choice((0, 43, 86)))
            side = SCREEN_SIZE[1] - 2 * top
            left = (SCREEN_SIZE[0] - side) // 2
            pads = (top, top, left, SCREEN_SIZE[0] - side - left)
            dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))
            study_id = f"{50_000_000 + (i * _STUDY_MULT + int(offsets[1])) % 10_000_000:08d}"
            stay_id = f"{30_000_000 + (i * _STAY_MULT + int(offsets[2])) % 10_000_000:08d}"
            accession = f"{(i * _ACCESSION_MULT + int(offsets[3])) % 100_000_000:08d}"
            later = int(rng.integers(1, 30))
            study_day = patient.first_study + timedelta(days=45 * k * later)
            age = patient.age + (study_day.year - patient.first_study.year)
            decade = 10 * (age // 10)
            dx_main = _DX[label][int(rng.integers(len(_DX[label])))]
            n_comorbid = int(rng.choice(3, p=(0.5, 0.35, 0.15)))
            picks = rng.choice(len(_COMORBID), size=n_comorbid, replace=False)
            dx = (dx_main, *(_COMORBID[int(p)] for p in picks))
            cols, chx = _label_columns(label, rng)
            templates = _INDICATION[label]
            indication = templates[int(rng.integers(len(templates)))].format(g=patient.gender)
            seconds = int(rng.integers(6 * 3600, 22 * 3600))
            pid = patient.patient_id
            plans.append(
                CasePlan(
                    index=i,
                    patient_index=patient.index,
                    dicom_id=dicom_id,
                    patient_id=pid,
                    study_id=study_id,
                    stay_id=stay_id,
                    path=f"files/p{pid[:2]}/p{pid}/s{study_id}/{dicom_id}.dcm",
                    gender=patient.gender,
                    age=age,
                    anchor_age=f"{decade} - {decade + 10}",
                    label=label,
                    split=split,
                    site=site,
                    shortcut_mode=mode,
                    rates=rates,
                    nuisance=nuisance,
                    photometric=photometric,
                    transfer_syntax=syntax,
                    view=view,
                    rescale_slope=slope,
                    rescale_intercept=intercept,
                    film_width_mm=film_width_mm,
                    magnification=magnification,
                    pads=pads,
                    session_id=i // MEDIA_PER_SESSION + 1,
                    media_id=i % MEDIA_PER_SESSION,
                    patient_name=f"PHANTOM^{patient.given}^{patient.initial}",
                    birth_date=patient.birth.strftime("%Y%m%d"),
                    study_date=study_day.strftime("%Y%m%d"),
                    study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
                    accession=accession,
                    institution=INSTITUTION_OF_SITE[site],
                    referring_physician=_PHYSICIANS[int(rng.integers(len(_PHYSICIANS)))],
                    dx=dx,
                    label_columns=cols,
                    chx_columns=chx,
                    indication=indication,
                )
            )
    return plans
