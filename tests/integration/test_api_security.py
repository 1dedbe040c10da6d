"""HTTP-level protections of a real server: headers, error shape, cookies, CSRF, hostile input.

Every test talks to the shared server over HTTPS and creates its own users, so
they neither change the server nor depend on each other.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ADMIN_PASSWORD, Server

SESSION_COOKIE = "safehold_session"


def _raw(server: Server, token: str | None = None) -> httpx.Client:
    """A client rooted at the server (not /api/v1), for /metrics and / too."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, verify=server.ssl_context(), headers=headers, timeout=30)


def _add_user(server: Server, token: str, role: str = "user") -> tuple[str, str]:
    username, password = f"sec-{secrets.token_hex(4)}", f"Sec-Password-{secrets.token_hex(8)}"
    with server.client(token) as c:
        r = c.post("/users", json={"username": username, "password": password, "role": role})
    assert r.status_code == 201, r.text
    return username, password


def assert_error_shape(r: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """The one error shape of the API: ``{"error": {"code", "message", "field"?, "hint"?}}``."""
    if status is not None:
        assert r.status_code == status, r.text
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert set(error) <= {"code", "message", "field", "hint"}, body
    return dict(error)


# --- headers on every response --------------------------------------------------------------------

# (method, path, needs a token, expected status): success and failure, API and non-API.
RESPONSES = [
    ("GET", "/api/v1/health", False, 200),
    ("GET", "/api/v1/openapi.json", False, 200),
    ("GET", "/api/v1/me", True, 200),
    ("GET", "/api/v1/me", False, 401),
    ("GET", "/api/v1/resources/00000000-0000-4000-8000-000000000404", True, 404),
    ("GET", "/api/v1/resources?limit=0", True, 422),
    ("PUT", "/api/v1/health", False, 405),
    ("GET", "/api/v1/no-such-route", False, 404),
    ("GET", "/", False, 200),
    ("GET", "/metrics", False, 200),
]


@pytest.mark.parametrize(("method", "path", "auth", "status"), RESPONSES,
                         ids=[f"{m} {p.split('?')[0]} {s}" for m, p, _, s in RESPONSES])
def test_every_response_has_the_security_headers(shared_server: Server, admin_token: str, method: str,
                                                 path: str, auth: bool, status: int) -> None:
    with _raw(shared_server, admin_token if auth else None) as c:
        r = c.request(method, path)
    assert r.status_code == status, r.text
    h = r.headers
    assert "max-age=" in h["strict-transport-security"]
    assert int(h["strict-transport-security"].split("max-age=")[1].split(";")[0]) >= 180 * 24 * 3600
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    csp = h["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    if path.startswith("/api/"):
        assert h["cache-control"] == "no-store"


def test_an_export_is_not_cached(shared_server: Server, admin_token: str) -> None:
    with shared_server.client(admin_token) as c:
        r = c.post("/export", json={"password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-disposition"].startswith("attachment")


# --- the error shape ------------------------------------------------------------------------------

def test_401_has_the_error_shape_and_asks_for_a_bearer_token(shared_server: Server) -> None:
    with shared_server.client() as c:
        for headers in ({}, {"Authorization": "Bearer shs_not-a-token"}, {"Authorization": "Basic YTpi"}):
            r = c.get("/me", headers=headers)
            assert assert_error_shape(r, 401)["code"] == "authentication_failed"
            assert r.headers["www-authenticate"] == "Bearer"


def test_404_and_422_have_the_error_shape(shared_server: Server, admin_token: str) -> None:
    with shared_server.client(admin_token) as c:
        assert assert_error_shape(c.get(f"/accounts/{uuid.uuid4()}"), 404)["code"] == "not_found"
        assert assert_error_shape(c.get("/accounts/not-a-uuid"), 404)["code"] == "not_found"
        error = assert_error_shape(c.post("/resources", json={"name": ""}), 422)
        assert error["code"] == "invalid_input" and error["field"] == "name"


def _secured_operations(server: Server) -> Iterator[tuple[str, str]]:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if op.get("security"):
                yield method.upper(), path.replace("{", "").replace("}", "")  # any id: auth comes first


def test_every_secured_operation_refuses_a_request_without_credentials(shared_server: Server) -> None:
    operations = list(_secured_operations(shared_server))
    assert len(operations) > 30
    with _raw(shared_server) as c:
        for method, path in operations:
            body = {} if method in ("POST", "PUT", "PATCH") else None
            r = c.request(method, path, json=body)
            assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
            assert_error_shape(r)


# --- login failures -------------------------------------------------------------------------------

def test_login_failures_never_echo_the_password(shared_server: Server, admin_token: str) -> None:
    username, _ = _add_user(shared_server, admin_token)
    tried = [
        (username, f"wrong-{secrets.token_hex(8)}", 401),                   # wrong password
        (f"nobody-{secrets.token_hex(4)}", f"wrong-{secrets.token_hex(8)}", 401),  # unknown user
        (username, f"long-{secrets.token_hex(8)}" + "x" * 1100, 422),          # too long
        (username, f"nul-{secrets.token_hex(8)}\x00", 422),                    # NUL character
    ]
    with shared_server.client() as c:
        for user, password, status in tried:
            r = c.post("/auth/login", json={"username": user, "password": password})
            assert_error_shape(r, status)
            secret = password.rstrip("\x00x")
            assert secret not in r.text and not any(secret in v for v in r.headers.values())
            assert "set-cookie" not in r.headers
        r = c.post("/auth/login", json={"username": username, "password": "p", "extra": tried[0][1]})
        assert_error_shape(r, 422)
        assert tried[0][1] not in r.text
    with shared_server.client(admin_token) as c:
        audit = c.get("/audit/export", params={"action": "login_failed"}).text
    assert username in audit
    assert not any(password.rstrip("\x00x") in audit for _, password, _ in tried)


# --- session cookie and CSRF ----------------------------------------------------------------------

def _cookie_session(server: Server, admin_token: str) -> tuple[str, str]:
    """A password administrator's session: (session token, CSRF token)."""
    username, password = _add_user(server, admin_token, role="password_administrator")
    with server.client() as c:
        r = c.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.cookies[SESSION_COOKIE], r.json()["csrf_token"]


def test_the_session_cookie_is_httponly_secure_and_samesite_strict(shared_server: Server,
                                                                   admin_token: str) -> None:
    username, password = _add_user(shared_server, admin_token)
    with shared_server.client() as c:
        r = c.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    [cookie] = [v for v in r.headers.get_list("set-cookie") if v.startswith(f"{SESSION_COOKIE}=")]
    attributes = {a.strip().split("=")[0].lower(): a.strip().partition("=")[2] for a in cookie.split(";")[1:]}
    assert "httponly" in attributes and "secure" in attributes
    assert attributes["samesite"].lower() == "strict"
    assert attributes["path"] == "/"
    assert cookie.split(";")[0] == f"{SESSION_COOKIE}={r.json()['token']}"


def test_a_cookie_authenticated_post_needs_the_csrf_header(shared_server: Server, admin_token: str) -> None:
    session, csrf = _cookie_session(shared_server, admin_token)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    name = f"csrf-{secrets.token_hex(4)}"
    with shared_server.client() as c:
        assert c.get("/me", headers=cookie).status_code == 200  # safe methods need no CSRF token
        for headers in (cookie, cookie | {"X-CSRF-Token": "wrong"}, cookie | {"X-CSRF-Token": ""}):
            r = c.post("/resources", json={"name": name}, headers=headers)
            assert assert_error_shape(r, 403)["code"] == "forbidden"
        r = c.post("/resources", json={"name": name}, headers=cookie | {"X-CSRF-Token": csrf})
        assert r.status_code == 201, r.text
        # logout is an unsafe request too: without the header the session survives
        assert c.post("/auth/logout", headers=cookie).status_code == 403
        assert c.get("/me", headers=cookie).status_code == 200


# --- hostile input --------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
# (name, method, path, body bytes, headers)
HOSTILE = [
    ("malformed JSON", "POST", "/resources", b'{"name": ', JSON),
    ("not UTF-8", "POST", "/resources", b'{"name": "\xff\xfe"}', JSON),
    ("nested 100k deep", "POST", "/resources", b"[" * 100_000 + b"]" * 100_000, JSON),
    ("NUL in a string", "POST", "/resources", b'{"name": "a\\u0000b"}', JSON),
    ("NUL in a tag", "POST", "/resources", b'{"name": "a", "tags": ["\\u0000"]}', JSON),
    ("lone surrogate", "POST", "/resources", b'{"name": "\\ud800"}', JSON),
    ("1 MB name", "POST", "/resources", b'{"name": "' + b"n" * 1_000_000 + b'"}', JSON),
    ("1 MB password", "POST", "/auth/login", b'{"username": "u", "password": "' + b"p" * 1_000_000 + b'"}',
     JSON),
    ("NUL in a password", "POST", "/auth/login", b'{"username": "u", "password": "\\u0000"}', JSON),
    ("NUL in the notes", "POST", "/resources/{rid}/accounts",
     b'{"username": "u", "password": "p", "notes": "\\u0000"}', JSON),
    ("a JSON array", "POST", "/resources", b'["name"]', JSON),
    ("JSON null", "POST", "/resources", b"null", JSON),
    ("a number for a string", "POST", "/resources", b'{"name": 1}', JSON),
    ("an unknown field", "POST", "/resources", b'{"name": "a", "owner_id": "x"}', JSON),
    ("text/plain", "POST", "/resources", b'{"name": "a"}', {"Content-Type": "text/plain"}),
    ("form data", "POST", "/resources", b"name=a", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("XML", "POST", "/resources", b"<name>a</name>", {"Content-Type": "application/xml"}),
    ("no content type", "POST", "/resources", b'{"name": "a"}', {}),
    ("multipart", "POST", "/resources", b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\na\r\n--b--\r\n",
     {"Content-Type": "multipart/form-data; boundary=b"}),
    ("JSON to the CSV import", "POST", "/import", b'{"resource": "a"}', JSON),
    ("binary to the CSV import", "POST", "/import", b"\xff\xfe\x00\x01", {"Content-Type": "text/csv"}),
    ("NUL in the CSV import", "POST", "/import", b"resource,username,password\na,b,\x00\n", {"Content-Type": "text/csv"}),
    ("NUL in a query", "GET", "/resources?q=a%00b", b"", {}),
    ("a huge query", "GET", "/resources?q=" + "q" * 10_000, b"", {}),
    ("NUL in a path id", "GET", "/accounts/a%00b", b"", {}),
    ("a huge path id", "GET", "/accounts/" + "a" * 10_000, b"", {}),
    ("NUL in an audit filter", "GET", "/audit?actor=%00", b"", {}),
    ("an impossible date", "GET", "/audit?until=2024-02-30", b"", {}),
]


@pytest.fixture(scope="module")
def hostile_resource(shared_server: Server, admin_token: str) -> str:
    with shared_server.client(admin_token) as c:
        r = c.post("/resources", json={"name": f"hostile-{secrets.token_hex(4)}"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize(("method", "path", "body", "headers"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_4xx_with_the_error_shape(shared_server: Server, admin_token: str,
                                                       hostile_resource: str, method: str, path: str,
                                                       body: bytes, headers: dict[str, str]) -> None:
    with shared_server.client(admin_token) as c:
        r = c.request(method, path.replace("{rid}", hostile_resource), content=body or None, headers=headers)
    assert_error_shape(r)
    assert len(r.content) < 1000, "the error echoes the input"


def test_a_username_with_a_trailing_newline_is_refused(shared_server: Server, admin_token: str) -> None:
    with shared_server.client(admin_token) as c:
        r = c.post("/users", json={"username": f"nl-{secrets.token_hex(4)}\n", "password": "A-long-password-1"})
    assert_error_shape(r, 422)


@pytest.mark.parametrize("query", [
    "/resources?q=%ff%fe",                                   # not UTF-8: decoded with replacement
    "/resources?q=%25_%5C",                                  # LIKE wildcards and escape, taken literally
    "/resources?offset=10000000&limit=500",
    "/audit?since=9999-12-31T23:59:59-23:59",                # the ends of Python's datetime range
    "/audit?since=0001-01-01T00:00:00%2B23:59",
    "/audit?reason=unknown&limit=1",                         # an unknown parameter is ignored
])
def test_odd_but_valid_queries_succeed(shared_server: Server, admin_token: str, query: str) -> None:
    with shared_server.client(admin_token) as c:
        r = c.get(query)
    assert r.status_code == 200, r.text


# --- metrics --------------------------------------------------------------------------------------

def test_metrics_are_prometheus_text_with_safehold_metrics(shared_server: Server) -> None:
    with _raw(shared_server) as c:
        c.get("/api/v1/health")
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"safehold_http_requests", "safehold_http_request_seconds", "safehold_logins",
            "safehold_audit_records", "safehold_server_info"} <= families.keys()
    requests = families["safehold_http_requests"]
    assert requests.type == "counter"
    assert any(s.labels.get("status") == "200" and s.value >= 1 for s in requests.samples)
    # Route templates, not raw paths: ids must not become label values.
    assert not any("-" in s.labels.get("route", "") and len(s.labels["route"]) > 60 for s in requests.samples)
