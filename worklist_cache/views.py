"""A view: a filter over one tenant's exams, and the urgency order rows are shown in."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dynamo.directory.models import Person
from dynamo.states import OPEN_STATES, ExamStatus, Modality, Priority
from worklist_cache.exceptions import OutOfScope

_MODALITIES = frozenset(m.value for m in Modality)
DEFAULT_STATUSES: tuple[ExamStatus, ...] = tuple(s for s in ExamStatus if s in OPEN_STATES)


class View(BaseModel):
    """Empty lists mean "any"; `statuses` defaults to the open (unreported) states."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    sites: list[str] = Field(default_factory=list, max_length=50)
    modalities: list[Modality] = Field(default_factory=list)
    statuses: list[ExamStatus] = Field(default_factory=lambda: list(DEFAULT_STATUSES))
    priorities: list[Priority] = Field(default_factory=list)
    subspecialties: list[str] = Field(default_factory=list, max_length=50)
    # Only the exams the subscriber holds claims on ("my reads").
    claimed_by_me: bool = False

    def matcher(self, me: str | None = None) -> RowMatcher:
        return RowMatcher(self, me)


class RowMatcher:
    """A view compiled to frozensets, for the per-delta hot path."""

    __slots__ = ("key", "me", "modalities", "priorities", "sites", "statuses", "subspecialties")

    def __init__(self, view: View, me: str | None = None) -> None:
        self.me = me if view.claimed_by_me else None
        self.sites = frozenset(view.sites)
        self.modalities = frozenset(m.value for m in view.modalities)
        self.statuses = frozenset(s.value for s in view.statuses)
        self.priorities = frozenset(p.value for p in view.priorities)
        self.subspecialties = frozenset(view.subspecialties)
        # Equal keys, equal answers for every row: the hub routes a message once for
        # every subscription whose matcher has the same key.
        self.key: tuple[Any, ...] = (
            type(self).__name__,
            self.me,
            self.sites,
            self.modalities,
            self.statuses,
            self.priorities,
            self.subspecialties,
        )

    def __call__(self, row: dict[str, Any]) -> bool:
        return (
            (not self.statuses or row["status"] in self.statuses)
            and (not self.sites or row["site"] in self.sites)
            and (not self.modalities or row["modality"] in self.modalities)
            and (not self.priorities or row["priority"] in self.priorities)
            and (not self.subspecialties or row["subspecialty"] in self.subspecialties)
            and (self.me is None or row.get("claimed_by") == self.me)
        )


class HidingHeld(RowMatcher):
    """A view's matcher that also leaves out what someone else holds (a live lease):
    a tenant's `hide_locked` rule (Intelerad's "hide locked"). The holder, and nobody
    else, keeps seeing their rows; a row comes back when its claim ends."""

    __slots__ = ("viewer",)

    def __init__(self, view: View, viewer: str) -> None:
        super().__init__(view, viewer)
        self.viewer = viewer
        self.key = (*self.key, viewer)

    def __call__(self, row: dict[str, Any]) -> bool:
        holder = row.get("claimed_by")
        if holder and holder != self.viewer:
            lease = row.get("lease_expires_at")
            if lease is None or lease > time.time() * 1000:
                return False
        return super().__call__(row)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one principal may see: a tenant, and within it some sites, subspecialties and
    modalities (empty means every one). The one definition of "may this principal see
    this row", used by every path (snapshot, delta, resume, presence, reviews, claims,
    errors); `scope_view` narrows views with it, so a view's matcher never admits more
    than it."""

    tenant: str
    sites: frozenset[str] = frozenset()
    subspecialties: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()

    @property
    def fingerprint(self) -> str:
        """The scope as a stable text (equal scopes, equal texts)."""
        parts = (self.sites, self.subspecialties, self.modalities)
        return "|".join([self.tenant, *(",".join(sorted(p)) for p in parts)])

    @classmethod
    def of_person(cls, person: Person) -> Scope:
        """A directory person's scope (what the gateway builds a principal from)."""
        return cls(
            person.tenant,
            frozenset(person.sites),
            frozenset(person.subspecialties),
            frozenset(person.modalities),
        )

    def limits(self) -> dict[str, list[str]]:
        """The scope's lists as JSON (the tenant aside), for `from_limits` on any node."""
        return {
            "sites": sorted(self.sites),
            "subspecialties": sorted(self.subspecialties),
            "modalities": sorted(self.modalities),
        }

    @classmethod
    def from_limits(cls, tenant: str, limits: dict[str, Any]) -> Scope:
        return cls(
            tenant,
            frozenset(limits.get("sites", ())),
            frozenset(limits.get("subspecialties", ())),
            frozenset(limits.get("modalities", ())),
        )

    def allows(self, row: dict[str, Any]) -> bool:
        return (
            row.get("tenant") == self.tenant
            and (not self.sites or row.get("site") in self.sites)
            and (not self.subspecialties or row.get("subspecialty") in self.subspecialties)
            and (not self.modalities or row.get("modality") in self.modalities)
        )


def scope_view(view: View, scope: Scope) -> View:
    """The view narrowed to what a user may see (empty scope lists mean "any").

    A view that names something outside the scope is refused rather than silently
    narrowed, so a client never mistakes a forbidden filter for an empty worklist.
    """
    update: dict[str, Any] = {}
    for field_name, allowed in (
        ("sites", scope.sites),
        ("subspecialties", scope.subspecialties),
        ("modalities", scope.modalities),
    ):
        if not allowed:
            continue
        asked = getattr(view, field_name)
        outside = sorted(set(map(str, asked)) - set(allowed))
        if outside:
            raise OutOfScope(f"{field_name} not yours: {', '.join(outside)}")
        if asked:
            update[field_name] = list(asked)
        elif field_name == "modalities":
            known = [Modality(m) for m in sorted(allowed) if m in _MODALITIES]
            if not known:  # never widened to "any" by a code nobody reads
                raise OutOfScope("none of your modalities is one this worklist knows")
            update[field_name] = known
        else:
            update[field_name] = sorted(allowed)
    return view.model_copy(update=update) if update else view
