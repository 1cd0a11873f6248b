"""Work RVUs (the physician-work component of a relative value unit) per CPT code.

Source: the CMS Medicare Physician Fee Schedule national Relative Value File
(Addendum B, "WORK RVU" column; professional component, modifier 26, where the code
has a global/technical split), for the procedure codes of the simulator's catalog
(`loadtest/catalog.py`). Values were transcribed by hand; check them against the
current year's file before using them for pay. A tenant overrides or extends any of
them with `Rules.rvu_overrides`; an unknown code counts `DEFAULT_RVU`.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_RVU", "WORK_RVU", "rvu_of"]

WORK_RVU: Mapping[str, float] = {
    # CT
    "70450": 0.85,  # CT head/brain without contrast
    "71260": 1.16,  # CT thorax with contrast
    "74177": 1.82,  # CT abdomen and pelvis with contrast
    "71275": 1.82,  # CT angiography, chest
    "72125": 1.07,  # CT cervical spine without contrast
    # MR
    "70553": 2.29,  # MRI brain without and with contrast
    "72148": 1.48,  # MRI lumbar spine without contrast
    "73721": 1.35,  # MRI lower-extremity joint without contrast
    "74183": 2.20,  # MRI abdomen without and with contrast
    # XR
    "71046": 0.22,  # XR chest, 2 views
    "73030": 0.18,  # XR shoulder, 2+ views
    "73610": 0.17,  # XR ankle, 3+ views
    "74018": 0.18,  # XR abdomen, 1 view
    # US
    "76700": 0.81,  # US abdomen, complete
    "76856": 0.69,  # US pelvis, non-obstetric, complete
    "93971": 0.45,  # duplex scan of extremity veins, unilateral or limited
    "76641": 0.73,  # US breast, unilateral, complete
    # NM
    "78452": 1.38,  # myocardial perfusion imaging, SPECT, multiple studies
    "78306": 0.86,  # bone imaging, whole body
    "78582": 1.49,  # pulmonary ventilation and perfusion imaging
    # MG
    "77067": 0.76,  # screening mammography, bilateral, with CAD
    "77066": 1.07,  # diagnostic mammography, bilateral, with CAD
}

DEFAULT_RVU = 1.0


def rvu_of(code: str, overrides: Mapping[str, float] | None = None) -> float:
    """The work RVU of a procedure code, the tenant's override first."""
    if overrides and code in overrides:
        return overrides[code]
    return WORK_RVU.get(code, DEFAULT_RVU)
