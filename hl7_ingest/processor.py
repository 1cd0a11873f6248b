"""One message in, one ACK out: parse, check, deduplicate, apply, record, answer.

    parse            not HL7, or more parts than the HL7_MAX_* limits -> AR (counted
                     before anything is built; fields are split when first read)
    MSH-4            no mapping for the sending facility, or one that does not admit
                     this connection's peer (`peers`: certificate or address) -> AR;
                     with the directory (`hl7_ingest.directory`, always in the listener
                     process): a facility the directory does not bind to an active site
                     of the mapping's tenant -> AR, and one it binds without a mapping
                     file speaks the default dialect
    MSH-11           not this listener's processing ID -> AR
    MSH-9            a type the site's mapping does not list -> AR
    MSH-10           accepted before from this facility (the ledger) with the same
                     content digest -> AA again, nothing written; with another
                     content -> AE (a different message reusing the control ID)
    interpret+apply  through the site's mapping into the store -> AA, or AE naming the
                     field and the reason; a new order for a site the directory does not
                     bind to this facility, or marks inactive -> AR, nothing applied
    record           the control ID, after the write (see `ledger`)

Every AE and AR of an authenticated peer is dead-lettered before it is sent; nothing
of a peer that failed identity is stored. When the store is unavailable
nothing is sent (`NotAcknowledged`) and the listener closes the connection, so the
sender resends from that message on and per-connection order is kept.

Deliveries of one control ID are serialized in this process, so a resend that arrives
on a second connection while the first is still being applied waits and is then
answered from the ledger. Logs name the sender, control ID, type, answer and reason:
never a name, an MRN or the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from dynamo.exceptions import StoreUnavailable
from dynamo.store import ExamStore
from hl7_ingest.ack import build_ack
from hl7_ingest.apply import apply
from hl7_ingest.deadletters import DeadLetters, PeerBudget, dead_letter_table
from hl7_ingest.directory import FacilityBinding, SiteDirectory, load_dialect
from hl7_ingest.exceptions import (
    DATA_TYPE_ERROR,
    DUPLICATE_KEY,
    INTERNAL_ERROR,
    REQUIRED_FIELD_MISSING,
    UNKNOWN_KEY,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    AckCode,
    ApplicationRejected,
    MessageRejected,
    NotAcknowledged,
    Rejection,
)
from hl7_ingest.interpret import NewOrder, interpret
from hl7_ingest.ledger import Ledger
from hl7_ingest.mapping import Mappings, SiteMapping
from hl7_ingest.message import Message, parse
from hl7_ingest.peers import Peer
from hl7_ingest.settings import Hl7Settings

__all__ = ["Ingest", "Outcome", "content_digest", "parse_message"]

log = logging.getLogger("hl7_ingest")

_MAX_CONTROL_ID = 199  # MSH-10's length in v2.5; it becomes part of a DynamoDB key
# Parsing stays on the event loop. With the limits a 1 MiB message costs ~5 ms to parse
# and ~15 ms if every field of it is read (loadtest/hl7_parser_cost.py). A worker thread
# was measured not to help: the parse holds the GIL, and the loop's own I/O then waits
# for it (loop stalls of 80-180 ms with the thread against ~100 ms without it).


@dataclass(frozen=True)
class Outcome:
    ack: str  # the ACK message
    code: AckCode
    control_id: str
    sender: str
    message_type: str
    reason: str = ""
    duplicate: bool = False
    dead_letter: str | None = None


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # the usual 8859/1 of older RIS; every byte decodes


def parse_message(raw: bytes, settings: Hl7Settings) -> Message:
    """The bytes of one frame as a message, within the settings' limits (AR beyond)."""
    return parse(decode(raw), settings.limits())


def content_digest(raw: bytes) -> str:
    """What makes a resend the same message: its text with line ends normalized and
    MSH-7 (the time of the message, which some engines stamp anew on a resend) left out."""
    text = decode(raw).replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t")
    head, _, rest = text.partition("\r")
    if len(head) > 3:
        fields = head.split(head[3])
        if len(fields) > 6:
            fields[6] = ""
        head = head[3].join(fields)
    return hashlib.sha256(f"{head}\r{rest}".encode()).hexdigest()[:32]


def _guess_control_id(text: str) -> str:
    """MSH-10 of something that did not parse, for MSA-2 (best effort)."""
    if not text.startswith("MSH") or len(text) < 4:
        return ""
    fields = text.split("\r", 1)[0].split("\n", 1)[0].split(text[3])
    return fields[9][:40] if len(fields) > 9 else ""


def _safe(value: str, limit: int = 24) -> str:
    """A message-supplied identifier fit for a log line."""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


class Ingest:
    def __init__(
        self,
        store: ExamStore,
        mappings: Mappings,
        settings: Hl7Settings | None = None,
        *,
        directory: SiteDirectory | None = None,
    ) -> None:
        """`directory`: the directory decides which facility sends for which tenant and
        site (the listener process always has one); None: the mapping files alone do
        (a library use, and the tests of the mappings themselves)."""
        self.store = store
        self.mappings = mappings
        self.settings = settings or Hl7Settings()
        self.directory = directory
        self.dialect = (
            load_dialect(self.settings.default_dialect, self.settings.dialects_dir or None)
            if directory is not None
            else None
        )
        self.ledger = Ledger(store, keep_days=self.settings.dedupe_days)
        self.dead_letters = DeadLetters(
            store,
            dead_letter_table(store.table, self.settings.dead_letter_table),
            keep_days=self.settings.dead_letter_days,
            max_bytes=self.settings.dead_letter_max_bytes,
        )
        self._budget = PeerBudget(self.settings.dead_letters_per_minute)
        self.counts: Counter[str] = Counter()
        self._limits = self.settings.limits()
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    # ---- the one entry point --------------------------------------------------------

    async def handle(self, raw: bytes, peer: Peer) -> Outcome:
        """Process one message (the bytes inside an MLLP frame) from `peer` and return
        the ACK.

        Raises `NotAcknowledged` when nothing may be answered."""
        started = time.monotonic()
        try:
            message = await self._parse(raw)
        except MessageRejected as exc:
            control_id = _guess_control_id(decode(raw[:4096]))
            # Kept only when the peer is somebody: a site's RIS sending garbage.
            known = self._known_peer(peer)
            return await self._reject(raw, None, exc, peer, started, "", control_id, keep=known)
        msh = message.msh
        sender = msh.get(4)
        control_id = msh.get(10)
        kind = f"{msh.get(9, 1)}^{msh.get(9, 2)}"
        try:
            mapping, binding = await self._identify(sender, peer)
        except Rejection as exc:
            return await self._reject(
                raw, message, exc, peer, started, kind, control_id, keep=False
            )
        try:
            self._check(message, mapping, control_id, kind)
        except Rejection as exc:
            return await self._reject(raw, message, exc, peer, started, kind, control_id)
        async with self._exclusive(mapping.sender, control_id):
            return await self._process(
                raw, message, mapping, control_id, kind, peer, started, binding
            )

    def _known_peer(self, peer: Peer) -> bool:
        """Whether `peer` may send as some facility (a mapping's or the dialect's)."""
        if self.mappings.admitting(peer):
            return True
        return self.dialect is not None and self.dialect.peers.admits(peer)

    async def _parse(self, raw: bytes) -> Message:
        return parse(decode(raw), self._limits)

    async def _identify(
        self, sender: str, peer: Peer
    ) -> tuple[SiteMapping, FacilityBinding | None]:
        """The mapping of MSH-4 (and the directory's binding of it), if the directory
        binds the facility and this connection may send as it (else AR)."""
        mapping = self.mappings.get(sender)
        binding: FacilityBinding | None = None
        if self.directory is not None:
            binding = await self.directory.binding(sender)
            binding.check(mapping)
            if mapping is None:
                assert self.dialect is not None
                mapping = self.directory.dialect(binding, self.dialect)
        if mapping is None:
            raise MessageRejected(UNKNOWN_KEY, "MSH-4", "no mapping for this sending facility")
        if not mapping.peers.admits(peer):
            how = (
                "its client certificate is not among the mapping's peers.certificates"
                if peer.certified
                else "its source address is not among the mapping's peers.addresses"
            )
            raise MessageRejected(
                UNKNOWN_KEY, "MSH-4", f"this connection may not send as {mapping.sender}: {how}"
            )
        return mapping, binding

    def _check(self, message: Message, mapping: SiteMapping, control_id: str, kind: str) -> None:
        if not control_id:
            raise MessageRejected(REQUIRED_FIELD_MISSING, "MSH-10", "MSH-10 is required")
        if len(control_id) > _MAX_CONTROL_ID:
            raise MessageRejected(
                DATA_TYPE_ERROR, "MSH-10", f"MSH-10 is longer than {_MAX_CONTROL_ID} characters"
            )
        processing = message.msh.get(11).upper()
        if processing != self.settings.processing_id.upper():
            raise MessageRejected(
                UNSUPPORTED_PROCESSING_ID,
                "MSH-11",
                f"MSH-11 is not {self.settings.processing_id}, the processing ID of this listener",
            )
        if kind not in mapping.message_types:
            types = {t.split("^")[0] for t in mapping.message_types}
            code = (
                UNSUPPORTED_EVENT_CODE if kind.split("^")[0] in types else UNSUPPORTED_MESSAGE_TYPE
            )
            raise MessageRejected(
                code, "MSH-9", f"{kind} is not a message type {mapping.sender} may send"
            )

    async def _process(
        self,
        raw: bytes,
        message: Message,
        mapping: SiteMapping,
        control_id: str,
        kind: str,
        peer: Peer,
        started: float,
        binding: FacilityBinding | None = None,
    ) -> Outcome:
        sender = mapping.sender
        digest = content_digest(raw)
        try:
            before = await self.ledger.digest(sender, control_id)
            if before is not None and before not in ("", digest):
                # Not a resend: another message under a control ID already used.
                raise ApplicationRejected(
                    DUPLICATE_KEY,
                    "MSH-10",
                    "this MSH-10 was accepted before with different content; not applied",
                )
            if before is not None:
                self.counts["duplicate"] += 1
                self._log("AA", sender, control_id, kind, started, "duplicate, not applied again")
                return self._outcome("AA", message, sender, control_id, kind, duplicate=True)
            command = interpret(message, mapping)
            if binding is not None and isinstance(command, NewOrder):
                site_path = mapping.site.paths[0] if mapping.site.paths else "MSH-4"
                binding.check_site(command.exam.site, site_path)
            summary = await apply(self.store, command)
            await self.ledger.record(sender, control_id, kind, summary, digest=digest)
        except Rejection as exc:
            return await self._reject(raw, message, exc, peer, started, kind, control_id)
        except (NotAcknowledged, StoreUnavailable) as exc:
            self.counts["unacknowledged"] += 1
            self._log("--", sender, control_id, kind, started, f"not acknowledged: {exc.reason}")
            raise NotAcknowledged(exc.reason) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A defect, not the message's fault: say where, never what (values may be PHI).
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "hl7 sender=%s control_id=%s type=%s internal error %s at %s:%s",
                sender,
                _safe(control_id),
                kind,
                type(exc).__name__,
                where.filename.rsplit("/", 1)[-1],
                where.lineno,
            )
            error = ApplicationRejected(
                INTERNAL_ERROR, "", f"internal error ({type(exc).__name__})"
            )
            return await self._reject(raw, message, error, peer, started, kind, control_id)
        self.counts["AA"] += 1
        self._log("AA", sender, control_id, kind, started, summary)
        return self._outcome("AA", message, sender, control_id, kind)

    # ---- answers --------------------------------------------------------------------------

    def _outcome(
        self,
        code: AckCode,
        message: Message | None,
        sender: str,
        control_id: str,
        kind: str,
        *,
        error: Rejection | None = None,
        duplicate: bool = False,
        dead_letter: str | None = None,
    ) -> Outcome:
        ack = build_ack(
            code,
            message=message,
            control_id=control_id,
            error=error,
            application=self.settings.application,
            facility=self.settings.facility,
        )
        return Outcome(
            ack=ack,
            code=code,
            control_id=control_id,
            sender=sender,
            message_type=kind,
            reason=error.reason if error is not None else "",
            duplicate=duplicate,
            dead_letter=dead_letter,
        )

    async def _reject(
        self,
        raw: bytes,
        message: Message | None,
        error: Rejection,
        peer: Peer,
        started: float,
        kind: str,
        control_id: str,
        *,
        keep: bool = True,
    ) -> Outcome:
        """The negative ACK, after its dead letter is stored (`keep`: the peer proved who
        it is; otherwise nothing of it is stored)."""
        sender = message.msh.get(4) if message is not None else ""
        if not keep:
            self.counts[error.ack_code] += 1
            self.counts["not stored"] += 1
            self._log(
                error.ack_code,
                sender,
                control_id if message is not None else "?",
                kind,
                started,
                f"{error.error_code} {error.field or '-'}: {error.reason}"
                f" (peer {peer.label}; not stored)",
            )
            return self._outcome(error.ack_code, message, sender, control_id, kind, error=error)
        if not self._budget.take(peer.address):
            self.counts["unacknowledged"] += 1
            self._log("--", sender, control_id, kind, started, "dead-letter rate limit")
            raise NotAcknowledged(f"more than {self._budget.capacity:g} dead letters a minute")
        try:
            dl_id = await self.dead_letters.put(
                raw,
                sender=sender,
                control_id=control_id,
                message_type=kind,
                ack_code=error.ack_code,
                error_code=error.error_code,
                field=error.field,
                reason=error.reason,
                peer=peer,
            )
        except Exception as exc:
            # Without its dead letter a rejected message would be lost: answer nothing.
            self.counts["unacknowledged"] += 1
            self._log("--", sender, control_id, kind, started, "dead letter not stored")
            raise NotAcknowledged(f"dead letter not stored ({type(exc).__name__})") from None
        self.counts[error.ack_code] += 1
        self._log(
            error.ack_code,
            sender,
            # What an unparsed message holds where MSH-10 would be may be anything.
            control_id if message is not None else "?",
            kind,
            started,
            f"{error.error_code} {error.field or '-'}: {error.reason} (dead letter {dl_id})",
        )
        return self._outcome(
            error.ack_code, message, sender, control_id, kind, error=error, dead_letter=dl_id
        )

    async def discarded(self, raw: bytes, peer: Peer) -> str | None:
        """Bytes that arrived outside an MLLP frame: a message among them is never
        acknowledged (the sender will resend it); it is kept as a dead letter when its
        peer is bound to its MSH-4 (or it names none), and the peer's budget allows."""
        known = self._known_peer(peer)
        if b"MSH" not in raw or not known:
            log.warning(
                "hl7 peer=%s discarded %d bytes outside any MLLP frame%s",
                peer.label,
                len(raw),
                "" if known else " (peer bound to no facility; not stored)",
            )
            return None
        start = raw.find(b"MSH")
        body = raw[start:].rstrip(b"\x1c\r\n")
        control_id = _guess_control_id(decode(body[:4096]))
        sender = ""
        try:
            message: Message | None = await self._parse(body)
        except MessageRejected:
            message = None
        if message is not None:
            sender = message.msh.get(4)
            mapping = self.mappings.get(sender) or self.dialect
            if mapping is None or not mapping.peers.admits(peer):
                log.warning(
                    "hl7 peer=%s message outside an MLLP frame for a facility it is not"
                    " bound to; not stored",
                    peer.label,
                )
                return None
        if not self._budget.take(peer.address):
            log.warning(
                "hl7 peer=%s message outside an MLLP frame; rate limit, not stored", peer.label
            )
            return None
        dl_id = await self.dead_letters.put(
            raw[start:].rstrip(b"\x1c\r\n"),
            sender=sender,
            control_id=control_id,
            message_type="",
            ack_code="",
            error_code="",
            field="",
            reason="arrived outside an MLLP frame (no start block); not acknowledged",
            peer=peer,
        )
        self.counts["unframed"] += 1
        log.warning(
            "hl7 peer=%s sender=%s control_id=%s message outside an MLLP frame, not"
            " acknowledged (dead letter %s)",
            peer.label,
            _safe(sender) or "?",
            _safe(message.msh.get(10)) if message is not None else "?",
            dl_id,
        )
        return dl_id

    def _log(
        self, code: str, sender: str, control_id: str, kind: str, started: float, detail: str
    ) -> None:
        elapsed = (time.monotonic() - started) * 1000
        level = logging.INFO if code == "AA" else logging.WARNING
        log.log(
            level,
            "hl7 sender=%s control_id=%s type=%s ack=%s ms=%.1f %s",
            _safe(sender),
            _safe(control_id),
            _safe(kind, 8) or "-",
            code,
            elapsed,
            detail,
        )

    # ---- one delivery of a control ID at a time ---------------------------------------

    def _exclusive(self, sender: str, control_id: str) -> _KeyLock:
        return _KeyLock(self._locks, (sender, control_id))


class _KeyLock:
    """An asyncio.Lock per key that exists only while someone holds or awaits it."""

    def __init__(
        self, locks: dict[tuple[str, str], tuple[asyncio.Lock, int]], key: tuple[str, str]
    ) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key, (asyncio.Lock(), 0))
        self._locks[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._release_user()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._locks[self._key][0].release()
        self._release_user()

    def _release_user(self) -> None:
        lock, users = self._locks[self._key]
        if users <= 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)
