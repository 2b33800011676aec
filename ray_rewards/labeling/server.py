"""The labeling page's HTTP server: the page, a small JSON API and the clips.

Server choice: the standard library's :class:`http.server.ThreadingHTTPServer`. The
load is a handful of people clicking every few seconds, and every request is a
short piece of work (a lease, one small Parquet file, an APNG from a cache), so a
thread per connection is plenty; it adds no dependency and starts in milliseconds.
Ray's bundled aiohttp would buy asynchronous I/O that this load does not need, at
the price of depending on a private copy that Ray may change between releases.

Routes (JSON in and out; every error is a 4xx with ``{"error": message, "code": ...}``
and changes nothing):

- ``GET /``, ``/page.js``: the page (:mod:`ray_rewards.labeling.page`);
- ``GET /api/status``: counts (``?labeler=NAME`` adds that labeler's);
- ``POST /api/next`` ``{"labeler", "held": [{"query_id", "lease"}, ...]}``: lease
  the next query (``held``: the queries the page holds, renewed or, after a restart,
  restored);
- ``POST /api/answer`` ``{"labeler", "query_id", "lease", "preference"}`` or
  ``{"labeler", "answers": [{"query_id", "lease", "preference"}, ...]}``;
  ``preference``: 1 (fragment 1 better), 0, 0.5 (equal) or ``"skip"``;
- ``POST /api/release`` ``{"leases": [...]}``: a page closed;
- ``GET /clip/<query_id>/<1|2>.png``: a fragment's looping APNG.

Access: bound to a loopback address without a token, anyone on this machine may
label (requests must name a loopback host, against DNS rebinding). With a token
(required, and generated when not given, for any other address) every request
carries it: ``Authorization: Bearer TOKEN``, or the cookie the page gets from
``/?token=TOKEN``; anything else gets 401. POST bodies must be
``application/json`` (a cross-site form cannot send that without the browser asking
first), at most 64 KiB.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ray_rewards.labeling import page
from ray_rewards.labeling.service import LabelingError, LabelingService

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class LabelServer(ThreadingHTTPServer):
    """Serves ``service`` on ``host:port`` (port 0: a free one) until shut down.

    ``token``: required from every request; when None, a new one is made unless
    ``host`` is a loopback address (then no token is asked for).
    """

    daemon_threads = True

    def __init__(
        self,
        service: LabelingService,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        self.service = service
        self.loopback = is_loopback(host)
        self.token = token or (None if self.loopback else secrets.token_urlsafe(24))
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), _Handler)

    @property
    def url(self) -> str:
        """The page's address (the wildcard addresses shown as this machine's name)."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    @property
    def login_url(self) -> str:
        """:attr:`url` with the token, which the page keeps in a cookie."""
        return f"{self.url}?token={self.token}" if self.token else self.url

    @property
    def cookie_name(self) -> str:
        """Per port: servers on other ports of the same host have other tokens."""
        return f"rr_label_{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"
    server_version = "ray-rewards-label"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Serve a GET request."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Serve a POST request."""
        self._dispatch("POST")

    # ----------------------------------------------------------------- plumbing
    def _dispatch(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if method == "POST":
                self._read_body()
            self._check_access(method, url.path, query)
            self._route(method, url.path, query)
        except LabelingError as err:
            self._json(err.status, {"error": err.message, "code": err.code})
        except Exception as err:  # a bug or a storage failure: say so, keep serving
            logger.exception("labeling server: %s %s failed", method, self.path)
            self._json(500, {"error": f"server error: {err}", "code": "server_error"})

    def _check_access(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        token = self.server.token
        if token is None:
            host = self.headers.get("Host") or ""
            if not host.endswith("]"):  # [::1] has no port to cut off
                host = host.rsplit(":", 1)[0]
            if not is_loopback(host):
                raise LabelingError(
                    403, "bad_host", "this server answers requests for its loopback address only"
                )
            return
        given = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer ") :]
        elif method == "GET" and path == "/" and "token" in query:
            given = query["token"][0]
        else:
            for part in (self.headers.get("Cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == self.server.cookie_name:
                    given = value
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise LabelingError(
                401,
                "unauthorized",
                "missing or wrong token: open the URL the server printed (it ends in ?token=...)",
            )

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data, allow_nan=False).encode()
        self._send(status, body, "application/json", {"Cache-Control": "no-store"})

    def _read_body(self) -> None:
        """Read a POST's body into ``self._raw`` (first, so that a refused request
        leaves the connection clean); 411 without a length, 413 above MAX_BODY.
        """
        self._raw = b""
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self.close_connection = True
            raise LabelingError(411, "no_length", "a Content-Length header is required") from None
        if length < 0 or length > MAX_BODY:
            if 0 < length <= 16 * MAX_BODY:
                self.rfile.read(length)  # drained: the client reads the answer, not a reset
            else:
                self.close_connection = True
            raise LabelingError(413, "too_large", f"the body must be at most {MAX_BODY} bytes")
        self._raw = self.rfile.read(length)

    def _body(self) -> dict[str, Any]:
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise LabelingError(415, "bad_content_type", "send the body as application/json")
        try:
            body = json.loads(self._raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise LabelingError(400, "bad_json", f"the body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise LabelingError(400, "bad_json", "the body must be a JSON object")
        return body

    # ------------------------------------------------------------------- routes
    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        service = self.server.service
        if path.startswith("/clip/"):
            self._expect(method, "GET")
            qid, side = _clip_path(path)
            apng = service.clip(qid, side)
            self._send(200, apng, "image/png", {"Cache-Control": "private, max-age=86400"})
            return
        if path == "/":
            self._expect(method, "GET")
            if "token" in query:  # keep the token in a cookie, and out of the address bar
                cookie = (
                    f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; "
                    "SameSite=Strict"
                )
                self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})
                return
            self._send(200, page.HTML.encode(), "text/html; charset=utf-8", page.HEADERS)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", {})
        elif path == "/page.js":
            self._expect(method, "GET")
            self._send(200, page.JS.encode(), "text/javascript; charset=utf-8", page.HEADERS)
        elif path == "/api/status":
            self._expect(method, "GET")
            self._json(200, service.status(query.get("labeler", [None])[0]))
        elif path == "/api/next":
            self._expect(method, "POST")
            body = self._body()
            held = body.get("held", [])
            if not isinstance(held, list) or not all(
                isinstance(h, dict) and "query_id" in h and "lease" in h for h in held
            ):
                raise LabelingError(400, "bad_held", "held: expected a list of {query_id, lease}")
            held_pairs = [(h["query_id"], h["lease"]) for h in held]
            self._json(200, service.next(body.get("labeler"), held_pairs))
        elif path == "/api/answer":
            self._expect(method, "POST")
            body = self._body()
            self._json(200, service.answer(_answers(body), body.get("labeler")))
        elif path == "/api/release":
            self._expect(method, "POST")
            leases = self._body().get("leases")
            if not isinstance(leases, list) or not all(isinstance(x, str) for x in leases):
                raise LabelingError(400, "bad_leases", "leases: expected a list of strings")
            self._json(200, {"released": service.release(leases)})
        else:
            raise LabelingError(404, "not_found", f"no such page: {path[:200]}")

    def _expect(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise LabelingError(405, "bad_method", f"use {allowed} here")


def _clip_path(path: str) -> tuple[str, int]:
    """``(query id, side)`` of ``/clip/<query_id>/<1|2>.png``; 400 for anything else
    (a path that tries to leave the queue included).
    """
    parts = path.split("/")
    if len(parts) != 4 or parts[3] not in ("1.png", "2.png"):
        raise LabelingError(
            400, "bad_clip_path", "clip paths are /clip/<query id>/<1 or 2>.png, nothing else"
        )
    qid = unquote(parts[2])
    if not qid or any(c in qid for c in "/\\\0") or qid.startswith("."):
        raise LabelingError(400, "bad_clip_path", "a clip path may not leave the queue")
    return qid, int(parts[3][0])


def _answers(body: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """The ``(query_id, lease, preference)`` of an answer request, either form."""
    if "answers" in body:
        answers = body["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
            raise LabelingError(400, "bad_answers", "answers: expected a list of objects")
    else:
        answers = [body]
    for a in answers:
        if "query_id" not in a or "preference" not in a:
            raise LabelingError(400, "bad_answers", "each answer needs query_id and preference")
    return [(a["query_id"], a.get("lease"), a["preference"]) for a in answers]


__all__ = ["MAX_BODY", "LabelServer", "is_loopback"]
