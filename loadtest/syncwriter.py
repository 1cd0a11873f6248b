"""A synchronous exam writer for locust users (gevent, so boto3 rather than aioboto3).

It builds its requests with the exam store's own builders (`dynamo.store.create_items`,
`transition_update`), so what it writes is exactly what the store would write.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import boto3
from botocore.config import Config

from devstack.sites import DEMO_TENANTS
from dynamo.models import Exam, exam_from_item, now_ms
from dynamo.serde import from_attrs
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import create_items, transition_update
from loadtest import catalog
from loadtest.plan import exam_now, to_records

_PATH = (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED)


class SyncExamWriter:
    """Each `step()` is one write: create an exam, or move the current one along; an exam
    that reached COMPLETED is left for the radiologists and a new one is started."""

    def __init__(self, client: Any, table: str, prefix: str, tenant: str = "northwind") -> None:
        self._client = client
        self._table = table
        self._prefix = prefix
        self._tenant = next(t for t in DEMO_TENANTS if t.code == tenant)
        self._n = itertools.count(1)
        self._rng = random.Random(prefix)
        self._current: Exam | None = None
        self.writes = 0

    @classmethod
    def from_env(cls, prefix: str) -> SyncExamWriter:
        settings = DynamoSettings()
        kwargs: dict[str, Any] = {
            "region_name": settings.region,
            "config": Config(retries={"max_attempts": 8, "mode": "standard"}),
        }
        if settings.is_local:
            kwargs.update(
                endpoint_url=settings.endpoint_url,
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
            )
        return cls(boto3.client("dynamodb", **kwargs), settings.table, prefix)

    @property
    def current(self) -> Exam | None:
        return self._current

    def step(self) -> str:
        """One write; returns its name for the statistics."""
        if self._current is None or self._current.status is ExamStatus.COMPLETED:
            self._create()
            return "create"
        current = self._current
        target = _PATH[_PATH.index(current.status) + 1] if current.status in _PATH else _PATH[0]
        resp = self._client.update_item(
            TableName=self._table,
            ReturnValues="ALL_NEW",
            **transition_update(current, target, now=now_ms()),
        )
        self._current = exam_from_item(from_attrs(resp["Attributes"]))
        self.writes += 1
        return "transition"

    def _create(self) -> None:
        n = next(self._n)
        rng = self._rng
        site = rng.choice(self._tenant.sites)
        modality = rng.choice(list(Modality))
        procedure = rng.choice(catalog.PROCEDURES[modality])
        priority = rng.choices(list(Priority), weights=(15, 25, 60))[0]
        planned = exam_now(
            self._tenant,
            site.code,
            f"{self._prefix}{n:06d}",
            n,
            modality=modality,
            procedure=procedure,
            priority=priority,
            provider=rng.choice(catalog.PROVIDERS),
            rng=rng,
        )
        exam, order, profile = to_records(planned)
        now = now_ms()
        exam = exam.model_copy(update={"version": 1, "updated_at": now})
        self._client.transact_write_items(
            TransactItems=create_items(self._table, exam, order, profile)
        )
        self._current = exam
        self.writes += 1
