"""Who is on the other end of a connection, and which sending facilities it may speak for.

MSH-4 is written by the sender, so it proves nothing. What the listener knows for itself
is the connection: its source address, and, when the listener requires client
certificates (`HL7_TLS_CLIENT_CA`), the names in the certificate that the CA signed and
the TLS handshake verified. Each site mapping lists the peers allowed to send as it
(`PeerRule`):

    "peers": {"addresses": ["10.20.0.15", "10.20.1.0/28"],
              "certificates": ["ris.eastgate.example"]}

A connection with a verified client certificate is matched by certificate only: its
subject CN or one of its subjectAltNames (DNS, IP, URI, email) must be listed in
`certificates`. Any other connection (plain TCP, or TLS without client certificates)
is matched by source address against `addresses` (IPs or CIDR blocks). An empty list
admits nobody, so a mapping without `peers` accepts no message at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["Peer", "PeerRule", "peer_of"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Peer:
    """The authenticated facts of one connection."""

    address: str  # source IP, as the socket reports it
    port: int = 0
    # Subject CN and subjectAltNames of a verified client certificate (lower case);
    # empty without one.
    names: frozenset[str] = field(default_factory=frozenset)

    @property
    def certified(self) -> bool:
        return bool(self.names)

    @property
    def label(self) -> str:
        """For logs: the address and port (a certificate name when there is one)."""
        where = f"{self.address}:{self.port}"
        return f"{where} ({min(self.names)})" if self.names else where

    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            ip = ipaddress.ip_address(self.address.split("%", 1)[0])
        except ValueError:
            return None
        # An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip


class PeerRule(BaseModel):
    """The peers a site mapping admits (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    addresses: list[IpNetwork] = []
    certificates: list[str] = []

    @field_validator("addresses", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            # strict=True: "10.0.0.1/24" (host bits set) is a typo, not a /24.
            return [ipaddress.ip_network(str(v), strict=True) for v in value]
        return value

    @field_validator("certificates")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]

    def admits(self, peer: Peer) -> bool:
        if peer.certified:
            return any(name in peer.names for name in self.certificates)
        ip = peer.ip()
        return ip is not None and any(ip in net for net in self.addresses)


def peer_of(extra: Any) -> Peer:
    """The Peer of a connection, from its transport's `get_extra_info`."""
    peername = extra("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        address, port = str(peername[0]), int(peername[1])
    else:
        address, port = str(peername or ""), 0
    cert = extra("peercert")  # a dict only when the handshake verified a certificate
    names: set[str] = set()
    if cert:
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    names.add(str(value).lower())
        for kind, value in cert.get("subjectAltName", ()):
            if kind in ("DNS", "IP Address", "URI", "email"):
                names.add(str(value).strip().lower())
    return Peer(address, port, frozenset(names))
