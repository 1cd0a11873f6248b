"""A view: a filter over one tenant's exams, and the urgency order rows are shown in."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dynamo.states import OPEN_STATES, PRIORITY_RANK, ExamStatus, Modality, Priority

DEFAULT_STATUSES: tuple[ExamStatus, ...] = tuple(s for s in ExamStatus if s in OPEN_STATES)


class View(BaseModel):
    """Empty lists mean "any"; `statuses` defaults to the open (unreported) states."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sites: list[str] = Field(default_factory=list, max_length=50)
    modalities: list[Modality] = Field(default_factory=list)
    statuses: list[ExamStatus] = Field(default_factory=lambda: list(DEFAULT_STATUSES))
    priorities: list[Priority] = Field(default_factory=list)
    subspecialties: list[str] = Field(default_factory=list, max_length=50)

    def matcher(self) -> RowMatcher:
        return RowMatcher(self)


class RowMatcher:
    """A view compiled to frozensets, for the per-delta hot path."""

    __slots__ = ("modalities", "priorities", "sites", "statuses", "subspecialties")

    def __init__(self, view: View) -> None:
        self.sites = frozenset(view.sites)
        self.modalities = frozenset(m.value for m in view.modalities)
        self.statuses = frozenset(s.value for s in view.statuses)
        self.priorities = frozenset(p.value for p in view.priorities)
        self.subspecialties = frozenset(view.subspecialties)

    def __call__(self, row: dict[str, Any]) -> bool:
        return (
            (not self.statuses or row["status"] in self.statuses)
            and (not self.sites or row["site"] in self.sites)
            and (not self.modalities or row["modality"] in self.modalities)
            and (not self.priorities or row["priority"] in self.priorities)
            and (not self.subspecialties or row["subspecialty"] in self.subspecialties)
        )


_RANK = {p.value: r for p, r in PRIORITY_RANK.items()}


def urgency_key(row: dict[str, Any]) -> tuple[int, int, str]:
    """STAT first, then the nearest turnaround deadline."""
    return (_RANK.get(row["priority"], 9), row["tat_due_at"], row["exam_id"])


def select_rows(
    rows: list[dict[str, Any]], view: View, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The view's rows, most urgent first, at most `limit`; and how many matched in all."""
    match = view.matcher()
    chosen = [r for r in rows if match(r)]
    chosen.sort(key=urgency_key)
    return chosen[:limit], len(chosen)
