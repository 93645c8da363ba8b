"""Function keys, checked only when the dev host is given one (``--function-key KEY``).

As in Azure, a key comes in the ``code`` query parameter or the
``x-functions-key`` header; ``authLevel`` ANONYMOUS routes need none; FUNCTION
and ADMIN routes, the Event Grid webhook (a system key in Azure) and the admin
API (the master key in Azure) need it, else 401. The one key stands for all of
Azure's kinds. Without ``--function-key`` nothing is checked, as with Core Tools.
"""

from __future__ import annotations

import hmac

from aiohttp import web

ANONYMOUS = "ANONYMOUS"


class FunctionKeys:
    def __init__(self, key: str | None = None) -> None:
        self._key = key.encode() if key else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def allows(self, request: web.BaseRequest, auth_level: str = "FUNCTION") -> bool:
        if self._key is None or auth_level.upper() == ANONYMOUS:
            return True
        given = request.headers.get("x-functions-key") or request.query.get("code") or ""
        return hmac.compare_digest(given.encode(), self._key)

    def check(self, request: web.BaseRequest, auth_level: str = "FUNCTION") -> None:
        """Raises 401 (empty body, as Azure answers) unless the request may pass."""
        if not self.allows(request, auth_level):
            raise web.HTTPUnauthorized(body=b"")
