"""A group's admin over HTTP: its people and their privileges, who is online, and
deactivating someone. For admins of the caller's own tenant only.

    GET   /api/admin/people                  the tenant's people and sites, and the
                                             modalities a person may be limited to
    PATCH /api/admin/people/{sub}            {"version": n, "sites"?: [..],
                                              "subspecialties"?: [..], "modalities"?: [..]}
                                             (empty lists: every one)
    POST  /api/admin/people/{sub}/deactivate
    POST  /api/admin/people/{sub}/reactivate
    GET   /api/admin/online                  subs online, their connection counts
    GET   /api/admin/rules                   the tenant's orchestration rules, version
    PUT   /api/admin/rules                   {"version": n (0: none stored yet), fields...}

The caller authenticates as on the WebSocket (`Authorization: Bearer <token>`, the
gateway's `Authenticator`); the tenant comes from the token, never from the request.
Every write is the directory's versioned, audited write with the admin's sub as the
actor; that write alone re-scopes or closes (4005) the person's open sessions
(`gateway.context`). Errors: `{"error": {"code", "reason"}}` with 401 `unauthorized`,
403 `forbidden`, 400 `bad_request`, 404 `not_found`, 409 `conflict` (the version read
is stale: read again).

Mount with `*admin.routes()` in the gateway's route list.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dynamo.directory.files import explain
from dynamo.directory.models import Person, TenantRules
from dynamo.exceptions import DirectoryConflict, DirectoryExists, InvalidEntry
from dynamo.states import Modality
from gateway.auth import Principal, Role
from gateway.exceptions import AuthError

__all__ = ["routes"]

log = logging.getLogger("gateway.admin")


def _error(status: int, code: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "reason": reason}}, status_code=status)


def _person(p: Person) -> dict[str, Any]:
    return {
        "sub": p.sub,
        "name": p.name,
        "title": p.title,
        "roles": [r.value for r in p.roles],
        "sites": list(p.sites),
        "subspecialties": list(p.subspecialties),
        "modalities": list(p.modalities),
        "active": p.active,
        "version": p.version,
    }


def _rules(entry: TenantRules) -> dict[str, Any]:
    return {k: v for k, v in entry.content().items() if k not in ("tenant",)}


def _codes(body: dict[str, Any], field: str) -> tuple[str, ...] | None:
    if field not in body:
        return None
    value = body[field]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"`{field}` must be a list of codes")
    return tuple(value)


def routes() -> list[Route]:
    async def authorize(request: Request) -> Principal | Response:
        gw = request.app.state.gw
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "unauthorized", "a bearer token is required")
        try:
            who: Principal
            _, who = await gw.authenticator.authenticate(token.strip())
        except AuthError as exc:
            return _error(401, exc.code, exc.reason)
        if not who.has(Role.ADMIN):
            return _error(403, "forbidden", "for the group's admins only")
        return who

    async def people(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        directory = request.app.state.gw.directory
        found = sorted(await directory.people(who.tenant), key=lambda p: (p.name, p.sub))
        sites = [
            {"code": s.code, "name": s.name, "active": s.active}
            for s in await directory.sites(who.tenant)
        ]
        return JSONResponse(
            {
                "tenant": who.tenant,
                "sites": sites,
                "modalities": [m.value for m in Modality],
                "people": [_person(p) for p in found],
            }
        )

    async def target(request: Request, who: Principal) -> Person | Response:
        sub = request.path_params["sub"]
        person = await request.app.state.gw.directory.person(who.tenant, sub)
        if person is None:
            return _error(404, "not_found", f"no person {sub!r} in {who.tenant}")
        return person  # type: ignore[no-any-return]

    async def update(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("send a JSON object")
            version = body.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("`version` (the version read) is required")
            sites = _codes(body, "sites")
            subspecialties = _codes(body, "subspecialties")
            modalities = _codes(body, "modalities")
            if sites is None and subspecialties is None and modalities is None:
                raise ValueError("send `sites`, `subspecialties` and/or `modalities`")
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        person = await target(request, who)
        if isinstance(person, Response):
            return person
        directory = request.app.state.gw.directory
        changes: dict[str, Any] = {}
        if sites is not None:
            known = {s.code for s in await directory.sites(who.tenant) if s.active}
            unknown = [s for s in sites if s not in known]
            if unknown:
                return _error(
                    400,
                    "bad_request",
                    f"unknown site {unknown[0]!r} (sites of {who.tenant}:"
                    f" {', '.join(sorted(known)) or 'none'})",
                )
            changes["sites"] = sites
        if subspecialties is not None:
            changes["subspecialties"] = subspecialties
        if modalities is not None:
            changes["modalities"] = modalities
        try:
            entry = Person.model_validate({**person.content(), **changes})
        except ValidationError as exc:
            return _error(400, "bad_request", explain(exc))
        try:
            saved = await directory.update(entry, actor=who.sub, expected_version=version)
        except DirectoryConflict as exc:
            return _error(409, "conflict", str(exc))
        except (InvalidEntry, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        log.info("admin %s updated %s/%s", who.sub, who.tenant, saved.sub)
        return JSONResponse(_person(saved))

    async def deactivate(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        person = await target(request, who)
        if isinstance(person, Response):
            return person
        if person.sub == who.sub:
            return _error(400, "bad_request", "you cannot deactivate yourself")
        try:
            saved = await request.app.state.gw.directory.deactivate(person, actor=who.sub)
        except DirectoryConflict as exc:
            return _error(409, "conflict", str(exc))
        log.info("admin %s deactivated %s/%s", who.sub, who.tenant, saved.sub)
        return JSONResponse(_person(saved))

    async def reactivate(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        person = await target(request, who)
        if isinstance(person, Response):
            return person
        try:
            entry = person.model_copy(update={"active": True})
            saved = await request.app.state.gw.directory.update(
                entry, actor=who.sub, expected_version=person.version
            )
        except DirectoryConflict as exc:
            return _error(409, "conflict", str(exc))
        except InvalidEntry as exc:  # e.g. a site privilege whose site is gone
            return _error(400, "bad_request", str(exc))
        log.info("admin %s reactivated %s/%s", who.sub, who.tenant, saved.sub)
        return JSONResponse(_person(saved))

    async def online(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        users = await request.app.state.gw.presence.users(who.tenant)
        return JSONResponse(
            {"online": [{"sub": u["sub"], "connections": u["connections"]} for u in users.values()]}
        )

    async def rules(request: Request) -> Response:
        """The tenant's orchestration rules (mode, thresholds, caps, RVU overrides); a
        PUT replaces them, conditional on the version read, audited, applied live."""
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        directory = request.app.state.gw.directory
        stored: TenantRules | None = await directory.rules(who.tenant)
        if request.method == "GET":
            shown = stored or TenantRules(tenant=who.tenant)
            return JSONResponse({**_rules(shown), "version": shown.version})
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("send a JSON object")
            version = body.pop("version", None)
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("`version` (the version read; 0 when none) is required")
            body.pop("tenant", None)
            entry = TenantRules.model_validate({**body, "tenant": who.tenant})
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)[:3]
            )
            return _error(400, "bad_request", detail)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        try:
            if stored is None:
                if version != 0:
                    raise DirectoryConflict("rules", who.tenant, version)
                saved = await directory.add(entry, actor=who.sub)
            else:
                saved = await directory.update(entry, actor=who.sub, expected_version=version)
        except (DirectoryConflict, DirectoryExists) as exc:
            return _error(409, "conflict", str(exc))
        except InvalidEntry as exc:
            return _error(400, "bad_request", str(exc))
        log.info("admin %s set the orchestration rules of %s", who.sub, who.tenant)
        return JSONResponse({**_rules(saved), "version": saved.version})

    return [
        Route("/api/admin/rules", rules, methods=["GET", "PUT"]),
        Route("/api/admin/people", people),
        Route("/api/admin/online", online),
        Route("/api/admin/people/{sub}", update, methods=["PATCH"]),
        Route("/api/admin/people/{sub}/deactivate", deactivate, methods=["POST"]),
        Route("/api/admin/people/{sub}/reactivate", reactivate, methods=["POST"]),
    ]
