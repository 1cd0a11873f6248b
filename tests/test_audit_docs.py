"""The audit's settings are found by the README check (tests/test_docs.py), and the
architecture describes the audit trail."""

from __future__ import annotations

from pathlib import Path

from audit.settings import AuditSettings
from tests.support.settings import settings_classes

ROOT = Path(__file__).resolve().parent.parent


def test_the_audit_settings_class_is_found() -> None:
    assert AuditSettings in settings_classes("audit")


def test_the_architecture_doc_has_the_audit_trail() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "## Audit trail" in doc
    for table in ("exam_event", "exam", "reading", "review", "consumer_shard"):
        assert f"`{table}`" in doc
