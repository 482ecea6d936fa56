"""Plain answers (status, headers, body) -> the server's response objects.

Errors and failover decisions are data in the core (errors.Answer); this is the one place where
they become aiohttp responses, the edge's business, so that the server underneath can change
without touching them.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.errors import Answer


def send(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
