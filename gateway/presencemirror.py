"""A node's copy of one tenant's presence hash (`Mirror`), its connections folded into
users (`User`: two tabs are one presence), kept incrementally from the announcements
`gateway.presence` applies to it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

__all__ = ["Mirror", "User"]


class User:
    """One user's connections folded into what everyone sees (two tabs, one presence),
    kept incrementally: adding or removing a connection costs its own rows only."""

    __slots__ = ("_record", "conns", "name", "roles", "rows", "sub")

    def __init__(self, entry: dict[str, Any]) -> None:
        self.sub: str = entry["sub"]
        self.name: str = entry["name"]
        self.roles: list[str] = entry["roles"]
        self.conns: dict[str, list[str]] = {}  # connection -> the exams it reads
        self.rows: dict[str, tuple[int, dict[str, Any]]] = {}  # exam -> (connections, row)
        # What `record` returned, until a connection comes or goes (callers only read
        # it: every join's `presence_state` lists every user, most of them unchanged).
        self._record: dict[str, Any] | None = None

    def add(self, conn: str, entry: dict[str, Any]) -> None:
        self._record = None
        self.name, self.roles = entry["name"], entry["roles"]
        exams = []
        for row in entry.get("reading") or ():
            if isinstance(row, dict) and isinstance(row.get("exam_id"), str):
                count = self.rows.get(row["exam_id"], (0, row))[0]
                self.rows[row["exam_id"]] = (count + 1, row)
                exams.append(row["exam_id"])
        self.conns[conn] = exams

    def remove(self, conn: str) -> None:
        self._record = None
        for exam_id in self.conns.pop(conn, ()):
            count, row = self.rows[exam_id]
            if count > 1:
                self.rows[exam_id] = (count - 1, row)
            else:
                del self.rows[exam_id]

    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = {
                "sub": self.sub,
                "name": self.name,
                "roles": self.roles,
                "reading": [self.rows[k][1] for k in sorted(self.rows)],
                "connections": len(self.conns),
            }
        return self._record


class Mirror:
    """A node's copy of one tenant's presence hash (entries without their heartbeat),
    with its users folded and the subs touched since the last diff."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.users: dict[str, User] = {}
        self.touched: set[str] = set()
        self.shared: dict[tuple[str, bytes], Any] = {}  # see `_share`
        # While the hash is being read, announcements wait here (then applied in order:
        # an announcement older than the read only repeats what the read saw).
        self.backlog: list[dict[str, Any]] | None = []
        self.loaded: asyncio.Future[None] | None = None
        self.reading = asyncio.Lock()  # one whole read at a time

    def put(self, conn: str, entry: dict[str, Any]) -> None:
        old = self.entries.get(conn)
        if old == entry:
            return
        self._share(entry)
        if old is not None:
            self.drop(conn)
        try:
            user = self.users.get(entry["sub"]) or User(entry)
            user.add(conn, entry)
        except (KeyError, TypeError):
            return  # not an entry we wrote: ignore it, as the old re-read did
        self.users[user.sub] = user
        self.entries[conn] = entry
        self.touched.add(user.sub)

    def _share(self, entry: dict[str, Any]) -> None:
        """Values most entries repeat (roles, scope, node: a group has few distinct ones)
        are kept once, not once per connection (read-only everywhere)."""
        for field in ("roles", "scope", "node"):
            value = entry.get(field)
            if isinstance(value, list | dict | str):
                key = (field, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
                entry[field] = self.shared.setdefault(key, value)

    def drop(self, conn: str) -> None:
        old = self.entries.pop(conn, None)
        if old is None:
            return
        user = self.users[old["sub"]]
        user.remove(conn)
        if not user.conns:
            del self.users[user.sub]
        self.touched.add(user.sub)

    def replace(self, entries: dict[str, dict[str, Any]]) -> None:
        """The whole hash, read again: apply only what differs."""
        for conn in [c for c in self.entries if c not in entries]:
            self.drop(conn)
        for conn, entry in entries.items():
            self.put(conn, entry)

    def apply(self, message: dict[str, Any]) -> None:
        for conn, entry in (message.get("set") or {}).items():
            if isinstance(entry, dict):
                self.put(str(conn), entry)
        for conn in message.get("del") or ():
            self.drop(str(conn))
