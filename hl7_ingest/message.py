"""A small HL7 v2 parser and writer (no dependencies).

Segments end with a carriage return (a bare LF or CRLF is tolerated); fields are split
on the field separator (MSH-1), then repetitions, components and subcomponents on the
encoding characters of MSH-2, which this parser honours whatever they are. Escape
sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ and the formatting ones) are decoded in
every value and written back on encode.

Field numbering follows the standard: MSH-1 is the field separator itself, MSH-2 the
encoding characters, MSH-3 the sending application; in every other segment field 1 is
the first one after the segment name. A *path* names one value:
`SEG-field[.component[.subcomponent]]`, e.g. `PID-3.1`, always in the first repetition
of the field and the first segment of that name.

A sender writes the message, so it chooses what parsing costs: a million repetitions
(`PID|~~~~...`) would be a million lists. `parse` counts the delimiters first (one C
pass per character, whatever the message holds) and refuses a message beyond its
`Limits` before it builds anything (`MessageTooComplex`, an AR).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from hl7_ingest.exceptions import INTERNAL_ERROR, MessageRejected, ParseError

__all__ = [
    "Encoding",
    "Limits",
    "Message",
    "MessageTooComplex",
    "Path",
    "Segment",
    "parse",
    "parse_path",
]


@dataclass(frozen=True)
class Limits:
    """The most of each part one message may hold (the listener's HL7_MAX_* settings)."""

    segments: int = 1000
    fields: int = 8000
    repetitions: int = 1000
    components: int = 8000  # components and subcomponents together
    escapes: int = 2000  # escape sequences (\F\, \X0D\, \.br\, ...)


class MessageTooComplex(MessageRejected):
    """More parts than `Limits` allows: refused before it is parsed."""

    def __init__(self, part: str, limit: int) -> None:
        super().__init__(
            INTERNAL_ERROR, "", f"the message has more than {limit} {part}; refused unparsed"
        )
        self.part = part
        self.limit = limit


Component = list[str]  # subcomponents
Repetition = list[Component]
Field = list[Repetition]

_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\.(\d{1,3}))?(?:\.(\d{1,3}))?$")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass(frozen=True)
class Path:
    segment: str
    field: int
    component: int = 1
    subcomponent: int = 1
    whole_field: bool = False  # no component given: "PID-5" rather than "PID-5.1"

    def __str__(self) -> str:
        out = f"{self.segment}-{self.field}"
        if not self.whole_field:
            out += f".{self.component}"
        return out


def parse_path(text: str) -> Path:
    m = _PATH.match(text.strip())
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"not an HL7 path (SEG-field[.component[.subcomponent]]): {text!r}")
    return Path(
        m.group(1),
        int(m.group(2)),
        int(m.group(3) or 1),
        int(m.group(4) or 1),
        whole_field=m.group(3) is None,
    )


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent

    def escape_text(self, value: str) -> str:
        if not value:
            return value
        e = self.escape
        out = value.replace(e, f"{e}E{e}") if e else value
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            if char:
                out = out.replace(char, f"{e}{code}{e}")
        return out.replace("\r", f"{e}X0D{e}").replace("\n", f"{e}.br{e}")

    def unescape(self, value: str) -> str:
        e = self.escape
        if not e or e not in value:
            return value
        # Split on the escape character: text, code, text, code, ... An unpaired last
        # escape character opens no sequence and is kept as text.
        parts = value.split(e)
        out = [parts[0]]
        pairs = (len(parts) - 1) // 2
        for k in range(pairs):
            code = parts[2 * k + 1]
            out.append(self._sequence(code, e + code + e))
            out.append(parts[2 * k + 2])
        if len(parts) % 2 == 0:
            out.append(e + parts[-1])
        return "".join(out)

    @cached_property
    def _simple(self) -> dict[str, str]:
        return {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            ".br": "\n",
            "H": "",  # highlighting on/off: no meaning in a worklist
            "N": "",
        }

    def _sequence(self, code: str, raw: str) -> str:
        simple = self._simple
        if code in simple:
            return simple[code]
        if code.startswith("X") and len(code) > 1 and len(code) % 2 == 1:
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                return raw
        if code.startswith((".sp", ".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
            return ""
        return raw  # unknown: keep it as it came


class Segment:
    """One segment: its name and its fields (field 1 is `fields[1]`; `fields[0]` is the
    name for uniform indexing).

    A parsed field stays its raw text until it is first read: a worklist reads a few
    dozen fields of a message, so the parts nobody reads cost one `str.split`."""

    __slots__ = ("_enc", "fields", "name")

    def __init__(
        self, name: str, fields: list[Field | str] | None = None, enc: Encoding | None = None
    ) -> None:
        self.name = name
        self.fields: list[Field | str] = fields if fields is not None else [[[[name]]]]
        self._enc = enc or Encoding()

    def field(self, number: int) -> Field:
        if not 0 < number < len(self.fields):
            return []
        value = self.fields[number]
        if isinstance(value, str):
            value = self.fields[number] = _split_field(value, self._enc)
        return value

    def get(self, number: int, component: int = 1, subcomponent: int = 1, rep: int = 1) -> str:
        reps = self.field(number)
        if rep > len(reps):
            return ""
        comps = reps[rep - 1]
        if component > len(comps):
            return ""
        subs = comps[component - 1]
        return subs[subcomponent - 1] if subcomponent <= len(subs) else ""

    def components(self, number: int, rep: int = 1) -> list[str]:
        """The first subcomponent of each component of one repetition."""
        reps = self.field(number)
        if rep > len(reps):
            return []
        return [c[0] if c else "" for c in reps[rep - 1]]

    def repetitions(self, number: int) -> int:
        return len(self.field(number))

    def set(self, number: int, value: str, component: int = 1, subcomponent: int = 1) -> None:
        while len(self.fields) <= number:
            self.fields.append([])
        reps = self.field(number)
        if not reps:
            reps.append([])
        comps = reps[0]
        while len(comps) < component:
            comps.append([""])
        subs = comps[component - 1]
        while len(subs) < subcomponent:
            subs.append("")
        subs[subcomponent - 1] = value

    def set_field(self, number: int, components: list[str]) -> None:
        """Set a whole field (first repetition) from its components."""
        while len(self.fields) <= number:
            self.fields.append([])
        self.fields[number] = [[[c] for c in components]]


@dataclass
class Message:
    segments: list[Segment] = field(default_factory=list)
    encoding: Encoding = field(default_factory=Encoding)

    # ---- reading ------------------------------------------------------------------------

    def segment(self, name: str, index: int = 0) -> Segment | None:
        seen = 0
        for seg in self.segments:
            if seg.name == name:
                if seen == index:
                    return seg
                seen += 1
        return None

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def has(self, name: str) -> bool:
        return self.segment(name) is not None

    def get(self, path: str | Path) -> str:
        """The value at `path` ("" when absent); a whole-field path gives component 1."""
        p = parse_path(path) if isinstance(path, str) else path
        seg = self.segment(p.segment)
        if seg is None:
            return ""
        return seg.get(p.field, p.component, p.subcomponent)

    def components(self, path: str | Path) -> list[str]:
        p = parse_path(path) if isinstance(path, str) else path
        seg = self.segment(p.segment)
        return seg.components(p.field) if seg is not None else []

    @property
    def msh(self) -> Segment:
        seg = self.segment("MSH")
        if seg is None:  # parse() guarantees one
            raise ParseError("no MSH segment")
        return seg

    # ---- writing ------------------------------------------------------------------------

    def add(self, name: str) -> Segment:
        seg = Segment(name, enc=self.encoding)
        if name == "MSH":
            enc = self.encoding
            seg.fields = [[[["MSH"]]], [[[enc.field]]], [[[enc.msh2]]]]
        self.segments.append(seg)
        return seg

    def set(self, path: str | Path, value: str) -> None:
        """Set the value at `path`, adding the segment at the end if it is missing."""
        p = parse_path(path) if isinstance(path, str) else path
        seg = self.segment(p.segment) or self.add(p.segment)
        seg.set(p.field, value, p.component, p.subcomponent)

    def encode(self) -> str:
        """The message as HL7 text, segments ended by CR."""
        enc = self.encoding
        lines = []
        for seg in self.segments:
            parts = [seg.name]
            start = 1
            if seg.name == "MSH":
                # MSH-1 is the separator itself and MSH-2 is written verbatim.
                parts = ["MSH" + enc.field + enc.msh2]
                start = 3
            for f in seg.fields[start:]:
                if isinstance(f, str):
                    parts.append(f)  # never read: still as it came, in this encoding
                    continue
                parts.append(
                    enc.repetition.join(
                        enc.component.join(
                            enc.subcomponent.join(enc.escape_text(s) for s in comp) for comp in rep
                        )
                        for rep in f
                    )
                )
            if seg.name == "MSH":
                lines.append(parts[0] + enc.field + enc.field.join(parts[1:]))
            else:
                lines.append(enc.field.join(parts))
        return "\r".join(_trim(line, enc) for line in lines) + "\r"


def _trim(line: str, enc: Encoding) -> str:
    # Trailing empty fields carry nothing.
    return line.rstrip(enc.field)


def _split_field(raw: str, enc: Encoding) -> Field:
    if raw == "":
        return []
    reps = raw.split(enc.repetition) if enc.repetition else [raw]
    out: Field = []
    for rep in reps:
        comps = rep.split(enc.component) if enc.component else [rep]
        out.append(
            [
                [enc.unescape(s) for s in (c.split(enc.subcomponent) if enc.subcomponent else [c])]
                for c in comps
            ]
        )
    return out


def _check_limits(text: str, enc: Encoding, limits: Limits) -> None:
    """Count the parts before building them; MSH-2 holds one of each encoding character."""

    def seen(char: str) -> int:
        return text.count(char) - 1 if char else 0  # less the one in MSH-2

    counts = (
        ("segments", text.count("\r") + 1, limits.segments),
        ("fields", text.count(enc.field), limits.fields),
        ("repetitions", seen(enc.repetition), limits.repetitions),
        ("components", seen(enc.component) + seen(enc.subcomponent), limits.components),
        ("escapes", seen(enc.escape) // 2, limits.escapes),
    )
    for part, count, limit in counts:
        if count > limit:
            raise MessageTooComplex(part, limit)


def parse(text: str, limits: Limits | None = None) -> Message:
    """Parse one HL7 v2 message. Raises `ParseError` (an AR) when it is not one, and
    `MessageTooComplex` (an AR) when it holds more parts than `limits` allows."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t")
    if not text.startswith("MSH"):
        raise ParseError("the message does not start with an MSH segment")
    if len(text) < 8:
        raise ParseError("the MSH segment is too short to hold its encoding characters")
    sep = text[3]
    if sep.isalnum() or sep in "\r ":
        raise ParseError("MSH-1 (the field separator) is not a separator character", "MSH-1")
    end = text.find(sep, 4)
    msh2 = text[4:end] if end > 0 else text[4:].split("\r", 1)[0]
    if not 2 <= len(msh2) <= 5 or len(set(msh2 + sep)) != len(msh2) + 1:
        raise ParseError("MSH-2 does not hold distinct encoding characters", "MSH-2")
    if any(ch.isalnum() for ch in msh2):
        raise ParseError("MSH-2 holds a letter or digit as an encoding character", "MSH-2")
    chars = (msh2 + "\0\0\0\0")[:4]
    enc = Encoding(
        field=sep,
        component=chars[0],
        repetition=chars[1] if chars[1] != "\0" else "",
        escape=chars[2] if chars[2] != "\0" else "",
        subcomponent=chars[3] if chars[3] != "\0" else "",
    )
    if limits is not None:
        _check_limits(text, enc, limits)
    msg = Message(encoding=enc)
    for number, line in enumerate(text.split("\r")):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != sep):
            raise ParseError(f"segment {number + 1} does not start with a segment name", name)
        if name == "MSH":
            if number != 0:
                raise ParseError("a second MSH segment inside one message")
            raw_fields = line[4:].split(sep)
            fields: list[Field | str] = [[[["MSH"]]], [[[sep]]], [[[raw_fields[0]]]]]
            fields.extend(raw_fields[1:])
        else:
            fields = [[[[name]]]]
            if len(line) > 4:
                fields.extend(line[4:].split(sep))
        msg.segments.append(Segment(name, fields, enc))
    return msg
