"""The user administration pages and "My account", driven like a browser without JavaScript."""

from __future__ import annotations

import html
import re
import time
import uuid

import httpx
import pyotp

from tests.support import Server
from tests.ui_client import Browser, assert_strict_html, field_error, input_value, unique


def user_id_of(location: str) -> str:
    m = re.fullmatch(r"/ui/users/([0-9a-f-]{36})\?done=\w+", location)
    assert m, location
    return m.group(1)


def api_login(server: Server, username: str, password: str, totp: str | None = None) -> httpx.Response:
    body = {"username": username, "password": password} | ({"totp": totp} if totp else {})
    with server.client() as c:
        return c.post("/auth/login", json=body)


def shown(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">([^<]*)<', page)
    assert m, f"no #{element_id}"
    return html.unescape(m.group(1))


def next_code(secret: str, used: set[str]) -> str:
    """A code of the secret that was not used yet (each code is accepted once): wait for the next step."""
    totp = pyotp.TOTP(secret)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        code = totp.now()
        if code not in used:
            used.add(code)
            return code
        time.sleep(0.5)
    raise AssertionError("no new TOTP code")


def test_admin_adds_and_manages_a_user(shared_server: Server, admin_token: str) -> None:
    username, password = unique("ops"), "Ops-Password-1234"
    with Browser(shared_server) as b:
        b.sign_in()
        listing = b.get("/ui/users").text
        assert 'id="add-user"' in listing and 'data-username="admin"' in listing
        assert_strict_html(listing)

        # bad input: messages next to the fields, what was typed kept (never the password)
        r = b.post("/ui/users", {"username": "bad name!", "full_name": "Olga Ops", "email": "olga@example.org",
                                 "role": "user", "password": "Bad-Input-Password-1"}, csrf_from="/ui/users/new")
        assert r.status_code == 422 and "letters, digits" in field_error(r.text, "username")
        assert input_value(r.text, "username") == "bad name!" and input_value(r.text, "full_name") == "Olga Ops"
        assert "Bad-Input-Password-1" not in r.text
        r = b.post("/ui/users", {"username": username, "role": "user", "password": "short"},
                   csrf_from="/ui/users/new")
        assert r.status_code == 422 and "at least 12" in field_error(r.text, "password")
        r = b.post("/ui/users", {"username": username, "role": "root", "password": password},
                   csrf_from="/ui/users/new")
        assert r.status_code == 422 and field_error(r.text, "role")
        r = b.post("/ui/users", {"username": username, "role": "user", "password": password})
        assert r.status_code == 403  # no CSRF token
        with shared_server.client(admin_token) as api:
            assert not any(u["username"] == username for u in api.get("/users", params={"limit": 500})
                           .json()["items"])

        r = b.post("/ui/users", {"username": username, "full_name": "Olga Ops", "email": "olga@example.org",
                                 "role": "password_administrator", "password": password}, csrf_from="/ui/users/new")
        uid = user_id_of(r.headers["location"])
        page = b.follow(r).text
        assert shown(page, "user-name") == username and shown(page, "user-role") == "password_administrator"
        assert password not in page and 'id="done"' in page
        user_page = f"/ui/users/{uid}"
        r = b.post("/ui/users", {"username": username, "role": "user", "password": password},
                   csrf_from="/ui/users/new")
        assert r.status_code == 422 and "already exists" in field_error(r.text, "username")

        # change the role
        b.follow(b.post(f"{user_page}/role", {"role": "auditor"}, csrf_from=user_page))
        with shared_server.client(admin_token) as api:
            assert api.get(f"/users/{uid}").json()["role"] == "auditor"

        # disable: the user cannot sign in; enable again
        assert b.post(f"{user_page}/disable").status_code == 403
        assert 'data-confirm="Disable' in b.get(user_page).text
        page = b.follow(b.post(f"{user_page}/disable", csrf_from=user_page)).text
        assert shown(page, "user-status") == "disabled" and 'id="enable-user"' in page
        assert api_login(shared_server, username, password).status_code == 401
        page = b.follow(b.post(f"{user_page}/enable", csrf_from=user_page)).text
        assert shown(page, "user-status") == "active"
        assert api_login(shared_server, username, password).status_code == 200

        # reset the password: bad input stays on the page, then the new one works
        r = b.post(f"{user_page}/password", {"password": "short"}, csrf_from=user_page)
        assert r.status_code == 422 and field_error(r.text, "password")
        b.follow(b.post(f"{user_page}/password", {"password": "Reset-Password-5678"}, csrf_from=user_page))
        assert api_login(shared_server, username, password).status_code == 401
        assert api_login(shared_server, username, "Reset-Password-5678").status_code == 200

        # the user turns TOTP on (over the API here); the administrator resets it
        token = api_login(shared_server, username, "Reset-Password-5678").json()["token"]
        with shared_server.client(token) as c:
            secret = c.post("/me/totp").json()["secret"]
            used: set[str] = set()
            assert c.post("/me/totp/confirm", json={"code": next_code(secret, used)}).status_code == 204
        assert api_login(shared_server, username, "Reset-Password-5678").status_code == 401  # needs the code
        page = b.get(user_page).text
        assert shown(page, "user-totp") == "on" and 'id="reset-totp"' in page
        page = b.follow(b.post(f"{user_page}/totp/reset", csrf_from=user_page)).text
        assert shown(page, "user-totp") == "off"
        assert api_login(shared_server, username, "Reset-Password-5678").status_code == 200

        # an API token for the user: shown once, works, revoked from the page
        r = b.post(f"{user_page}/tokens", {"name": ""}, csrf_from=user_page)
        assert r.status_code == 422 and field_error(r.text, "name") == "name is required"
        r = b.post(f"{user_page}/tokens", {"name": "backup-job", "days": "30"}, csrf_from=user_page)
        assert r.status_code == 200
        api_token = shown(r.text, "new-token")
        with shared_server.client(api_token) as c:
            assert c.get("/me").json()["username"] == username
        page = b.get(user_page).text
        assert api_token not in page and 'data-name="backup-job"' in page
        tid = re.search(r'<tr id="token-([0-9a-f-]{36})" data-name="backup-job"', page)
        assert tid
        b.follow(b.post(f"{user_page}/tokens/{tid.group(1)}/revoke", csrf_from=user_page))
        with shared_server.client(api_token) as c:
            assert c.get("/me").status_code == 401

        # delete
        r = b.post(f"{user_page}/delete", csrf_from=user_page)
        assert r.headers["location"] == "/ui/users?done=deleted"
        b.get(user_page, status=404)


def test_non_administrators_get_403(shared_server: Server, admin_token: str) -> None:
    username, password = unique("plain"), "Plain-Password-1234"
    with shared_server.client(admin_token) as api:
        uid = api.post("/users", json={"username": username, "password": password}).json()["id"]
    with Browser(shared_server) as b:
        b.sign_in(username, password)
        assert 'href="/ui/users"' not in b.get("/ui/vault").text
        for path in ("/ui/users", "/ui/users/new", f"/ui/users/{uid}"):
            assert "only administrators" in b.get(path, status=403).text
        r = b.post("/ui/users", {"username": unique("sneaky"), "role": "administrator",
                                 "password": "Sneaky-Password-1234"}, csrf_from="/ui/me")
        assert r.status_code == 403
        assert b.post(f"/ui/users/{uid}/role", {"role": "administrator"}, csrf_from="/ui/me").status_code == 403
    with shared_server.client(admin_token) as api:
        assert api.get(f"/users/{uid}").json()["role"] == "user"


def test_my_account_totp_enrolment_then_sign_in_needs_the_code(shared_server: Server, admin_token: str) -> None:
    username, password = unique("totp"), "Totp-Password-1234"
    with shared_server.client(admin_token) as api:
        api.post("/users", json={"username": username, "password": password})
    used: set[str] = set()
    with Browser(shared_server) as b:
        b.sign_in(username, password)
        me = b.get("/ui/me").text
        assert shown(me, "me-totp") == "off" and 'id="totp-enrol"' in me
        assert_strict_html(me)
        r = b.post("/ui/me/totp", csrf_from="/ui/me")
        assert r.status_code == 200
        secret = shown(r.text, "totp-secret")
        uri = shown(r.text, "totp-uri")
        assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
        assert secret not in b.get("/ui/me").text  # shown once
        r = b.post("/ui/me/totp/confirm", {"code": "000000" if pyotp.TOTP(secret).now() != "000000" else "111111"},
                   csrf_from="/ui/me")
        assert r.status_code == 422 and "does not match" in field_error(r.text, "code")
        r = b.post("/ui/me/totp/confirm", {"code": next_code(secret, used)}, csrf_from="/ui/me")
        assert r.headers["location"] == "/ui/me?done=totp_enabled"
        assert shown(b.follow(r).text, "me-totp") == "on"

    with Browser(shared_server) as b:
        token = b.signin_token()
        r = b.c.post("/ui/login", data={"username": username, "password": password, **token})
        assert r.status_code == 200 and 'id="totp-form"' in r.text  # the second step
        r = b.c.post("/ui/login/totp", data={"totp": next_code(secret, used), **token})
        assert r.status_code == 303 and r.headers["location"] == "/ui/vault"
        assert shown(b.get("/ui/me").text, "me-username") == username


def test_my_password_and_tokens(shared_server: Server, admin_token: str) -> None:
    username, password, new = unique("self"), "Self-Password-1234", "Self-New-Password-5678"
    with shared_server.client(admin_token) as api:
        api.post("/users", json={"username": username, "password": password})
    with Browser(shared_server) as b:
        b.sign_in(username, password)
        r = b.post("/ui/me/password", {"current_password": "wrong-password-x", "new_password": new,
                                       "confirm_password": new}, csrf_from="/ui/me")
        assert r.status_code == 422 and "wrong password" in field_error(r.text, "current_password")
        assert new not in r.text and "wrong-password-x" not in r.text
        r = b.post("/ui/me/password", {"current_password": password, "new_password": new,
                                       "confirm_password": new + "x"}, csrf_from="/ui/me")
        assert r.status_code == 422 and field_error(r.text, "confirm_password") == "the two new passwords differ"

        # a personal token: shown once, then only its name
        r = b.post("/ui/me/tokens", {"name": "laptop", "days": "0"}, csrf_from="/ui/me")
        assert r.status_code == 422 and field_error(r.text, "days") and input_value(r.text, "name") == "laptop"
        r = b.post("/ui/me/tokens", {"name": "laptop"}, csrf_from="/ui/me")
        token = shown(r.text, "new-token")
        with shared_server.client(token) as c:
            assert c.get("/me").json()["username"] == username
        page = b.get("/ui/me").text
        assert token not in page and 'data-name="laptop"' in page
        tid = re.search(r'<tr id="token-([0-9a-f-]{36})" data-name="laptop"', page)
        assert tid
        assert b.post(f"/ui/me/tokens/{tid.group(1)}/revoke").status_code == 403
        r = b.post(f"/ui/me/tokens/{tid.group(1)}/revoke", csrf_from="/ui/me")
        assert r.headers["location"] == "/ui/me?done=revoked#tokens"
        with shared_server.client(token) as c:
            assert c.get("/me").status_code == 401

        # the change ends every session: sign in again with the new password
        r = b.post("/ui/me/password", {"current_password": password, "new_password": new, "confirm_password": new},
                   csrf_from="/ui/me")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        assert b.c.get("/ui/me").status_code == 303
    assert api_login(shared_server, username, password).status_code == 401
    assert api_login(shared_server, username, new).status_code == 200
    assert uuid.UUID(api_login(shared_server, username, new).json()["user"]["id"])
