"""Writes on a patient's partition beyond the exam workflow: profile updates that reach
the worklist, patient merges, and order revisions.

    update_patient   the PATIENT#PROFILE item, and `patient_name` on the patient's open
                     exams (each a versioned conditional write, so worklists show it)
    merge_patients   move every exam of a prior patient to the surviving one: per exam
                     one transaction deletes the old STUDY item, puts it under the
                     survivor with `version = old + 2` and repoints the ACCESSION item
                     (the ORDER item moves too); claim fields, the fencing token
                     included, move unchanged
    revise_exam      an order change (priority, schedule, procedure, modality) as one
                     conditional write on the version and state that were read

Why `old + 2`: DynamoDB Streams emits the delete of the old key and the insert of the
new one as two records, possibly on different shards and so in any order. The
normalizer publishes a REMOVE as `version + 1`; at `+ 2` the insert outranks it
whichever arrives first, and the worklist ends with the exam under its survivor.

Every function is idempotent in effect: a merge run again finds nothing left to move, a
profile update writes an exam only when its name differs.

Every function takes the tenant and touches only that tenant's items: a profile or a
study whose `tenant` is another's is neither read nor written (`ForeignPatient` when
the profile itself is another tenant's). Patient ids come from `keys.patient_id`, which
cannot collide across tenants; the filter is the second lock on the same door, and it
holds for items written under the former `{tenant}-{mrn}` ids too.
"""

from __future__ import annotations

from typing import Any

from dynamo import keys
from dynamo.exceptions import (
    ConditionFailed,
    ExamNotFound,
    ForeignPatient,
    InvalidTransition,
    VersionConflict,
)
from dynamo.models import Exam, PatientProfile, exam_from_item, exam_keys, now_ms
from dynamo.serde import from_attrs, to_attr, to_attrs
from dynamo.states import OPEN_STATES, ExamStatus
from dynamo.store import ExamStore

__all__ = [
    "REVISABLE_STATES",
    "ForeignPatient",
    "get_profile",
    "merge_patients",
    "patient_studies",
    "revise_exam",
    "update_patient",
]

_RACE_RETRIES = 5
# Procedure, modality and schedule may change only before the scan starts; priority
# may change while the exam is open (an exam waiting to be read can become STAT).
REVISABLE_STATES: frozenset[ExamStatus] = frozenset({ExamStatus.SCHEDULED, ExamStatus.ARRIVED})


def _profile_key(patient_id: str) -> dict[str, Any]:
    return {"PK": to_attr(keys.patient_pk(patient_id)), "SK": to_attr(keys.PROFILE_SK)}


async def get_profile(store: ExamStore, tenant: str, patient_id: str) -> PatientProfile | None:
    """The tenant's profile of `patient_id`; None when absent or another tenant's."""
    resp = await store.call(
        "get_item", TableName=store.table, Key=_profile_key(patient_id), ConsistentRead=True
    )
    if "Item" not in resp:
        return None
    item = from_attrs(resp["Item"])
    if item.get("tenant") != tenant:
        return None
    return PatientProfile.model_validate({k: item.get(k, "") for k in PatientProfile.model_fields})


async def patient_studies(store: ExamStore, tenant: str, patient_id: str) -> list[dict[str, Any]]:
    """Every STUDY item of a tenant's patient, raw (the fencing attributes included)."""
    out: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    while True:
        kwargs: dict[str, Any] = {
            "TableName": store.table,
            "KeyConditionExpression": "PK = :pk AND begins_with(SK, :study)",
            "FilterExpression": "tenant = :tenant",
            "ExpressionAttributeValues": {
                ":pk": to_attr(keys.patient_pk(patient_id)),
                ":study": to_attr(keys.STUDY_PREFIX),
                ":tenant": to_attr(tenant),
            },
            "ConsistentRead": True,
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = await store.call("query", **kwargs)
        out.extend(from_attrs(i) for i in resp.get("Items", []))
        start = resp.get("LastEvaluatedKey")
        if not start:
            return out


async def _raw_study(store: ExamStore, patient_id: str, accession: str) -> dict[str, Any] | None:
    resp = await store.call(
        "get_item",
        TableName=store.table,
        Key=store.key(patient_id, accession),
        ConsistentRead=True,
    )
    return from_attrs(resp["Item"]) if "Item" in resp else None


async def update_patient(
    store: ExamStore,
    tenant: str,
    patient_id: str,
    mrn: str,
    *,
    name: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
) -> tuple[PatientProfile, list[Exam]]:
    """Upsert the tenant's profile (None leaves a value as it is) and put the name on
    every open exam of the patient. Returns the profile and the exams that were written.
    `ForeignPatient` when the profile is another tenant's."""
    sets = ["entity = :entity", "patient_id = :pid", "tenant = :tenant", "mrn = :mrn"]
    values: dict[str, Any] = {
        ":entity": "PATIENT",
        ":pid": patient_id,
        ":tenant": tenant,
        ":mrn": mrn,
    }
    for attr, value in (("#name", name), ("birth_date", birth_date), ("sex", sex)):
        placeholder = ":" + attr.lstrip("#")
        if value is None:
            # A new profile still gets every attribute the model requires.
            sets.append(f"{attr} = if_not_exists({attr}, :empty)")
            values[":empty"] = ""
        else:
            sets.append(f"{attr} = {placeholder}")
            values[placeholder] = value
    try:
        resp = await store.call(
            "update_item",
            TableName=store.table,
            Key=_profile_key(patient_id),
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="attribute_not_exists(PK) OR tenant = :tenant",
            ExpressionAttributeNames={"#name": "name"},
            ExpressionAttributeValues=to_attrs(values),
            ReturnValues="ALL_NEW",
        )
    except store.condition_failed:
        raise ForeignPatient() from None
    item = from_attrs(resp["Attributes"])
    profile = PatientProfile.model_validate(
        {k: item.get(k, "") for k in PatientProfile.model_fields}
    )

    written: list[Exam] = []
    for raw in await patient_studies(store, tenant, patient_id):
        exam = exam_from_item(raw)
        for _ in range(_RACE_RETRIES):
            if exam.status not in OPEN_STATES or exam.patient_name == profile.name:
                break
            try:
                written.append(await _set_name(store, exam, profile.name))
                break
            except VersionConflict:
                exam = await store.get_exam(exam.patient_id, exam.accession)
    return profile, written


async def _set_name(store: ExamStore, exam: Exam, name: str) -> Exam:
    try:
        item = await store.update(
            store.key(exam.patient_id, exam.accession),
            UpdateExpression="SET patient_name = :name, #v = :next, updated_at = :now",
            ConditionExpression="#v = :v",
            ExpressionAttributeNames={"#v": "version"},
            ExpressionAttributeValues=to_attrs(
                {":name": name, ":v": exam.version, ":next": exam.version + 1, ":now": now_ms()}
            ),
        )
    except ConditionFailed as failed:
        seen = failed.old["version"] if failed.old else None
        raise VersionConflict(exam.accession, exam.version, seen) from None
    return exam_from_item(item)


async def merge_patients(
    store: ExamStore,
    tenant: str,
    survivor: PatientProfile,
    prior_patient_id: str,
) -> list[Exam]:
    """Move every exam of `prior_patient_id` to `survivor` (the patient who remains).

    The survivor's profile is created from `survivor` when it does not exist yet; when
    it does, its stored name is what the moved exams show. The prior profile stays,
    marked `merged_into`, as the record of the merge. Returns the moved exams. Only
    `tenant`'s studies move; `ForeignPatient` when either profile is another tenant's.
    """
    if survivor.patient_id == prior_patient_id:
        raise ValueError("a patient cannot be merged into itself")
    if survivor.tenant != tenant:
        raise ForeignPatient()
    stored = await get_profile(store, tenant, survivor.patient_id)
    if stored is None:
        try:
            await store.call(
                "put_item",
                TableName=store.table,
                Item=to_attrs(
                    {
                        "PK": keys.patient_pk(survivor.patient_id),
                        "SK": keys.PROFILE_SK,
                        "entity": "PATIENT",
                        **survivor.model_dump(mode="json"),
                    }
                ),
                ConditionExpression="attribute_not_exists(PK)",
            )
            stored = survivor
        except store.condition_failed:
            # Created meanwhile, or another tenant's: then get_profile says None.
            stored = await get_profile(store, tenant, survivor.patient_id)
            if stored is None:
                raise ForeignPatient() from None
    moved: list[Exam] = []
    for raw in await patient_studies(store, tenant, prior_patient_id):
        exam = await _move_study(store, raw, stored)
        if exam is not None:
            moved.append(exam)
    try:
        await store.call(
            "update_item",
            TableName=store.table,
            Key=_profile_key(prior_patient_id),
            UpdateExpression="SET merged_into = :s, merged_at = :now",
            ConditionExpression="attribute_exists(PK) AND tenant = :tenant",
            ExpressionAttributeValues=to_attrs(
                {":s": survivor.patient_id, ":now": now_ms(), ":tenant": tenant}
            ),
        )
    except store.condition_failed:
        pass  # the prior patient had no profile of its own (in this tenant)
    for exam in moved:
        # This process's accession cache pointed at the prior partition.
        await store.locate(tenant, exam.accession, fresh=True)
    return moved


async def _move_study(
    store: ExamStore, raw: dict[str, Any], survivor: PatientProfile
) -> Exam | None:
    cancelled = store.transaction_cancelled
    current: dict[str, Any] | None = raw
    for _ in range(_RACE_RETRIES):
        if current is None or current.get("tenant") != survivor.tenant:
            return None  # moved (or removed) by someone else meanwhile; or not this tenant's
        prior_id = str(current["patient_id"])
        accession = str(current["accession"])
        tenant = str(current["tenant"])
        version = int(current["version"])
        now = now_ms()
        new_item = dict(current)
        new_item.update(
            {
                "PK": keys.patient_pk(survivor.patient_id),
                "patient_id": survivor.patient_id,
                "mrn": survivor.mrn,
                "patient_name": survivor.name,
                "version": version + 2,
                "updated_at": now,
            }
        )
        items: list[dict[str, Any]] = [
            {
                "Delete": {
                    "TableName": store.table,
                    "Key": store.key(prior_id, accession),
                    "ConditionExpression": "#v = :v",
                    "ExpressionAttributeNames": {"#v": "version"},
                    "ExpressionAttributeValues": {":v": to_attr(version)},
                }
            },
            {
                "Put": {
                    "TableName": store.table,
                    "Item": to_attrs(new_item),
                    "ConditionExpression": "attribute_not_exists(PK)",
                }
            },
            {
                "Update": {
                    "TableName": store.table,
                    "Key": {
                        "PK": to_attr(keys.accession_pk(tenant, accession)),
                        "SK": to_attr(keys.ACCESSION_SK),
                    },
                    "UpdateExpression": "SET patient_id = :new",
                    "ConditionExpression": "patient_id = :old",
                    "ExpressionAttributeValues": to_attrs(
                        {":new": survivor.patient_id, ":old": prior_id}
                    ),
                }
            },
        ]
        items += await _move_order(store, prior_id, str(current.get("order_id", "")), survivor)
        try:
            await store.call("transact_write_items", TransactItems=items)
        except cancelled:
            current = await _raw_study(store, prior_id, accession)
            continue
        return exam_from_item(new_item)
    raise VersionConflict(str(raw["accession"]), int(raw["version"]), None)


async def _move_order(
    store: ExamStore, prior_id: str, order_id: str, survivor: PatientProfile
) -> list[dict[str, Any]]:
    if not order_id:
        return []
    key = {"PK": to_attr(keys.patient_pk(prior_id)), "SK": to_attr(keys.order_sk(order_id))}
    resp = await store.call("get_item", TableName=store.table, Key=key, ConsistentRead=True)
    if "Item" not in resp:
        return []
    order = from_attrs(resp["Item"])
    order.update({"PK": keys.patient_pk(survivor.patient_id), "patient_id": survivor.patient_id})
    return [
        {"Delete": {"TableName": store.table, "Key": key}},
        {"Put": {"TableName": store.table, "Item": to_attrs(order)}},
    ]


async def revise_exam(store: ExamStore, current: Exam, **changes: Any) -> Exam:
    """Change order fields of the exam `current` (as read): any of priority,
    scheduled_at, tat_due_at, procedure_code, procedure, body_part, subspecialty,
    modality. Conditioned on the version and state that were read (`VersionConflict`
    otherwise); anything but priority only while the exam is SCHEDULED or ARRIVED
    (`InvalidTransition` naming the state otherwise)."""
    allowed = {
        "priority",
        "scheduled_at",
        "tat_due_at",
        "procedure_code",
        "procedure",
        "body_part",
        "subspecialty",
        "modality",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"fields that cannot be revised: {sorted(unknown)}")
    if current.status not in OPEN_STATES or (
        set(changes) - {"priority", "tat_due_at"} and current.status not in REVISABLE_STATES
    ):
        raise InvalidTransition(current.accession, current.status, "revised")
    revised = current.model_copy(update=changes)
    # Validate through the model (enums, types) before writing.
    revised = Exam.model_validate(revised.model_dump())
    now = now_ms()
    attrs = revised.model_dump(mode="json", include=set(changes))
    attrs.update({k: v for k, v in exam_keys(revised).items() if k not in ("PK", "SK")})
    names = {f"#a{i}": name for i, name in enumerate(attrs)}
    values = {f":a{i}": value for i, value in enumerate(attrs.values())}
    sets = [f"#a{i} = :a{i}" for i in range(len(attrs))]
    sets += ["#v = :next", "updated_at = :now"]
    names.update({"#v": "version", "#s": "status"})
    values.update(
        {":v": current.version, ":next": current.version + 1, ":now": now, ":s": current.status}
    )
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": store.table,
                "Key": store.key(current.patient_id, current.accession),
                "UpdateExpression": "SET " + ", ".join(sets),
                "ConditionExpression": "#v = :v AND #s = :s",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": to_attrs(values),
            }
        }
    ]
    order_changes = {
        k: v for k, v in attrs.items() if k in ("priority", "procedure_code") and k in changes
    }
    if order_changes:
        order_key = {
            "PK": to_attr(keys.patient_pk(current.patient_id)),
            "SK": to_attr(keys.order_sk(current.order_id)),
        }
        resp = await store.call(
            "get_item", TableName=store.table, Key=order_key, ConsistentRead=True
        )
        if "Item" in resp:
            items.append(
                {
                    "Update": {
                        "TableName": store.table,
                        "Key": order_key,
                        "UpdateExpression": "SET "
                        + ", ".join(f"{k} = :{k}" for k in order_changes),
                        "ConditionExpression": "attribute_exists(PK)",
                        "ExpressionAttributeValues": to_attrs(
                            {f":{k}": v for k, v in order_changes.items()}
                        ),
                    }
                }
            )
    try:
        await store.call("transact_write_items", TransactItems=items)
    except store.transaction_cancelled:
        seen = await _raw_study(store, current.patient_id, current.accession)
        if seen is None:
            raise ExamNotFound(current.accession) from None
        raise VersionConflict(current.accession, current.version, int(seen["version"])) from None
    return revised.model_copy(update={"version": current.version + 1, "updated_at": now})
