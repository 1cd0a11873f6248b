"""Helpers of the HL7 sender tests: a mapping bound to given peers."""

from __future__ import annotations

from hl7_ingest.mapping import SiteMapping


def bound(
    base: SiteMapping, addresses: list[str], certificates: tuple[str, ...] | list[str] = ()
) -> SiteMapping:
    data = base.model_dump(mode="json")
    data["peers"] = {"addresses": addresses, "certificates": list(certificates)}
    return SiteMapping.model_validate(data)
