"""A sender is who it proves it is: each site mapping admits the peers bound to it (a
client certificate's CN/SAN under TLS, a source address otherwise), any other MSH-4
from a peer is AR with a reason, nothing of such a peer is stored, and the dedupe
ledger cannot be poisoned from another peer. Over real MLLP (and real TLS, with
certificates made here by openssl) into DynamoDB Local. Data synthetic."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest

from dynamo.exceptions import ExamNotFound
from dynamo.store import ExamStore
from hl7_ingest.deadletters import DeadLetters
from hl7_ingest.exceptions import MllpError
from hl7_ingest.mapping import Mappings, SiteMapping
from hl7_ingest.message import parse
from hl7_ingest.mllp import wrap
from loadtest.hl7.client import MllpClient
from tests.conftest import UNIT
from tests.support.hl7 import LK, NW, Running, builder, cid, planned, running, table_items
from tests.support.hl7_senders import bound

# Loopback is 127.0.0.0/8: three distinct source addresses on one host.
NW_HOST, LK_HOST, NOBODY = "127.0.0.1", "127.0.0.2", "127.0.0.3"


BY_ADDRESS = Mappings([bound(NW, [f"{NW_HOST}/32"]), bound(LK, [LK_HOST])])


def client(hl7: Running, source: str, **kw: object) -> MllpClient:
    return MllpClient("127.0.0.1", hl7.port, timeout=10 * UNIT, local_address=source, **kw)  # type: ignore[arg-type]


async def exists(store: ExamStore, tenant: str, accession: str) -> bool:
    try:
        await store.find_exam(tenant, accession)
    except ExamNotFound:
        return False
    return True


async def test_a_peer_may_send_only_as_the_facilities_bound_to_its_address(
    store: ExamStore,
) -> None:
    nw, lk = planned("NWGEN"), planned("LKMED")
    async with running(store, BY_ADDRESS) as hl7:
        async with client(hl7, NW_HOST) as c:
            assert (await c.send(builder("NWGEN").new_order(nw, control_id=cid()))).code == "AA"
            # The same connection writing LKMED in MSH-4: refused, and told why.
            ack = await c.send(builder("LKMED").new_order(lk, control_id=cid()))
            assert (ack.code, ack.error_field) == ("AR", "MSH-4")
            assert "may not send as LKMED" in ack.error_text and "address" in ack.error_text
        async with client(hl7, LK_HOST) as c:
            ack = await c.send(builder("NWGEN").new_order(planned("NWGEN"), control_id=cid()))
            assert ack.code == "AR"
        async with client(hl7, NOBODY) as c:
            # A peer no mapping admits: AR for every facility, and for garbage too.
            assert (await c.send(builder("NWGEN").new_order(nw, control_id=cid()))).code == "AR"
            assert (await c.send("this is not HL7")).code == "AR"
        # Unframed bytes of that peer are not kept either.
        _, writer = await asyncio.open_connection("127.0.0.1", hl7.port, local_addr=(NOBODY, 0))
        writer.write(builder("NWGEN").new_order(nw, control_id=cid()).encode() + b"\x1c\r")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.2 * UNIT)
        assert hl7.ingest.counts["not stored"] == 4
    assert await exists(store, "northwind", nw.accession)
    assert not await exists(store, "lakeside", lk.accession)
    # Nothing of the refused peers was stored: no dead letter, no ledger entry.
    assert await DeadLetters(store).list(include_replayed=True) == []
    ledger = [i for i in await table_items(store) if i.get("entity") == "HL7MSG"]
    assert [i["sender"] for i in ledger] == ["NWGEN"]


async def test_another_peer_cannot_poison_a_sites_control_ids(store: ExamStore) -> None:
    """Pre-sending NWGEN's coming MSH-10 from elsewhere used to make the real message
    answer AA 'duplicate' and vanish."""
    exam = planned("NWGEN")
    real = builder("NWGEN").new_order(exam, control_id="NWG-COMING-1")
    forged = builder("NWGEN").new_order(planned("NWGEN"), control_id="NWG-COMING-1")
    async with running(store, BY_ADDRESS) as hl7:
        async with client(hl7, LK_HOST) as c:
            assert (await c.send(forged)).code == "AR"
        async with client(hl7, NW_HOST) as c:
            assert (await c.send(real)).code == "AA"
        assert hl7.ingest.counts["duplicate"] == 0
    assert await exists(store, "northwind", exam.accession)


async def test_a_reused_control_id_with_other_content_is_ae_and_dead_lettered(
    store: ExamStore,
) -> None:
    first, other = planned("NWGEN"), planned("NWGEN")
    control_id = cid()
    original = builder("NWGEN").new_order(first, control_id=control_id)
    async with running(store, BY_ADDRESS) as hl7, client(hl7, NW_HOST) as c:
        assert (await c.send(original)).code == "AA"
        # A resend (MSH-7 stamped anew, as some engines do) is still a duplicate ...
        resend = parse(original)
        resend.set("MSH-7", "20300101000000")
        assert (await c.send(resend.encode())).code == "AA"
        assert hl7.ingest.counts["duplicate"] == 1
        # ... but another message under the same MSH-10 is not.
        ack = await c.send(builder("NWGEN").new_order(other, control_id=control_id))
        assert (ack.code, ack.error_field) == ("AE", "MSH-10")
        assert "different content" in ack.error_text
    assert not await exists(store, "northwind", other.accession)
    (letter,) = await DeadLetters(store).list()
    assert (letter.control_id, letter.ack_code, letter.field) == (control_id, "AE", "MSH-10")


# ---- TLS: the certificate is the identity ------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _pki(tmp: Path) -> dict[str, Path]:
    """A CA, the listener's certificate, and one client certificate per site."""
    out: dict[str, Path] = {}
    ca_key, ca = tmp / "ca.key", tmp / "ca.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Test HL7 CA",
        "-keyout", str(ca_key), "-out", str(ca),
    )  # fmt: skip
    out["ca"] = ca
    for name, subject, san in (
        ("server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("nwgen", "/O=Northwind/CN=nwgen-ris.test", "subjectAltName=DNS:nwgen-ris.test"),
        ("lkmed", "/CN=lkmed-engine.test", "subjectAltName=URI:urn:lkmed:ris,DNS:lk.test"),
    ):
        key, csr, cert, ext = (tmp / f"{name}{s}" for s in (".key", ".csr", ".pem", ".ext"))
        ext.write_text(san + "\n")
        _openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip
        out[name], out[f"{name}.key"] = cert, key
    return out


def _client_context(pki: dict[str, Path], who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if who:
        context.load_cert_chain(str(pki[who]), str(pki[f"{who}.key"]))
    return context


async def test_under_tls_the_client_certificate_names_the_facilities(
    store: ExamStore, tmp_path: Path
) -> None:
    pki = await asyncio.to_thread(_pki, tmp_path)
    # Both admit loopback by address too: under client certificates that does not count.
    mappings = Mappings(
        [
            bound(NW, ["127.0.0.0/8"], ["nwgen-ris.test"]),
            bound(LK, ["127.0.0.0/8"], ["urn:lkmed:ris"]),  # a SAN URI
        ]
    )
    tls = {"tls_cert": str(pki["server"]), "tls_key": str(pki["server.key"])}
    nw, lk = planned("NWGEN"), planned("LKMED")
    async with running(store, mappings, tls_client_ca=str(pki["ca"]), **tls) as hl7:
        async with client(hl7, NW_HOST, ssl_context=_client_context(pki, "nwgen")) as c:
            assert (await c.send(builder("NWGEN").new_order(nw, control_id=cid()))).code == "AA"
            ack = await c.send(builder("LKMED").new_order(lk, control_id=cid()))
            assert ack.code == "AR" and "client certificate" in ack.error_text
        async with client(hl7, NW_HOST, ssl_context=_client_context(pki, "lkmed")) as c:
            assert (await c.send(builder("LKMED").new_order(lk, control_id=cid()))).code == "AA"
            forged = builder("NWGEN").new_order(planned("NWGEN"), control_id=cid())
            assert (await c.send(forged)).code == "AR"
        # Without a certificate the handshake itself fails.
        with pytest.raises((MllpError, ssl.SSLError, ConnectionError)):
            async with client(hl7, NW_HOST, ssl_context=_client_context(pki, None)) as c:
                await c.send(builder("NWGEN").new_order(planned("NWGEN"), control_id=cid()))
    assert await exists(store, "northwind", nw.accession)
    assert await exists(store, "lakeside", lk.accession)
    assert await DeadLetters(store).list() == []


async def test_tls_without_client_certificates_falls_back_to_the_address(
    store: ExamStore, tmp_path: Path
) -> None:
    pki = await asyncio.to_thread(_pki, tmp_path)
    tls = {"tls_cert": str(pki["server"]), "tls_key": str(pki["server.key"])}
    async with running(store, BY_ADDRESS, **tls) as hl7:
        async with client(hl7, LK_HOST, ssl_context=_client_context(pki, None)) as c:
            lk = builder("LKMED").new_order(planned("LKMED"), control_id=cid())
            assert (await c.send(lk)).code == "AA"
            nw = builder("NWGEN").new_order(planned("NWGEN"), control_id=cid())
            assert (await c.send(nw)).code == "AR"


def test_a_mapping_without_peers_admits_nobody_and_bad_networks_are_refused() -> None:
    from hl7_ingest.peers import Peer

    data = NW.model_dump(mode="json")
    data.pop("peers")
    assert not SiteMapping.model_validate(data).peers.admits(Peer("127.0.0.1"))
    with pytest.raises(ValueError, match="host bits"):
        bound(NW, ["10.0.0.1/24"])
    assert bound(NW, ["::1"]).peers.admits(Peer("::1"))
    assert bound(NW, ["127.0.0.1"]).peers.admits(Peer("::ffff:127.0.0.1"))


async def test_unframed_bytes_of_a_bound_peer_are_still_kept(store: ExamStore) -> None:
    async with running(store, BY_ADDRESS) as hl7:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", hl7.port, local_addr=(NW_HOST, 0)
        )
        lost = builder("NWGEN").new_order(planned("NWGEN"), control_id=cid())
        writer.write(
            lost.encode()
            + b"\x1c\r"
            + wrap(builder("NWGEN").new_order(planned("NWGEN"), control_id=cid()))
        )
        await writer.drain()
        assert b"MSA|AA" in await asyncio.wait_for(reader.read(65536), 10 * UNIT)
        writer.close()
        await writer.wait_closed()
    (letter,) = await DeadLetters(store).list()
    assert letter.peer_address == NW_HOST and "outside an MLLP frame" in letter.reason
