"""A tenant's orchestration rules: how cases reach readers. Stored in the directory
(one entry per tenant), editable by the tenant's admin, applied live."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Mode", "Rules"]


class Mode(StrEnum):
    # Everyone picks from the shared list (the old behaviour); "next" works too.
    FREE = "free"
    # "Next case" hands out the best case; picking by hand stays allowed.
    ASSISTED = "assisted"
    # Cases are handed out only: "next" and STAT offers; a hand-picked claim is refused.
    PUSH = "push"


class Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Mode.ASSISTED
    # Others do not see exams someone else holds (Intelerad's "hide locked").
    hide_locked: bool = False
    # A STAT offer lasts this long before it goes to the next reader.
    stat_offer_seconds: int = Field(default=60, ge=5, le=3600)
    # A STAT ready this long without a reader raises a coordinator alert.
    stat_alert_minutes: int = Field(default=10, ge=1, le=24 * 60)
    # Per-reader caps: open claims in all, and STATs among them.
    max_open_claims: int = Field(default=4, ge=1, le=100)
    max_stat_claims: int = Field(default=2, ge=1, le=100)
    # A patient's related studies ready within this window go to the same reader.
    group_patient_minutes: int = Field(default=120, ge=0, le=7 * 24 * 60)
    # Per-code work RVU overrides (see `orchestration.rvu`).
    rvu_overrides: dict[str, float] = Field(default_factory=dict)

    @field_validator("rvu_overrides")
    @classmethod
    def _rvus(cls, value: dict[str, float]) -> dict[str, float]:
        for code, rvu in value.items():
            if not code or len(code) > 16:
                raise ValueError(f"procedure code {code!r} must be 1-16 characters")
            if not 0 <= rvu <= 100:
                raise ValueError(f"RVU for {code} must be between 0 and 100")
        return value

    @property
    def free_picking(self) -> bool:
        return self.mode is not Mode.PUSH
