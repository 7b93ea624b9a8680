"""The login wall of `python app.py --auth user:pass`: every route that acts needs a login; failed logins are
rate-limited per client.

    launch(..., auth=("user", "pass"), app_kwargs={"middleware": [Middleware(AccessGate)]})

gradio guards most routes with its `login_check` dependency but not all: `/gradio_api/cancel`, `/reset`,
`/heartbeat`, `/stream` and others answer without a login. AccessGate, an ASGI middleware in front of
every route, turns that around: without a valid login session (gradio's own access-token cookie, read
from the running gradio App) a request gets 401 unless it is one of PUBLIC_PATHS / PUBLIC_PREFIXES: the
login page and what it needs to render (its scripts, styles, icons) and the login form's POST. New routes
a later gradio adds are therefore closed until listed here.

A client (by its address) whose logins failed MAX_FAILED_LOGINS times within FAILED_LOGIN_WINDOW_S
seconds gets 429 for the rest of that window, before its password is even compared. Behind a reverse
proxy every client shares the proxy's address, so the limit then applies to all of them together.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from http.cookies import SimpleCookie

from starlette.responses import JSONResponse

MAX_FAILED_LOGINS = 5
FAILED_LOGIN_WINDOW_S = 60.0
LOGIN_PATHS = ("/login", "/login/")
PUBLIC_PATHS = frozenset({"/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/robots.txt", "/manifest.json",
                          "/gradio_api/login_check", "/gradio_api/login_check/", "/logout",
                          "/gradio_api/startup-events"})  # gradio's launch() calls it; it acts once, then does nothing
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")  # GET only: the page's scripts, styles, icons


def is_public(method: str, path: str) -> bool:
    """Whether a request may be answered without a login."""
    if path in LOGIN_PATHS:
        return method == "POST"
    if method not in ("GET", "HEAD"):
        return False
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class FailedLogins:
    """Failed login times per client; `blocked_for(client)`: seconds until it may try again (0: now)."""

    def __init__(self, limit: int = MAX_FAILED_LOGINS, window_s: float = FAILED_LOGIN_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self.failures.setdefault(client, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        if not times:
            del self.failures[client]  # the table holds only clients with recent failures
            return deque()
        return times

    def blocked_for(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self.lock:
            times = self._recent(client, now)
            return max(0.0, times[0] + self.window_s - now) if len(times) >= self.limit else 0.0

    def record(self, client: str, failed: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            if failed:
                self.failures.setdefault(client, deque()).append(now)
            else:
                self.failures.pop(client, None)


def _logged_in(scope) -> bool:
    """Whether the request carries a login session of the running gradio App (or the App has no login)."""
    app = scope.get("app")
    if app is None or (getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None):
        return True  # no login configured: nothing to guard
    if getattr(app, "auth_dependency", None) is not None:
        return False  # an auth_dependency app is not what app.py builds: stay closed
    header = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
    cookies = SimpleCookie()
    try:
        cookies.load(header)
    except Exception:
        return False
    cookie_id = getattr(app, "cookie_id", "")
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        if name in cookies and app.tokens.get(cookies[name].value) is not None:
            return True
    return False


class AccessGate:
    """ASGI middleware: 401 for a request without a login unless `is_public`; 429 for a client over the
    failed-login limit."""

    def __init__(self, app, failed_logins: FailedLogins | None = None):
        self.app = app
        self.failed_logins = failed_logins or FailedLogins()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        method, path = scope.get("method", "GET"), scope.get("path", "")
        if path in LOGIN_PATHS and method == "POST":
            return await self._login(scope, receive, send)
        if not is_public(method, path) and not _logged_in(scope):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            response = JSONResponse({"error": "Not authenticated", "detail": "log in first"}, status_code=401)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _login(self, scope, receive, send):
        client = (scope.get("client") or ("unknown", 0))[0]
        wait_s = self.failed_logins.blocked_for(client)
        if wait_s > 0:
            response = JSONResponse({"error": "Too many failed logins", "detail": f"try again in {wait_s:.0f} s"},
                                    status_code=429, headers={"Retry-After": str(int(wait_s) + 1)})
            return await response(scope, receive, send)

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 200:
                    self.failed_logins.record(client, failed=False)
                elif 400 <= status < 500:
                    self.failed_logins.record(client, failed=True)
            await send(message)

        return await self.app(scope, receive, watched_send)
