"""HL7 v2 without servers: the parser and writer, ACKs, MLLP framing, times, the state
walks, the mapping files and the builder of both site dialects. All data synthetic."""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dynamo import keys
from dynamo.states import TRANSITIONS, ExamStatus, Modality, Priority
from hl7_ingest.ack import build_ack, read_ack
from hl7_ingest.apply import path_to
from hl7_ingest.exceptions import ApplicationRejected, MappingError, MessageRejected, ParseError
from hl7_ingest.interpret import MergePatient, MoveExam, NewOrder, UpdatePatient, interpret
from hl7_ingest.mapping import format_timestamp, load_mappings, parse_timestamp
from hl7_ingest.message import Message, parse
from hl7_ingest.mllp import FrameDecoder, FrameTooLarge, wrap
from loadtest.hl7.builder import MessageBuilder
from loadtest.plan import Clock, events_of, plan_day
from tests.support.hl7 import LK, MAPPINGS, NW, builder, patient, planned

S = ExamStatus

ORM = (
    "MSH|^~\\&|RIS|NWGEN|RISLIVE|RISLIVE|20250301083000||ORM^O01|CTRL0001|P|2.3.1\r"
    "PID|1||HM0000001^^^NWGEN^MR~ALT77^^^OTHER^PI||DOE\\S\\X^JANE^Q||19700101|F\r"
    "ORC|NW|PL1|FL1||SC||^^^20250301090000^^S\r"
    "OBR|1|PL1|FL1|70450^CT head \\T\\ neck \\F\\ test^C4" + "|" * 14 + "HAC1" + "|" * 6 + "CT\r"
)


# ---- parser and writer ----------------------------------------------------------------------


def test_fields_components_repetitions_and_escapes() -> None:
    msg = parse(ORM)
    assert [s.name for s in msg.segments] == ["MSH", "PID", "ORC", "OBR"]
    # MSH-1 is the separator, MSH-2 the encoding characters, MSH-3 the first field.
    assert msg.get("MSH-1") == "|" and msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-3") == "RIS" and msg.get("MSH-10") == "CTRL0001"
    assert msg.get("MSH-9.2") == "O01"
    # PID-3: the first repetition's ID is the MRN; the second is another identifier.
    assert msg.get("PID-3.1") == "HM0000001"
    assert msg.segment("PID").repetitions(3) == 2
    assert msg.segment("PID").get(3, 1, rep=2) == "ALT77"
    # \S\ is an escaped component separator inside the family name.
    assert msg.components("PID-5") == ["DOE^X", "JANE", "Q"]
    assert msg.get("OBR-4.2") == "CT head & neck | test"
    assert msg.get("ORC-7.6") == "S" and msg.get("OBR-18") == "HAC1"
    assert msg.get("ZZZ-1") == "" and msg.get("OBR-99") == ""


def test_other_encoding_characters_are_honoured() -> None:
    text = ORM.replace("|", "#").replace("^", "@").replace("\\", "$").replace("~", "*")
    msg = parse(text)
    assert msg.encoding.field == "#" and msg.encoding.component == "@"
    assert msg.get("PID-3.1") == "HM0000001"
    assert msg.components("PID-5") == ["DOE@X", "JANE", "Q"]
    assert msg.get("OBR-4.2") == "CT head & neck # test"
    # Written back with the same characters, it reads the same.
    again = parse(msg.encode())
    assert again.components("PID-5") == ["DOE@X", "JANE", "Q"]
    assert again.encode() == msg.encode()


def test_write_then_read_round_trips_every_special_character() -> None:
    msg = Message()
    msg.add("MSH")
    msg.set("MSH-9", "ORU")
    msg.set("MSH-10", "X1")
    msg.set("OBX-5", "a|b^c&d~e\\f\nnext line")
    text = msg.encode()
    assert text.startswith("MSH|^~\\&|") and text.endswith("\r")
    assert "\n" not in text
    assert parse(text).get("OBX-5") == "a|b^c&d~e\\f\nnext line"


def test_hex_and_formatting_escapes() -> None:
    msg = parse("MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5.1\rOBX|1|TX|||x\\X41\\y\\.br\\z\\H\\w\\N\\")
    assert msg.get("OBX-5") == "xAy\nzw"


def test_line_feeds_between_segments_are_tolerated() -> None:
    assert parse(ORM.replace("\r", "\r\n")).get("OBR-18") == "HAC1"
    assert parse(ORM.replace("\r", "\n")).get("OBR-18") == "HAC1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "PID|1||X\r",
        "MSH",
        "MSHA^~\\&|x",  # a letter as field separator
        "MSH|^^\\&|A",  # encoding characters not distinct
        "MSH|^~\\&|A|B\rPID|1\rMSH|^~\\&|C\r",  # two messages in one frame
        "MSH|^~\\&|A|B\rpid|1\r",  # not a segment name
    ],
)
def test_what_is_not_hl7_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError) as err:
        parse(text)
    assert err.value.ack_code == "AR"


# ---- ACKs -------------------------------------------------------------------------------------


def test_ack_v231_names_the_field_in_err1() -> None:
    msg = parse(ORM)
    error = ApplicationRejected(
        "207", "ORC-5", "exam HAC1 is COMPLETED; it cannot become SCHEDULED"
    )
    ack = read_ack(build_ack("AE", message=msg, control_id="CTRL0001", error=error))
    assert (ack.code, ack.control_id) == ("AE", "CTRL0001")
    assert ack.error_code == "207" and ack.error_field == "ORC-5"
    assert "COMPLETED" in ack.text
    head = ack.message.msh
    # Addressed back to the sender, in its version, answering its trigger.
    assert head.get(5) == "RIS" and head.get(6) == "NWGEN"
    assert head.get(9, 1) == "ACK" and head.get(9, 2) == "O01" and head.get(12) == "2.3.1"
    assert head.get(10) and head.get(10) != "CTRL0001"


def test_ack_v251_has_err2_err3_and_the_reason() -> None:
    msg = parse(ORM.replace("2.3.1", "2.5.1").replace("ORM^O01", "OMI^O23^OMI_O23"))
    error = MessageRejected("202", "MSH-11", "MSH-11 is not P")
    text = build_ack("AR", message=msg, control_id="CTRL0001", error=error)
    ack = read_ack(text)
    assert ack.code == "AR" and ack.error_code == "202" and ack.error_field == "MSH-11"
    assert ack.error_text == "MSH-11 is not P"
    assert ack.message.get("MSH-9") == "ACK" and ack.message.components("MSH-9")[2] == "ACK"
    err = ack.message.segment("ERR")
    assert err is not None and err.get(4) == "E" and err.get(3, 3) == "HL70357"


def test_aa_has_no_err_and_an_unparseable_message_still_gets_an_ack() -> None:
    ack = read_ack(build_ack("AA", message=parse(ORM), control_id="CTRL0001"))
    assert ack.code == "AA" and ack.message.segment("ERR") is None
    blind = read_ack(
        build_ack("AR", message=None, control_id="", error=ParseError("not HL7 at all"))
    )
    assert blind.code == "AR" and blind.control_id == "" and blind.error_text == "not HL7 at all"


# ---- MLLP framing -------------------------------------------------------------------------------


def test_a_frame_split_into_single_bytes_comes_out_whole() -> None:
    decoder = FrameDecoder()
    data = wrap(ORM)
    out: list[bytes] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == [ORM.encode()] and decoder.pending == 0 and decoder.discarded == []


def test_many_frames_in_one_read_in_order_and_garbage_set_aside() -> None:
    decoder = FrameDecoder()
    stream = b"noise" + wrap("MSH|1") + b"\r\n" + wrap("MSH|2") + b"junk\x1c\r" + wrap("MSH|3")
    assert decoder.feed(stream) == [b"MSH|1", b"MSH|2", b"MSH|3"]
    # The CR/LF slack between frames is not noise; the rest is.
    assert decoder.take_discarded() == [b"noise", b"junk\x1c\r"]


def test_missing_start_block_is_discarded_not_guessed() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(b"MSH|lost\x1c\r" + wrap("MSH|kept"))
    assert frames == [b"MSH|kept"]
    assert decoder.take_discarded() == [b"MSH|lost\x1c\r"]


def test_a_restarted_frame_drops_the_partial_one_and_a_missing_cr_is_tolerated() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bMSH|half" + b"\x0bMSH|whole\x1c" + b"\x0bMSH|next\x1c\r") == [
        b"MSH|whole",
        b"MSH|next",
    ]
    assert decoder.take_discarded() == [b"\x0bMSH|half"]


def test_partial_frame_is_pending_and_oversize_raises() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(b"\x0bMSH|" + b"x" * 50) == []
    assert decoder.pending == 54
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"x" * 100)


# ---- times, walks, mappings ----------------------------------------------------------------


def test_times_without_offset_are_the_sites_local_time() -> None:
    chicago, new_york = ZoneInfo("America/Chicago"), ZoneInfo("America/New_York")
    # 08:00 in Chicago in winter (UTC-6) is 14:00 UTC; in summer (UTC-5) 13:00 UTC.
    assert parse_timestamp("20250115080000", chicago) == 1736949600000
    assert parse_timestamp("20250715080000", chicago) == 1752584400000
    # An explicit offset wins over the site's zone.
    assert parse_timestamp("20250115080000-0600", new_york) == 1736949600000
    assert parse_timestamp("202501150800", chicago) == 1736949600000
    assert parse_timestamp("20250115080000.5", chicago) == 1736949600500
    ms = 1752584400000
    assert format_timestamp(ms, new_york, with_offset=True) == "20250715090000-0400"
    assert format_timestamp(ms, chicago, with_offset=False) == "20250715080000"
    with pytest.raises(ValueError):
        parse_timestamp("yesterday", chicago)


def test_state_walks_take_legal_steps_only() -> None:
    assert path_to(S.SCHEDULED, S.COMPLETED) == [S.ARRIVED, S.IN_PROGRESS, S.COMPLETED]
    assert path_to(S.SCHEDULED, S.IN_PROGRESS) == [S.ARRIVED, S.IN_PROGRESS]
    assert path_to(S.IN_PROGRESS, S.FINAL) == [S.COMPLETED, S.FINAL]
    assert path_to(S.PRELIMINARY, S.AMENDED) == [S.FINAL, S.AMENDED]
    assert path_to(S.ARRIVED, S.ARRIVED) == []
    assert path_to(S.AMENDED, S.AMENDED) == [S.AMENDED]  # a further amendment
    assert path_to(S.COMPLETED, S.SCHEDULED) is None
    assert path_to(S.FINAL, S.CANCELLED) is None
    assert path_to(S.ARRIVED, S.CANCELLED) == [S.CANCELLED]
    for start in S:
        for target in S:
            steps = path_to(start, target)
            if steps:
                state = start
                for step in steps:
                    assert step in TRANSITIONS[state]
                    state = step


def test_the_two_shipped_sites_differ_where_real_sites_do() -> None:
    assert NW is not None and LK is not None
    assert (NW.tenant, NW.version, NW.order_message) == ("northwind", "2.3.1", "ORM^O01")
    assert (LK.tenant, LK.version, LK.order_message) == ("lakeside", "2.5.1", "OMI^O23")
    assert NW.fields.priority == ["ORC-7.6", "OBR-27.6"] and LK.fields.priority == ["TQ1-9"]
    assert NW.fields.modality == ["OBR-24"] and LK.fields.modality == ["IPC-5"]
    assert NW.codes.priority == {"S": "STAT", "A": "URGENT", "R": "ROUTINE"}
    assert LK.codes.priority == {"STAT": "STAT", "URG": "URGENT", "RTN": "ROUTINE"}
    assert (NW.time_zone, LK.time_zone) == ("America/Chicago", "America/New_York")
    assert NW.site.paths == ["MSH-4"] and LK.site.paths == ["PV1-3.4"]


def test_a_broken_mapping_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    good = json.loads(Path("hl7_ingest/mappings/nwgen.json").read_text())
    for change, words in (
        ({"fields": {**good["fields"], "accession": ["OBR18"]}}, "fields.accession"),
        ({"time_zone": "Mars/Olympus"}, "time zone"),
        ({"codes": {**good["codes"], "modality": {"CT": "XRAY"}}}, "codes.modality"),
        ({"typo": 1}, "typo"),
    ):
        (tmp_path / "site.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(MappingError) as err:
            load_mappings(tmp_path)
        assert words in err.value.reason
    (tmp_path / "site.json").write_text(json.dumps(good))
    (tmp_path / "copy.json").write_text(json.dumps(good))
    with pytest.raises(MappingError, match="two mapping files"):
        load_mappings(tmp_path)


# ---- the builder speaks each dialect; the mapping reads it back --------------------------------


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
def test_every_simulator_event_round_trips_through_the_sites_dialect(sender: str) -> None:
    mapping = MAPPINGS.get(sender)
    assert mapping is not None
    clock = Clock(240, 120, now_ms=1_750_000_000_000)
    build = MessageBuilder(mapping, clock=clock)
    sent = 0
    for event in events_of(plan_day(7, 0, 60)):
        text = build.for_event(event)
        exam = event.exam
        if text is None:
            # Only exams of other tenants/sites, or a state without a code here.
            assert (
                exam.tenant != mapping.tenant
                or mapping.site_code(exam.site) is None
                or (event.status is S.ARRIVED and mapping.reverse("order_status", S.ARRIVED))
                is None
            )
            continue
        sent += 1
        msg = parse(text)
        assert msg.get("MSH-4") == sender and msg.get("MSH-12") == mapping.version
        command = interpret(msg, mapping)
        if event.status is None:
            assert isinstance(command, NewOrder)
            got = command.exam
            assert (got.tenant, got.site, got.accession) == (exam.tenant, exam.site, exam.accession)
            assert (got.priority, got.modality) == (exam.priority, exam.modality)
            assert got.scheduled_at == clock.real(exam.scheduled_at) // 1000 * 1000
            assert got.patient_id == keys.patient_id(exam.tenant, exam.patient.mrn)
            assert got.patient_name == exam.patient.name
            assert (got.body_part, got.subspecialty) == (
                exam.procedure.body_part,
                exam.procedure.subspecialty,
            )
            assert command.order.ordering_provider == exam.provider
            assert command.profile.birth_date == exam.patient.birth_date
        else:
            assert isinstance(command, MoveExam)
            assert (command.accession, command.target) == (exam.accession, event.status)
    assert sent > 50


def test_site_specific_codes_are_written_where_each_site_keeps_them() -> None:
    nw = parse(builder("NWGEN").new_order(planned("NWGEN", priority=Priority.STAT)))
    assert nw.get("ORC-7.6") == "S" and nw.get("OBR-24") == "CT" and nw.get("MSH-9") == "ORM"
    lk = parse(builder("LKMED").new_order(planned("LKMED", priority=Priority.URGENT)))
    assert lk.get("TQ1-9") == "URG" and lk.get("IPC-5") == "CT" and lk.get("MSH-9.3") == "OMI_O23"
    assert lk.get("PV1-3.4") == "LKMC" and lk.get("IPC-1") and not lk.get("OBR-18")
    assert lk.get("MSH-7").endswith(("-0500", "-0400"))  # Lakeside writes offsets
    mr = parse(builder("LKMED").new_order(planned("LKMED", modality=Modality.XR)))
    assert mr.get("IPC-5") == "DX"


def test_adt_messages_read_back_with_survivor_and_prior_in_their_fields() -> None:
    assert NW is not None
    who = patient("northwind", name="RENAMED^BETA")
    a08 = interpret(parse(builder("NWGEN").patient_update(who, control_id="A1")), NW)
    assert isinstance(a08, UpdatePatient)
    assert (a08.patient_id, a08.name, a08.birth_date) == (
        who.patient_id,
        "RENAMED^BETA",
        "1970-01-01",
    )
    a40 = interpret(parse(builder("NWGEN").merge(who, "HMOLD", control_id="A2")), NW)
    assert isinstance(a40, MergePatient)
    assert a40.survivor.patient_id == who.patient_id
    assert a40.prior_patient_id == keys.patient_id("northwind", "HMOLD")
