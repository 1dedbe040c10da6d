"""Security leftovers, against real servers: a sign-in forged by another site is refused (login CSRF); a
name typed at sign-in that is no user's is never stored, only its keyed fingerprint; a request body over
its limit is refused before it is read."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path

import httpx

from tests.support import ADMIN_PASSWORD, Server, wait_until
from tests.ui_client import assert_strict_html, client, hidden

SESSION = "safehold_session"
MIB = 1024 * 1024
IMPORT_LIMIT = 10 * MIB


def _session_set(r: httpx.Response) -> bool:
    return any(v.startswith(f"{SESSION}=") and 'max-age=0' not in v.lower()
               for v in r.headers.get_list("set-cookie"))


def _page_token(b: httpx.Client) -> str:
    """The sign-in page's pre-session token (its cookie is then in ``b``); none before there was one."""
    page = b.get("/ui/login").text
    return hidden(page, "signin_token") if "signin_token" in page else ""


# --- login CSRF -------------------------------------------------------------------------------------------


def test_a_sign_in_forged_by_another_site_is_refused(shared_server: Server) -> None:
    own = shared_server.url
    credentials = {"username": "admin", "password": ADMIN_PASSWORD}
    with client(shared_server) as b:
        token = _page_token(b)
        forged = [
            ({"Origin": "https://evil.example"}, {}),                               # a form on another site
            ({"Origin": "https://evil.example"}, {"signin_token": token}),
            ({"Origin": "null"}, {"signin_token": token}),                          # a sandboxed frame
            ({"Sec-Fetch-Site": "cross-site"}, {"signin_token": token}),
            ({"Sec-Fetch-Site": "same-site", "Origin": "https://127.0.0.1:1"}, {"signin_token": token}),
            ({}, {}),                                                               # no token at all
            ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {"signin_token": token + "x"}),
        ]
        for headers, extra in forged:
            r = b.post("/ui/login", data={**credentials, **extra}, headers=headers)
            assert r.status_code == 403, (headers, extra, r.status_code)
            assert not _session_set(r) and "This sign-in form has expired" in r.text, headers
            assert_strict_html(r.text)
        # the TOTP step too
        r = b.post("/ui/login/totp", data={"totp": "123456", "signin_token": token},
                   headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and not _session_set(r)
        # without the page's cookie, its token alone is not enough
        with client(shared_server) as stranger:
            r = stranger.post("/ui/login", data={**credentials, "signin_token": token})
            assert r.status_code == 403 and not _session_set(r)
        # the page itself, as a browser sends it
        r = b.post("/ui/login", data={**credentials, "signin_token": token},
                   headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 303 and _session_set(r)


def test_the_json_sign_in_works_for_scripts_but_not_for_another_site(shared_server: Server) -> None:
    credentials = {"username": "admin", "password": ADMIN_PASSWORD}
    with shared_server.client() as c:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null"}):
            r = c.post("/auth/login", json=credentials, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", headers
            assert "set-cookie" not in r.headers and "token" not in r.text
        assert c.post("/auth/login", json=credentials).status_code == 200  # curl, scripts
        r = c.post("/auth/login", json=credentials, headers={"Origin": shared_server.url,
                                                             "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200


# --- a name that is no user's -----------------------------------------------------------------------------


def _failed_unknown(server: Server, token: str, typed: str) -> list[dict[str, object]]:
    """The login_failed records of unknown names, newest first."""
    with server.client(token) as c:
        items = c.get("/audit", params={"action": "login_failed", "limit": 200}).json()["items"]
    return [i for i in items if i["detail"].get("reason") == "unknown user"]


def test_a_password_typed_as_the_username_is_never_stored(shared_server: Server, admin_token: str) -> None:
    typed = f"Pw-{secrets.token_hex(10)}"  # a password that looks like a username
    other = f"Pw-{secrets.token_hex(10)}"
    with shared_server.client() as c:
        for name in (typed, typed, other):
            r = c.post("/auth/login", json={"username": name, "password": f"wrong-{secrets.token_hex(6)}"})
            assert r.status_code == 401
    with client(shared_server) as b:  # and from the sign-in page
        token = _page_token(b)
        r = b.post("/ui/login", data={"username": typed, "password": "whatever-1", "signin_token": token})
        assert r.status_code == 401 and typed in r.text  # shown back to the one who typed it, nowhere else

    records = _failed_unknown(shared_server, admin_token, typed)[:4]
    with shared_server.client(admin_token) as c:
        everything = c.get("/audit/export").text + json.dumps(c.get("/audit", params={"limit": 500}).json())
    assert typed not in everything and other not in everything
    assert typed.lower() not in everything.lower()
    assert typed not in shared_server.log() and other not in shared_server.log()
    assert {r["actor"] for r in records} == {"(unknown user)"} and {r["target_name"] for r in records} == {
        "(unknown user)"}
    ui, third, second, first = (str(r["detail"]["name_fingerprint"]) for r in records)
    assert first == second == ui != third and re.fullmatch("[0-9a-f]{16}", first)


def test_the_read_only_server_spools_the_same_fingerprint_and_no_name(
        primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    typed = f"Pw-{secrets.token_hex(10)}"
    with primary.client() as c:
        assert c.post("/auth/login", json={"username": typed, "password": "wrong-pw-1"}).status_code == 401
    on_primary = _failed_unknown(primary, primary.login(), typed)[0]["detail"]["name_fingerprint"]

    primary.stop()  # the read-only server now answers sign-ins itself, auditing to its spool

    def answered_locally() -> bool:
        with readonly.client() as c:
            return c.post("/auth/login", json={"username": typed, "password": "wrong-pw-2"}).status_code == 401

    wait_until(answered_locally, timeout=30, what="the read-only server to answer sign-ins itself")
    with readonly.client() as c:
        assert c.post("/auth/login", json={"username": typed, "password": "wrong-pw-3"}).status_code == 401
    spool = "".join(p.read_text() for p in Path(readonly.data_dir, "spool").iterdir() if p.is_file())
    records = [json.loads(line) for line in spool.splitlines() if '"login_failed"' in line]
    assert len(records) >= 2
    assert typed not in spool and typed not in readonly.log() and typed not in primary.log()
    assert {r["actor"] for r in records} == {"(unknown user)"}
    assert {json.dumps(r).count(str(on_primary)) for r in records} == {1}  # the primary's fingerprint


# --- the body limit ---------------------------------------------------------------------------------------


def _raw(server: Server, head: str, parts: Iterable[bytes] = ()) -> tuple[int, str, str]:
    """Send a request's head and some of its body over TLS, then read the answer (without sending the rest):
    (status, content type, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock, \
            server.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in parts:
            tls.sendall(part)
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        return response.status, response.getheader("content-type") or "", response.read().decode()


def _head(path: str, *, length: int | None, content_type: str = "application/json") -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: {content_type}\n{framing}\n"


def _chunks(total: int, size: int = 64 * 1024) -> Iterable[bytes]:
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + b" " * size + b"\r\n"


def test_a_body_over_the_limit_is_refused_before_it_is_read(shared_server: Server) -> None:
    # a declared length over 1 MiB: the answer comes with only 1 KiB of the body sent
    status, ctype, body = _raw(shared_server, _head("/api/v1/auth/login", length=MIB + 1), [b" " * 1024])
    assert status == 413 and ctype.startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large" and "1 MiB" in error["message"], error
    # the same for a page: the page's error shape
    status, ctype, body = _raw(shared_server, _head("/ui/login", length=5 * MIB,
                                                    content_type="application/x-www-form-urlencoded"), [b"a=b"])
    assert status == 413 and ctype.startswith("text/html") and "1 MiB" in body
    assert_strict_html(body)
    # chunked, no length: counted as it comes, refused once past the limit (the rest is never sent)
    status, ctype, body = _raw(shared_server, _head("/api/v1/auth/login", length=None),
                               _chunks(MIB + 64 * 1024))  # its last chunk passes the limit
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    # the import's own limit
    status, _, body = _raw(shared_server, _head("/api/v1/import", length=IMPORT_LIMIT + 1,
                                                content_type="text/csv"), [b"resource,username,password\n"])
    assert status == 413 and "10 MiB" in json.loads(body)["error"]["message"]
    # the server still answers as before
    with shared_server.client() as c:
        assert c.get("/health").status_code == 200
        r = c.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 200


def test_an_import_just_under_its_limit_still_works(shared_server: Server, admin_token: str) -> None:
    name = f"big-import-{secrets.token_hex(4)}"
    columns = 80  # padding the row up to the size, in fields under the csv module's 128 KiB per field
    head = "resource,username,password," + ",".join(f"pad{n}" for n in range(columns)) + "\n"
    row = f"{name},svc,Import-Password-1,"
    width = (IMPORT_LIMIT - 1024 - len(head) - len(row)) // columns
    csv = head + row + ",".join("p" * (width - 1) for _ in range(columns)) + "\n"
    assert MIB < len(csv.encode()) < IMPORT_LIMIT
    with shared_server.client(admin_token) as c:
        r = c.post("/import", content=csv.encode(), headers={"Content-Type": "text/csv"}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["accounts_created"] == 1
