"""The audit's reports over HTTP: `GET /api/reports/{name}?from=YYYY-MM-DD&to=YYYY-MM-DD`
(JSON, or CSV with `format=csv`) and `GET /api/reports/exam/{accession}` (one exam's
history), for coordinators and admins of the caller's own tenant.

The caller authenticates as on the WebSocket: `Authorization: Bearer <token>`, checked
by the gateway's verifier. The tenant comes from the token, never from the request, so
no parameter can name another tenant's data. Errors are the protocol's codes:
401 `unauthorized`, 403 `forbidden`, 400 `bad_request`, 404 `not_found`,
503 `unavailable` (the audit database is away; the worklist is not affected).

Mount with `*reports.routes(...)` in the gateway's route list (see `routes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from audit.reports import REPORTS, exam_history, run_report, to_csv
from audit.settings import AuditSettings
from gateway.auth import Authenticator, Principal, Role
from gateway.exceptions import AuthError

__all__ = ["LazyPool", "routes"]

log = logging.getLogger("gateway.reports")

_MAX_DAYS = 366


class LazyPool:
    """The audit database's pool, opened on first use (the gateway starts, and serves
    the worklist, whether PostgreSQL is up or not). `aclose` is safe to call twice."""

    def __init__(self, settings: AuditSettings) -> None:
        self._settings = settings
        self._pool: AsyncConnectionPool[Any] | None = None

    async def get(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self._settings.database_url,
                min_size=1,
                max_size=max(1, self._settings.pool_size),
                open=False,
                timeout=5.0,
                reconnect_timeout=0,
                kwargs={"connect_timeout": 5},
            )
            await pool.open(wait=False)
            self._pool = pool
        return self._pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _error(status: int, code: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "reason": reason}}, status_code=status)


def _plain(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _default_authenticator(request: Request) -> Authenticator:
    return request.app.state.gw.authenticator  # type: ignore[no-any-return]


def routes(
    pool: LazyPool | Callable[[], Any],
    *,
    settings: AuditSettings | None = None,
    get_authenticator: Callable[[Request], Authenticator] = _default_authenticator,
) -> list[Route]:
    """The report routes. `pool` is a `LazyPool` or an async callable returning an open
    psycopg pool; `get_authenticator` finds what turns a token into a principal (by
    default the gateway's, `app.state.gw.authenticator`: the token, then the directory)."""
    settings = settings or AuditSettings()
    get_pool = pool.get if isinstance(pool, LazyPool) else pool

    async def authorize(request: Request) -> Principal | Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "unauthorized", "a bearer token is required")
        try:
            _, principal = await get_authenticator(request).authenticate(token.strip())
        except AuthError as exc:
            return _error(401, exc.code, str(exc))
        if not (principal.has(Role.COORDINATOR) or principal.has(Role.ADMIN)):
            return _error(403, "forbidden", "reports are for coordinators and admins")
        return principal

    async def report(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        name = request.path_params["name"]
        if name not in REPORTS:
            return _error(404, "not_found", f"no report {name!r}; reports: {', '.join(REPORTS)}")
        try:
            start = date.fromisoformat(request.query_params.get("from", ""))
            end = date.fromisoformat(request.query_params.get("to", ""))
        except ValueError:
            return _error(400, "bad_request", "from and to must be dates (YYYY-MM-DD)")
        if end < start or (end - start).days >= _MAX_DAYS:
            return _error(400, "bad_request", f"from..to must span 1 to {_MAX_DAYS} days")
        tz = settings.timezone_of(who.tenant)
        try:
            async with (await get_pool()).connection() as conn:
                result = await run_report(conn, name, who.tenant, start, end, tz)
        except psycopg.OperationalError as exc:
            log.warning("report %s: audit database unavailable (%s)", name, type(exc).__name__)
            return _error(503, "unavailable", "the audit database is unavailable; try later")
        if request.query_params.get("format") == "csv":
            filename = f"{name}-{who.tenant}-{start}-{end}.csv"
            return Response(
                to_csv(result),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        rows = [{k: _plain(v) for k, v in row.items()} for row in result.as_dicts()]
        return JSONResponse(
            {
                "report": name,
                "tenant": who.tenant,
                "from": start.isoformat(),
                "to": end.isoformat(),
                "time_zone": tz,
                "columns": list(result.columns),
                "rows": rows,
            }
        )

    async def exam(request: Request) -> Response:
        who = await authorize(request)
        if isinstance(who, Response):
            return who
        accession = request.path_params["accession"]
        try:
            async with (await get_pool()).connection() as conn:
                rows = await exam_history(conn, who.tenant, accession)
        except psycopg.OperationalError as exc:
            log.warning("exam audit: audit database unavailable (%s)", type(exc).__name__)
            return _error(503, "unavailable", "the audit database is unavailable; try later")
        if not rows:
            return _error(404, "not_found", "no audit of that exam")
        history = [{k: _plain(v) for k, v in row.items()} for row in rows]
        return JSONResponse({"accession": accession, "history": history})

    async def index(request: Request) -> Response:
        return JSONResponse({"reports": list(REPORTS)})

    return [
        Route("/api/reports", index),
        Route("/api/reports/exam/{accession}", exam),
        Route("/api/reports/{name}", report),
    ]
