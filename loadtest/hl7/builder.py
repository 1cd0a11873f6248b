"""Simulator events -> HL7 messages in one site's dialect (the inverse of the mapping).

    create (status None)               ORM^O01 / OMI^O23 with ORC-1 NW
    ARRIVED, IN_PROGRESS, COMPLETED    ORC-1 SC with the site's ORC-5 code for the state
                                       (None when the site has no code for it: ARRIVED
                                       is implied by IN_PROGRESS anyway)
    CANCELLED                          ORC-1 CA
    PRELIMINARY, FINAL, AMENDED        ORU^R01 with OBR-25 P, F, C

Every value is written at the first path of the site's mapping whose segment the
message type has, so what the builder writes is exactly what the ingest reads back.
Control IDs are derived from the accession and the step (`NW000000011F` is the final
report of exam NW00000001): replaying the same day sends the same IDs, and the
listener's deduplication makes the replay harmless.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

from dynamo.models import PatientProfile
from dynamo.states import ExamStatus, Modality, Priority
from hl7_ingest.mapping import SiteMapping, format_timestamp
from hl7_ingest.message import Message, parse_path
from loadtest.plan import Clock, Event, PlannedExam

__all__ = ["MessageBuilder"]

_LAYOUTS: dict[str, tuple[str, ...]] = {
    "ORM^O01": ("MSH", "PID", "PV1", "ORC", "OBR"),
    "OMI^O23": ("MSH", "PID", "PV1", "ORC", "TQ1", "OBR", "IPC"),
    "ORU^R01": ("MSH", "PID", "PV1", "ORC", "OBR", "OBX"),
    "ADT^A08": ("MSH", "EVN", "PID", "PV1"),
    "ADT^A40": ("MSH", "EVN", "PID", "MRG"),
}
_STRUCTURES = {
    "ORM^O01": "ORM_O01",
    "OMI^O23": "OMI_O23",
    "ORU^R01": "ORU_R01",
    "ADT^A08": "ADT_A01",
    "ADT^A40": "ADT_A39",
}
_SUFFIX = {
    None: "N",
    ExamStatus.ARRIVED: "A",
    ExamStatus.IN_PROGRESS: "I",
    ExamStatus.COMPLETED: "C",
    ExamStatus.CANCELLED: "X",
    ExamStatus.PRELIMINARY: "P",
    ExamStatus.FINAL: "F",
    ExamStatus.AMENDED: "M",
}
_ORDER_STATES = (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED)
_REPORT_STATES = (ExamStatus.PRELIMINARY, ExamStatus.FINAL, ExamStatus.AMENDED)


class MessageBuilder:
    def __init__(
        self,
        mapping: SiteMapping,
        *,
        clock: Clock | None = None,
        application: str = "RIS",
        receiver: str = "RISLIVE",
        processing_id: str = "P",
    ) -> None:
        """`clock` maps the plan's simulated ms to real epoch ms (as the simulator
        writes them); without one, times are taken as epoch ms already."""
        self.mapping = mapping
        self.clock = clock
        self.application = application
        self.receiver = receiver
        self.processing_id = processing_id

    # ---- simulator events --------------------------------------------------------------

    def for_event(self, event: Event) -> str | None:
        """The message of one simulator event; None when this site's dialect has no
        message for it (or the exam is not at a site this facility sends for)."""
        exam = event.exam
        if self.mapping.tenant != exam.tenant or self.mapping.site_code(exam.site) is None:
            return None
        if event.status is None:
            return self.new_order(exam, at=event.at)
        if event.status in _ORDER_STATES or event.status is ExamStatus.CANCELLED:
            return self.status_update(exam, event.status, at=event.at)
        if event.status in _REPORT_STATES:
            return self.result(exam, event.status, at=event.at)
        return None

    @staticmethod
    def control_id(exam: PlannedExam, status: ExamStatus | None) -> str:
        return f"{exam.accession}{_SUFFIX.get(status, 'Z')}"

    def new_order(
        self, exam: PlannedExam, *, at: int | None = None, control_id: str | None = None
    ) -> str:
        cid = control_id or self.control_id(exam, None)
        return self._order_message(exam, "NW", at=at, control_id=cid).encode()

    def status_update(
        self,
        exam: PlannedExam,
        status: ExamStatus,
        *,
        at: int | None = None,
        control_id: str | None = None,
    ) -> str | None:
        """SC with the site's ORC-5 code for `status` (CA for CANCELLED)."""
        cid = control_id or self.control_id(exam, status)
        if status is ExamStatus.CANCELLED:
            msg = self._order_message(exam, "CA", at=at, control_id=cid)
            self._put(msg, "order_status", self.mapping.reverse("order_status", status) or "CA")
            return msg.encode()
        code = self.mapping.reverse("order_status", status)
        if code is None:
            return None
        msg = self._order_message(exam, "SC", at=at, control_id=cid)
        self._put(msg, "order_status", code)
        return msg.encode()

    def change_order(
        self,
        exam: PlannedExam,
        *,
        control_id: str,
        priority: Priority | None = None,
        scheduled_at: int | None = None,
        at: int | None = None,
    ) -> str:
        """XO carrying the order as it is now (with the changed values)."""
        changed = exam
        if priority is not None or scheduled_at is not None:
            changed = replace(
                exam,
                priority=priority or exam.priority,
                scheduled_at=exam.scheduled_at if scheduled_at is None else scheduled_at,
            )
        return self._order_message(changed, "XO", at=at, control_id=control_id).encode()

    def result(
        self,
        exam: PlannedExam,
        status: ExamStatus,
        *,
        at: int | None = None,
        control_id: str | None = None,
    ) -> str:
        code = self.mapping.reverse("result_status", status)
        if code is None:
            raise ValueError(f"{self.mapping.sender} has no result status for {status}")
        msg = self._start("ORU^R01", control_id or self.control_id(exam, status), at)
        self._patient(msg, exam.patient)
        self._visit(msg, exam)
        orc = msg.segment("ORC")
        assert orc is not None
        orc.set(1, "RE")
        self._order_ids(msg, exam)
        self._put(msg, "accession", exam.accession)
        self._put(msg, "result_status", code)
        obx = msg.segment("OBX")
        assert obx is not None
        obx.set(1, "1")
        obx.set(2, "TX")
        obx.set_field(3, ["IMP", "Impression"])
        obx.set(5, "Synthetic report text for testing.")
        obx.set(11, code)
        return msg.encode()

    # ---- patients ------------------------------------------------------------------------

    def patient_update(
        self, profile: PatientProfile, *, control_id: str, at: int | None = None
    ) -> str:
        """ADT^A08: the patient's demographics as they are now."""
        msg = self._start("ADT^A08", control_id, at)
        self._event(msg, "A08", at)
        self._patient(msg, profile)
        pv1 = msg.segment("PV1")
        assert pv1 is not None
        pv1.set(2, "O")
        return msg.encode()

    def merge(
        self, survivor: PatientProfile, prior_mrn: str, *, control_id: str, at: int | None = None
    ) -> str:
        """ADT^A40: PID holds the SURVIVING patient, MRG-1 the identifier that retires."""
        msg = self._start("ADT^A40", control_id, at)
        self._event(msg, "A40", at)
        self._patient(msg, survivor)
        self._put(msg, "prior_mrn", prior_mrn)
        mrg = msg.segment("MRG")
        assert mrg is not None
        mrg.set(1, self.mapping.sender, component=4)
        mrg.set(1, "MR", component=5)
        return msg.encode()

    # ---- pieces ----------------------------------------------------------------------------

    def _real(self, ms: int | None) -> int:
        if ms is None:
            return time.time_ns() // 1_000_000
        return self.clock.real(ms) if self.clock is not None else ms

    def _ts(self, ms: int | None) -> str:
        return format_timestamp(
            self._real(ms), self.mapping.zone, with_offset=self.mapping.timestamps_with_offset
        )

    def _start(self, kind: str, control_id: str, at: int | None) -> Message:
        layout = _LAYOUTS[kind]
        msg = Message()
        for name in layout:
            msg.add(name)
        msh = msg.msh
        msh.set(3, self.application)
        msh.set(4, self.mapping.sender)
        msh.set(5, self.receiver)
        msh.set(6, self.receiver)
        msh.set(7, self._ts(at))
        event_type, trigger = kind.split("^")
        parts = [event_type, trigger]
        if not self.mapping.version.startswith(("2.1", "2.2", "2.3")):
            parts.append(_STRUCTURES[kind])
        msh.set_field(9, parts)
        msh.set(10, control_id)
        msh.set(11, self.processing_id)
        msh.set(12, self.mapping.version)
        return msg

    def _event(self, msg: Message, code: str, at: int | None) -> None:
        evn = msg.segment("EVN")
        assert evn is not None
        evn.set(1, code)
        evn.set(2, self._ts(at))

    def _put(self, msg: Message, name: str, value: str) -> None:
        """Write `value` at the first path of `name` whose segment this message has."""
        present = {s.name for s in msg.segments}
        for path in getattr(self.mapping.fields, name):
            if parse_path(path).segment in present:
                msg.set(path, value)
                return
        raise ValueError(f"the {self.mapping.sender} mapping has no place for {name} here")

    def _put_person(self, msg: Message, name: str, person: str, first: int) -> None:
        family, _, given = person.partition("^")
        present = {s.name for s in msg.segments}
        for path in getattr(self.mapping.fields, name):
            p = parse_path(path)
            if p.segment in present:
                seg = msg.segment(p.segment)
                assert seg is not None
                seg.set(p.field, family, component=first)
                seg.set(p.field, given, component=first + 1)
                return

    def _patient(self, msg: Message, profile: PatientProfile) -> None:
        self._put(msg, "mrn", profile.mrn)
        pid = msg.segment("PID")
        assert pid is not None
        pid.set(1, "1")
        pid.set(3, self.mapping.sender, component=4)
        pid.set(3, "MR", component=5)
        self._put_person(msg, "patient_name", profile.name, first=1)
        if profile.birth_date:
            self._put(msg, "birth_date", profile.birth_date.replace("-", ""))
        self._put(msg, "sex", profile.sex)

    def _visit(self, msg: Message, exam: PlannedExam) -> None:
        pv1 = msg.segment("PV1")
        assert pv1 is not None
        pv1.set(1, "1")
        pv1.set(2, "E" if exam.priority is Priority.STAT else "O")
        pv1.set(3, "RAD", component=1)
        site = self.mapping.site_code(exam.site)
        if site is None:
            raise ValueError(f"{self.mapping.sender} does not send orders for {exam.site}")
        for path in self.mapping.site.paths:
            if parse_path(path).segment != "MSH":
                msg.set(path, site)
                break

    def _order_ids(self, msg: Message, exam: PlannedExam) -> None:
        placer = f"{exam.accession}-O"
        self._put(msg, "placer_order", placer)
        obr = msg.segment("OBR")
        assert obr is not None
        obr.set(1, "1")
        obr.set(2, placer)
        obr.set(3, exam.accession)
        obr.set_field(4, [exam.procedure.code, exam.procedure.text, "C4"])
        orc = msg.segment("ORC")
        if orc is not None:
            orc.set(2, placer)
            orc.set(3, exam.accession)

    def _order_message(
        self, exam: PlannedExam, control: str, *, at: int | None, control_id: str
    ) -> Message:
        m = self.mapping
        msg = self._start(m.order_message, control_id, at if at is not None else exam.ordered_at)
        self._patient(msg, exam.patient)
        self._visit(msg, exam)
        self._put(msg, "order_control", control)
        self._order_ids(msg, exam)
        self._put(msg, "accession", exam.accession)
        modality = m.reverse("modality", Modality(exam.modality))
        if modality is None:
            raise ValueError(f"{m.sender} has no modality code for {exam.modality}")
        self._put(msg, "modality", modality)
        priority = m.reverse("priority", Priority(exam.priority))
        if priority is not None:
            self._put(msg, "priority", priority)
        self._put(msg, "scheduled_at", self._ts(exam.scheduled_at))
        self._put(msg, "ordered_at", self._ts(exam.ordered_at))
        self._put_person(msg, "ordering_provider", exam.provider, first=2)
        if msg.has("TQ1"):
            tq1 = msg.segment("TQ1")
            assert tq1 is not None
            tq1.set(1, "1")
        ipc = msg.segment("IPC")
        if ipc is not None:
            uid = int(hashlib.sha256(exam.accession.encode()).hexdigest()[:24], 16)
            ipc.set(2, f"{exam.accession}-RP")
            ipc.set(3, f"2.25.{uid}")
            ipc.set(4, f"{exam.accession}-SPS")
        return msg
