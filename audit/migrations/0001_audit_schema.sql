-- The audit trail of the worklist, fed from the DynamoDB stream (audit/writer.py).
--
-- Identity: every row that comes from a stream record is keyed by the record's eventID
-- (unique per stream record), and written with INSERT ... ON CONFLICT DO NOTHING: a
-- replayed batch, a restarted consumer or two racing consumers insert nothing twice.
-- The *_event tables are append-only; exam, review and reading are projections rebuilt
-- by commutative upserts (newest version wins, first milestone time wins), so the order
-- records arrive in does not change them.
--
-- PHI: none. Patient name, MRN, birth date, sex and patient_id are never copied here.
-- The accession (an order's identifier, what the CLI and reports are keyed by) is the only
-- identifier of a patient's exam. Free text: lock_break.reason (an admin's words) is
-- stored; review comments are not (only whether there was one).
-- Staff (radiologists, coordinators) appear by their directory `sub` and name.

CREATE TABLE staff (
    sub         text PRIMARY KEY,
    name        text,
    seen_at     timestamptz NOT NULL
);

CREATE TABLE exam_event (
    event_id        text PRIMARY KEY,           -- the stream record's eventID
    shard_id        text,                       -- NULL when written by the Lambda path
    sequence_number numeric(40),
    event_name      text NOT NULL,              -- INSERT | MODIFY | REMOVE
    tenant          text NOT NULL,
    accession       text NOT NULL,
    site            text NOT NULL,
    modality        text NOT NULL,
    subspecialty    text,
    version         integer NOT NULL,
    action          text NOT NULL,              -- see audit/changes.py
    old_status      text,
    new_status      text,
    old_priority    text,
    new_priority    text,
    actor           text,                       -- user sub who did it, when the item says
    holder          text,                       -- the claim holder a change ended or replaced
    changed_at      timestamptz NOT NULL,       -- the item's updated_at
    stream_at       timestamptz,                -- ApproximateCreationDateTime
    hl7_sender      text,
    hl7_control_id  text,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX exam_event_by_exam ON exam_event (tenant, accession, version);
CREATE INDEX exam_event_by_day ON exam_event (tenant, changed_at);

-- An admin's break-lock, from the AUDIT item written in the same transaction as the exam.
CREATE TABLE lock_break (
    event_id    text PRIMARY KEY,
    tenant      text NOT NULL,
    accession   text NOT NULL,
    broken_by   text NOT NULL,
    holder      text,
    reason      text,
    broken_at   timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lock_break_by_exam ON lock_break (tenant, accession, broken_at);

-- Current state of every exam (no patient data).
CREATE TABLE exam (
    tenant          text NOT NULL,
    accession       text NOT NULL,
    site            text NOT NULL,
    modality        text NOT NULL,
    subspecialty    text,
    procedure_code  text,
    priority        text NOT NULL,
    status          text NOT NULL,
    version         integer NOT NULL,
    removed         boolean NOT NULL DEFAULT false,
    claimed_by      text,
    reported_by     text,
    scheduled_at    timestamptz,
    completed_at    timestamptz,
    tat_due_at      timestamptz,
    preliminary_at  timestamptz,                -- first time it became PRELIMINARY
    final_at        timestamptz,                -- first time it became FINAL
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant, accession)
);
CREATE INDEX exam_by_final ON exam (tenant, final_at);

-- Who read which exam: one row per (exam, reader), from claims and signs.
CREATE TABLE reading (
    tenant          text NOT NULL,
    accession       text NOT NULL,
    reader          text NOT NULL,
    site            text NOT NULL,
    modality        text NOT NULL,
    priority        text NOT NULL,
    claimed_at      timestamptz,                -- first claim
    preliminary_at  timestamptz,                -- first preliminary sign
    final_at        timestamptz,                -- first final sign
    completed_at    timestamptz,                -- ready to read
    tat_due_at      timestamptz,
    PRIMARY KEY (tenant, accession, reader)
);
CREATE INDEX reading_by_final ON reading (tenant, final_at);

CREATE TABLE review_event (
    event_id        text PRIMARY KEY,
    shard_id        text,
    sequence_number numeric(40),
    event_name      text NOT NULL,
    tenant          text NOT NULL,
    accession       text NOT NULL,
    site            text NOT NULL,
    modality        text NOT NULL,
    version         integer NOT NULL,
    action          text NOT NULL,
    old_state       text,
    new_state       text,
    actor           text,
    reviewer        text,
    score           text,
    final_score     text,
    has_comment     boolean NOT NULL DEFAULT false,
    changed_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX review_event_by_exam ON review_event (tenant, accession, version);

-- Review outcomes, current state.
CREATE TABLE review (
    tenant          text NOT NULL,
    accession       text NOT NULL,
    site            text NOT NULL,
    modality        text NOT NULL,
    subspecialty    text,
    source          text,
    original_reader text,
    state           text NOT NULL,
    reviewer        text,
    score           text,
    final_score     text,
    arbiter         text,
    version         integer NOT NULL,
    removed         boolean NOT NULL DEFAULT false,
    pooled_at       timestamptz,
    scored_at       timestamptz,                -- first score
    done_at         timestamptz,                -- first time DONE
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant, accession)
);

-- Accepted HL7 messages (the listener's dedupe ledger items): sender and MSH-10.
CREATE TABLE hl7_message (
    event_id     text PRIMARY KEY,
    sender       text NOT NULL,
    control_id   text NOT NULL,
    message_type text,
    summary      text,                           -- the listener's summary: no patient data
    accepted_at  timestamptz,
    UNIQUE (sender, control_id)
);

-- The worker's shard leases and checkpoints: moved in the same transaction as the rows.
CREATE TABLE consumer_shard (
    consumer         text NOT NULL,
    stream_arn       text NOT NULL,
    shard_id         text NOT NULL,
    parent_shard_id  text,
    owner            text,
    lease_expires_at timestamptz,
    checkpoint       text,                       -- last applied SequenceNumber
    ended            boolean NOT NULL DEFAULT false,  -- closed shard, drained
    last_stream_at   timestamptz,                -- ApproximateCreationDateTime, last applied
    applied_at       timestamptz,
    records_applied  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, stream_arn, shard_id)
);

-- The history of one exam in order, break-locks with who and why.
CREATE VIEW exam_history AS
SELECT e.tenant, e.accession, e.version, e.changed_at, e.action,
       COALESCE(e.actor, b.broken_by) AS actor, e.holder, b.reason,
       e.old_status, e.new_status, e.old_priority, e.new_priority,
       e.hl7_sender, e.hl7_control_id, e.event_id
FROM exam_event e
LEFT JOIN lock_break b
  ON e.action = 'break_lock' AND b.tenant = e.tenant AND b.accession = e.accession
 AND b.broken_at = e.changed_at;
