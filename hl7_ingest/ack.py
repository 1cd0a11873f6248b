"""ACK messages (original acknowledgment mode): MSA-1 AA, AE or AR, MSA-2 the control ID
(MSH-10) of the message being answered, and for AE/AR an ERR segment naming the field
and the reason.

ERR follows the version of the message answered: v2.3.1 has only ERR-1 (segment^
sequence^field^code&text&HL70357); from v2.5 ERR-2 locates the field, ERR-3 holds the
HL7 table 0357 code, ERR-4 the severity and ERR-8 the reason for a person to read.
"""

from __future__ import annotations

import itertools
import os
import time

from hl7_ingest.exceptions import ERROR_TEXT, AckCode, Rejection
from hl7_ingest.message import Encoding, Message, parse, parse_path

__all__ = ["Ack", "build_ack", "read_ack"]

_MSA3_MAX = 80  # MSA-3 is an ST of 80 characters in v2.3.1
_ids = itertools.count(1)
_node = f"{os.getpid() % 100000:05d}"


def _control_id() -> str:
    # Unique per process and run; MSH-10 allows 20 characters (v2.3.1).
    return f"A{_node}{int(time.time()) % 100000:05d}{next(_ids) % 1_000_000_000:09d}"


def hl7_now() -> str:
    return time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())


def _version_at_least(version: str, major: int, minor: int) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def build_ack(
    code: AckCode,
    *,
    message: Message | None,
    control_id: str,
    error: Rejection | None = None,
    application: str = "RISLIVE",
    facility: str = "RISLIVE",
    text: str = "",
) -> str:
    """The ACK for `message` (None when it could not be parsed at all)."""
    enc = message.encoding if message is not None else Encoding()
    ack = Message(encoding=enc)
    msh = ack.add("MSH")
    version = "2.5.1"
    trigger = ""
    processing = "P"
    if message is not None:
        src = message.msh
        msh.set_field(5, src.components(3))  # their application and facility ...
        msh.set_field(6, src.components(4))
        version = src.get(12) or version
        trigger = src.get(9, 2)
        processing = src.get(11) or processing
    msh.set(3, application)  # ... and ours
    msh.set(4, facility)
    msh.set(7, hl7_now())
    msg_type = ["ACK", trigger] + (["ACK"] if _version_at_least(version, 2, 4) else [])
    msh.set_field(9, msg_type if trigger else ["ACK"])
    msh.set(10, _control_id())
    msh.set(11, processing)
    msh.set(12, version)

    msa = ack.add("MSA")
    msa.set(1, code)
    msa.set(2, control_id)
    reason = text or (error.reason if error is not None else "")
    if reason:
        msa.set(3, reason[:_MSA3_MAX])
    if error is not None and code != "AA":
        err = ack.add("ERR")
        location = _location(error.field)
        label = ERROR_TEXT.get(error.error_code, "")
        if _version_at_least(version, 2, 5):
            err.set_field(2, location)
            err.set_field(3, [error.error_code, label, "HL70357"])
            err.set(4, "E")
            err.set(8, error.reason)
        else:
            err.set_field(1, [*location[:3], ""])
            err.set(1, error.error_code, component=4, subcomponent=1)
            err.set(1, label, component=4, subcomponent=2)
            err.set(1, "HL70357", component=4, subcomponent=3)
    return ack.encode()


def _location(field: str) -> list[str]:
    """ERR-2 (ERL): segment^sequence^field^repetition^component."""
    if not field:
        return []
    try:
        p = parse_path(field)
    except ValueError:
        return [field[:3]]
    out = [p.segment, "1", str(p.field)]
    if not p.whole_field:
        out += ["1", str(p.component)]
    return out


class Ack:
    """A received ACK, as a client reads it."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.code = message.get("MSA-1")
        self.control_id = message.get("MSA-2")
        self.text = message.get("MSA-3")
        err = message.segment("ERR")
        self.error_code = ""
        self.error_field = ""
        self.error_text = ""
        if err is not None:
            if err.get(3):
                self.error_code = err.get(3)
                self.error_field = _format_location(err.components(2))
                self.error_text = err.get(8)
            else:
                self.error_code = err.get(1, 4, 1)
                self.error_field = _format_location(err.components(1)[:3])
                self.error_text = self.text

    def __repr__(self) -> str:
        return f"Ack({self.code} {self.control_id} {self.error_field} {self.text!r})"


def _format_location(parts: list[str]) -> str:
    if len(parts) < 3 or not parts[0]:
        return parts[0] if parts else ""
    out = f"{parts[0]}-{parts[2]}"
    if len(parts) >= 5 and parts[4]:
        out += f".{parts[4]}"
    return out


def read_ack(text: str) -> Ack:
    return Ack(parse(text))
