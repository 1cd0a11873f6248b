"""Logins of one person at once (a reconnect storm: every tab of every user) share one
directory read; a login after it reads afresh, so a change is never hidden by it."""

from __future__ import annotations

import asyncio

import pytest

from dynamo.directory import DirectoryStore
from dynamo.directory.models import Person
from dynamo.store import ExamStore
from gateway.auth import Authenticator, SecretVerifier
from gateway.exceptions import AuthError
from tests.conftest import SECRET, register, token


class CountingDirectory(DirectoryStore):
    """The real directory (DynamoDB Local), counting its person reads."""

    reads = 0

    async def person(self, tenant: str, sub: str) -> Person | None:
        self.reads += 1
        return await super().person(tenant, sub)


async def test_concurrent_logins_of_one_person_share_one_read_later_ones_read_again(
    store: ExamStore,
) -> None:
    directory = CountingDirectory(store)
    auth = Authenticator(SecretVerifier(SECRET), directory)
    ana = token("storm-ana", sites=("north",))
    ben = token("storm-ben")

    results = await asyncio.gather(*(auth.authenticate(t) for t in [ana] * 40 + [ben] * 10))
    assert [p.sub for _, p in results] == ["storm-ana"] * 40 + ["storm-ben"] * 10
    assert all(p.sites == ("north",) for _, p in results[:40])
    assert directory.reads == 2  # one per person, not one per login

    # A login after the shared read ended sees the directory as it is now.
    token("storm-ana", sites=("south",))
    _, again = await auth.authenticate(ana)
    assert again.sites == ("south",) and directory.reads == 3


async def test_a_login_that_goes_away_does_not_cancel_the_others(store: ExamStore) -> None:
    directory = CountingDirectory(store)
    auth = Authenticator(SecretVerifier(SECRET), directory)
    ana = token("storm-cara")
    first = asyncio.create_task(auth.authenticate(ana))
    second = asyncio.create_task(auth.authenticate(ana))
    await asyncio.sleep(0)
    first.cancel()
    _, principal = await second
    assert principal.sub == "storm-cara" and directory.reads == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_inactive_person_is_refused_to_every_login_sharing_the_read(
    store: ExamStore,
) -> None:
    directory = CountingDirectory(store)
    auth = Authenticator(SecretVerifier(SECRET), directory)
    gone = token("storm-gone")
    register("storm-gone", active=False)
    outcomes = await asyncio.gather(
        *(auth.authenticate(gone) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, AuthError) and o.code == "unauthorized" for o in outcomes)
    assert directory.reads == 1
