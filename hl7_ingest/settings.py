"""Settings of the HL7 listener process (env prefix HL7_); DynamoDB comes from DYNAMO_."""

from __future__ import annotations

import ssl

from pydantic_settings import BaseSettings, SettingsConfigDict

from hl7_ingest.message import Limits

__all__ = ["Hl7Settings"]


class Hl7Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HL7_")

    host: str = "127.0.0.1"
    port: int = 2575
    # PEM files; with both set the listener speaks MLLP over TLS.
    tls_cert: str = ""
    tls_key: str = ""
    # A CA bundle (PEM): when set, senders must present a certificate it signed.
    tls_client_ca: str = ""
    # Directory of site mapping files (*.json); empty: the ones shipped in the package.
    mappings_dir: str = ""
    # The directory binds facilities to sites (a site's `hl7_facility`); it is re-read at
    # most this often (seconds), so a change reaches HL7 within this bound.
    directory_cache_seconds: float = 10.0
    # The dialect (a mapping file's stem in `dialects_dir`; empty: the shipped ones) of
    # facilities the directory binds but no mapping file describes.
    default_dialect: str = "v231-orm"
    dialects_dir: str = ""
    # MSH-11 this listener accepts: P(roduction), T(raining) or D(ebugging).
    processing_id: str = "P"
    # MSH-3 / MSH-4 of the ACKs this listener sends.
    application: str = "RISLIVE"
    facility: str = "RISLIVE"
    # A frame larger than this closes the connection (bounded memory per sender).
    max_message_bytes: int = 1 << 20
    # The most of each part one message may hold; more is an AR before it is parsed
    # (a sender must not choose what parsing costs: `PID|~~~~...` is a million lists).
    # At these a 1 MiB message parses in ~5 ms, ~15 ms with every field read; a report of
    # 300 OBX lines uses about half of each.
    max_segments: int = 1000
    max_fields: int = 8000
    max_repetitions: int = 1000
    max_components: int = 8000  # components and subcomponents together
    max_escapes: int = 2000
    # Connections: at most this many open in all, and from one source address; more are
    # closed at once. One that starts no message for `idle_timeout_seconds`, or does
    # not finish a started one within `frame_timeout_seconds` (slowloris), is closed.
    max_connections: int = 200
    max_connections_per_peer: int = 16
    idle_timeout_seconds: float = 600.0
    frame_timeout_seconds: float = 30.0
    # Dead letters (rejected messages of authenticated peers): their own table (empty:
    # "{DYNAMO_TABLE}-hl7-dead-letters"), kept this long (TTL attribute `expires_at`),
    # at most this many compressed bytes of a message, at most this many a minute from
    # one peer address (beyond: no ACK, the sender resends later).
    dead_letter_table: str = ""
    dead_letter_days: float = 30.0
    dead_letter_max_bytes: int = 65_536
    dead_letters_per_minute: float = 60.0
    # After SIGTERM: how long messages being processed may take before they are cut.
    drain_seconds: float = 5.0
    # How long accepted control IDs are remembered for deduplication (TTL attribute).
    dedupe_days: float = 30.0
    # Publish each exam write to the worklist feed (Redis: REDIS_URL) as soon as DynamoDB
    # acknowledges it, ahead of the stream relay (`dynamo.writethrough`); off: the relay
    # alone publishes it.
    write_through: bool = True
    log_level: str = "INFO"

    def limits(self) -> Limits:
        return Limits(
            segments=self.max_segments,
            fields=self.max_fields,
            repetitions=self.max_repetitions,
            components=self.max_components,
            escapes=self.max_escapes,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls_cert and self.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            context.load_verify_locations(self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context
