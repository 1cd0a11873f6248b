"""Synthetic reference data for the simulator: procedures, names, turnaround targets.

Every name here is invented; no real patient, provider or record is modelled.
"""

from __future__ import annotations

from typing import NamedTuple

from dynamo.states import Modality, Priority


class Procedure(NamedTuple):
    code: str  # CPT-style code
    text: str
    body_part: str
    subspecialty: str
    scan_minutes: int  # how long the acquisition takes


PROCEDURES: dict[Modality, tuple[Procedure, ...]] = {
    Modality.CT: (
        Procedure("70450", "CT head without contrast", "HEAD", "neuro", 10),
        Procedure("71260", "CT chest with contrast", "CHEST", "chest", 15),
        Procedure("74177", "CT abdomen and pelvis with contrast", "ABDOMEN", "body", 20),
        Procedure("71275", "CT angiography chest (PE protocol)", "CHEST", "chest", 20),
        Procedure("72125", "CT cervical spine without contrast", "C-SPINE", "msk", 10),
    ),
    Modality.MR: (
        Procedure("70553", "MRI brain with and without contrast", "HEAD", "neuro", 45),
        Procedure("72148", "MRI lumbar spine without contrast", "L-SPINE", "msk", 35),
        Procedure("73721", "MRI knee without contrast", "KNEE", "msk", 30),
        Procedure("74183", "MRI abdomen with and without contrast", "ABDOMEN", "body", 50),
    ),
    Modality.XR: (
        Procedure("71046", "XR chest 2 views", "CHEST", "chest", 5),
        Procedure("73030", "XR shoulder 2+ views", "SHOULDER", "msk", 5),
        Procedure("73610", "XR ankle 3+ views", "ANKLE", "msk", 5),
        Procedure("74018", "XR abdomen 1 view", "ABDOMEN", "body", 5),
    ),
    Modality.US: (
        Procedure("76700", "US abdomen complete", "ABDOMEN", "body", 25),
        Procedure("76856", "US pelvis transabdominal", "PELVIS", "body", 20),
        Procedure("93971", "US venous duplex lower extremity", "LEG", "body", 25),
        Procedure("76641", "US breast unilateral complete", "BREAST", "breast", 20),
    ),
    Modality.NM: (
        Procedure("78452", "NM myocardial perfusion SPECT", "HEART", "nuclear", 60),
        Procedure("78306", "NM bone scan whole body", "WHOLE BODY", "nuclear", 45),
        Procedure("78582", "NM lung ventilation/perfusion", "CHEST", "nuclear", 40),
    ),
    Modality.MG: (
        Procedure("77067", "MG screening bilateral with CAD", "BREAST", "breast", 15),
        Procedure("77066", "MG diagnostic bilateral", "BREAST", "breast", 20),
    ),
}

# Modality mix by kind of site (weights).
MODALITY_MIX: dict[str, dict[Modality, int]] = {
    "hospital": {
        Modality.CT: 35,
        Modality.XR: 30,
        Modality.US: 15,
        Modality.MR: 12,
        Modality.NM: 5,
        Modality.MG: 3,
    },
    "clinic": {Modality.XR: 40, Modality.MR: 25, Modality.US: 20, Modality.MG: 15},
    "imaging center": {
        Modality.MR: 30,
        Modality.CT: 25,
        Modality.MG: 20,
        Modality.US: 15,
        Modality.NM: 10,
    },
}

# Priority mix by kind of site (weights): hospitals carry the emergency department.
PRIORITY_MIX: dict[str, dict[Priority, int]] = {
    "hospital": {Priority.STAT: 18, Priority.URGENT: 22, Priority.ROUTINE: 60},
    "clinic": {Priority.STAT: 2, Priority.URGENT: 13, Priority.ROUTINE: 85},
    "imaging center": {Priority.STAT: 3, Priority.URGENT: 17, Priority.ROUTINE: 80},
}

# Turnaround targets (minutes from scheduled time to a final report).
TAT_MINUTES: dict[Priority, int] = {
    Priority.STAT: 60,
    Priority.URGENT: 4 * 60,
    Priority.ROUTINE: 24 * 60,
}

# Minutes from COMPLETED until a radiologist signs (uniform range), by priority.
READ_MINUTES: dict[Priority, tuple[int, int]] = {
    Priority.STAT: (5, 45),
    Priority.URGENT: (20, 180),
    Priority.ROUTINE: (60, 12 * 60),
}

FAMILY_NAMES: tuple[str, ...] = (
    "ASHGROVE", "BRIARWOOD", "CALDERON", "DUNMORE", "ELLERBY", "FAIRCLOTH", "GALLOWAY",
    "HOLLINS", "IVERSEN", "JARDINE", "KESTREL", "LINDQVIST", "MARLOWE", "NORTHCOTT",
    "OKAFOR", "PENROSE", "QUILLER", "RAVENSCROFT", "SALTMARSH", "THORNBURY", "UMBERS",
    "VANTERPOOL", "WINTERBOURNE", "YARDLEY", "ZELLWEGER", "ABERNATHY", "BLACKTHORN",
    "COLDWATER", "DRAYCOTT", "EVERLEIGH",
)  # fmt: skip

GIVEN_NAMES: tuple[str, ...] = (
    "ARLO", "BRYN", "CASPIAN", "DELPHINE", "EZRA", "FENNA", "GIDEON", "HALCYON", "ISOLDE",
    "JUNO", "KAI", "LORELEI", "MARIUS", "NELL", "ORLA", "PERRIN", "QUINCY", "ROWAN", "SAOIRSE",
    "TOBIAS", "UMA", "VESPER", "WREN", "XAVI", "YSOLDE", "ZANE",
)  # fmt: skip

PROVIDERS: tuple[str, ...] = (
    "MERIDIAN^ALEX", "CORVID^SAM", "HALVERSON^JO", "PRENTICE^LEE", "OSTRANDER^KIM",
    "VALDANE^RIO", "TREMAINE^ASH", "WEXLEY^MORGAN",
)  # fmt: skip

# Simulated radiologists who read the simulator's exams (fictional).
SIM_READERS: tuple[str, ...] = (
    "Dr. Sol Kestrel",
    "Dr. Ines Thornbury",
    "Dr. Rafe Okonjo",
    "Dr. Lena Winterbourne",
    "Dr. Caleb Ashgrove",
)
