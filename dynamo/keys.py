"""Key builders of the single table (the seed's design), in one place.

    patient id       {tenant}#{mrn}       (a tenant code never holds "#")

    item             PK                   SK
    patient profile  PATIENT#{patientId}  PATIENT#PROFILE
    order            PATIENT#{patientId}  ORDER#{orderId}
    study (exam)     PATIENT#{patientId}  STUDY#{accession}
    accession index  ACCESSION#{tenant}#{accession}  ACCESSION   (-> patient_id)

GSI1 (status board), exams only:
    GSI1PK = TENANT#{tenant}#STATUS#{status}
    GSI1SK = {priorityRank}#{tatDueMs:013d}#{accession}    (most urgent first)
GSI2 (modality + scheduled time), exams only:
    GSI2PK = TENANT#{tenant}#MODALITY#{modality}
    GSI2SK = {scheduledMs:013d}#{accession}
"""

from __future__ import annotations

GSI1 = "GSI1-StatusBoard"
GSI2 = "GSI2-ModalitySchedule"

PROFILE_SK = "PATIENT#PROFILE"
STUDY_PREFIX = "STUDY#"
ORDER_PREFIX = "ORDER#"


def patient_id(tenant: str, mrn: str) -> str:
    """A patient's id, unique across tenants. Tenant codes match ^[a-z0-9-]{1,40}$, so
    the first "#" always ends the tenant: "north" + "wind-1" and "north-wind" + "1" stay
    apart (the former `f"{tenant}-{mrn}"` made both "north-wind-1")."""
    if not tenant or "#" in tenant:
        raise ValueError("a tenant code cannot be empty or hold '#'")
    return f"{tenant}#{mrn}"


def patient_pk(patient_id: str) -> str:
    return f"PATIENT#{patient_id}"


def study_sk(accession: str) -> str:
    return f"{STUDY_PREFIX}{accession}"


def order_sk(order_id: str) -> str:
    return f"{ORDER_PREFIX}{order_id}"


ACCESSION_SK = "ACCESSION"


def accession_pk(tenant: str, accession: str) -> str:
    """Points an accession (what clients name) at its patient partition."""
    return f"ACCESSION#{tenant}#{accession}"


def gsi1_pk(tenant: str, status: str) -> str:
    return f"TENANT#{tenant}#STATUS#{status}"


def gsi1_sk(priority_rank: int, tat_due_ms: int, accession: str) -> str:
    return f"{priority_rank}#{tat_due_ms:013d}#{accession}"


def gsi2_pk(tenant: str, modality: str) -> str:
    return f"TENANT#{tenant}#MODALITY#{modality}"


def gsi2_sk(scheduled_ms: int, accession: str) -> str:
    return f"{scheduled_ms:013d}#{accession}"


# ---- the tenant registry and the relay's dead records -------------------------------
#    tenant registry  TENANTS              TENANT#{tenant}      (written by the relay)
#    registry filled  TENANTS              BACKFILLED           (the one-off Scan ran)
#    dead record      RELAYDEAD            REC#{shardId}#{sequenceNumber}

TENANTS_PK = "TENANTS"
TENANTS_BACKFILLED_SK = "BACKFILLED"
RELAY_DEAD_PK = "RELAYDEAD"


def tenant_sk(tenant: str) -> str:
    return f"TENANT#{tenant}"


def relay_dead_sk(source: str, sequence_number: str) -> str:
    return f"REC#{source}#{sequence_number}"


# ---- peer reviews, audit records, the HL7 ledger and dead letters ------------------
#    review           REVIEW#{tenant}      EXAM#{accession}
#    break-lock audit PATIENT#{patientId}  AUDIT#{accession}#{ms:013d}#BREAK_LOCK
#    HL7 ledger       HL7MSG#{sender}      MSG#{controlId}     (never STUDY#: not an exam)
#    HL7 dead letter  HL7DEAD              DL#{id}             (in its own table)


def review_pk(tenant: str) -> str:
    return f"REVIEW#{tenant}"


def review_sk(accession: str) -> str:
    return f"EXAM#{accession}"


def break_lock_audit_sk(accession: str, at_ms: int) -> str:
    return f"AUDIT#{accession}#{at_ms:013d}#BREAK_LOCK"


def hl7_ledger_pk(sender: str) -> str:
    return f"HL7MSG#{sender}"


def hl7_ledger_sk(control_id: str) -> str:
    return f"MSG#{control_id}"


HL7_DEAD_PK = "HL7DEAD"


def hl7_dead_sk(dead_letter_id: str) -> str:
    return f"DL#{dead_letter_id}"


# ---- the directory: tenants, sites, people, and the audit of every change ----------
#    tenant           DIRECTORY            TENANT#{tenant}
#    site             DIRECTORY#{tenant}   SITE#{code}
#    person           DIRECTORY#{tenant}   PERSON#{sub}
#    rules            DIRECTORY#{tenant}   RULES               (orchestration, one per tenant)
#    change record    DIRAUDIT#{tenant}    {ms:013d}#{kind}#{key}#{version}
# (entity "DIRECTORY" on the first three: the relay turns them into change notices;
# never STUDY#: they are not exams.)

DIRECTORY_PK = "DIRECTORY"
TENANT_PREFIX = "TENANT#"
SITE_PREFIX = "SITE#"
PERSON_PREFIX = "PERSON#"
DIRECTORY_RULES_SK = "RULES"


def directory_tenant_sk(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}"


def directory_pk(tenant: str) -> str:
    return f"DIRECTORY#{tenant}"


def directory_site_sk(code: str) -> str:
    return f"{SITE_PREFIX}{code}"


def directory_person_sk(sub: str) -> str:
    return f"{PERSON_PREFIX}{sub}"


def directory_audit_pk(tenant: str) -> str:
    return f"DIRAUDIT#{tenant}"


def directory_audit_sk(at_ms: int, kind: str, key: str, version: int) -> str:
    return f"{at_ms:013d}#{kind}#{key}#{version}"
