"""Sign-in protections against a real server: lockout, TOTP, sessions and tokens."""

from __future__ import annotations

import time

import pyotp

from tests.support import Server, wait_until


def _login(server: Server, username: str, password: str, totp: str | None = None) -> tuple[int, dict]:
    body = {"username": username, "password": password} | ({"totp": totp} if totp else {})
    with server.client() as c:
        r = c.post("/auth/login", json=body)
    return r.status_code, r.json()


def _add_user(server: Server, token: str, username: str, password: str, role: str = "user") -> str:
    with server.client(token) as c:
        r = c.post("/users", json={"username": username, "password": password, "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_five_wrong_passwords_lock_the_account(shared_server: Server, admin_token: str) -> None:
    user_id = _add_user(shared_server, admin_token, "locky", "Locky-Password-123")
    for _ in range(4):
        status, body = _login(shared_server, "locky", "wrong-password")
        assert status == 401 and body["error"]["code"] == "authentication_failed"
    status, body = _login(shared_server, "locky", "wrong-password")
    assert status == 423 and body["error"]["code"] == "account_locked"
    # locked: even the right password is refused now
    status, body = _login(shared_server, "locky", "Locky-Password-123")
    assert status == 423 and "locked" in body["error"]["message"]
    with shared_server.client(admin_token) as c:
        assert c.get(f"/users/{user_id}").json()["locked_until"] is not None
        locked = c.get("/audit", params={"action": "user_locked", "actor": "locky"}).json()
        assert locked["total"] == 1
        assert c.post(f"/users/{user_id}/unlock").status_code == 204
    status, _ = _login(shared_server, "locky", "Locky-Password-123")
    assert status == 200


def test_unknown_user_and_wrong_password_look_the_same(shared_server: Server) -> None:
    s1, b1 = _login(shared_server, "nobody-here", "whatever-password")
    s2, b2 = _login(shared_server, "admin", "whatever-password")
    assert (s1, b1) == (s2, b2)


def test_totp_user_cannot_log_in_without_a_valid_code(shared_server: Server, admin_token: str) -> None:
    _add_user(shared_server, admin_token, "otpuser", "Otp-User-Password-1")
    token = shared_server.login("otpuser", "Otp-User-Password-1")
    with shared_server.client(token) as c:
        enrol = c.post("/me/totp").json()
        totp = pyotp.TOTP(enrol["secret"])
        assert enrol["otpauth_uri"].startswith("otpauth://totp/")
        assert c.post("/me/totp/confirm", json={"code": "000000" if totp.now() != "000000" else "111111"}
                      ).status_code == 422
        assert c.post("/me/totp/confirm", json={"code": totp.now()}).status_code == 204

    status, body = _login(shared_server, "otpuser", "Otp-User-Password-1")
    assert status == 401 and body["error"]["code"] == "totp_required"
    wrong = "123456" if totp.now() != "123456" else "654321"
    status, body = _login(shared_server, "otpuser", "Otp-User-Password-1", wrong)
    assert status == 401 and body["error"]["code"] == "authentication_failed"

    # a code is accepted once; wait for the next time step so this login does not reuse the enrolment's code
    step = int(time.time() // 30)
    wait_until(lambda: int(time.time() // 30) > step, timeout=35, interval=0.5, what="next TOTP step")
    code = totp.now()
    status, _ = _login(shared_server, "otpuser", "Otp-User-Password-1", code)
    assert status == 200
    status, body = _login(shared_server, "otpuser", "Otp-User-Password-1", code)
    assert status == 401, "a TOTP code must not be accepted twice"


def test_logout_ends_the_session_and_api_tokens_work(shared_server: Server, admin_token: str) -> None:
    token = shared_server.login()
    with shared_server.client(token) as c:
        assert c.get("/me").status_code == 200
        assert c.post("/auth/logout").status_code == 204
        assert c.get("/me").status_code == 401
    with shared_server.client(admin_token) as c:
        created = c.post("/me/tokens", json={"name": "automation"}).json()
        assert created["token"].startswith("sht_")
    with shared_server.client(created["token"]) as c:
        assert c.get("/me").json()["username"] == "admin"
    with shared_server.client(admin_token) as c:
        assert c.delete(f"/me/tokens/{created['id']}").status_code == 204
    with shared_server.client(created["token"]) as c:
        assert c.get("/me").status_code == 401


def test_sharing_limits_what_users_see(shared_server: Server, admin_token: str) -> None:
    user_id = _add_user(shared_server, admin_token, "viewer", "Viewer-Password-123")
    with shared_server.client(admin_token) as c:
        rid = c.post("/resources", json={"name": "shared-box"}).json()["id"]
        aid = c.post(f"/resources/{rid}/accounts", json={"username": "svc", "password": "svc-secret-1"}).json()["id"]
        hidden = c.post("/resources", json={"name": "hidden-box"}).json()["id"]
    viewer = shared_server.login("viewer", "Viewer-Password-123")
    with shared_server.client(viewer) as c:
        assert c.get(f"/accounts/{aid}/password").status_code == 404
        assert c.get(f"/resources/{hidden}").status_code == 404
    with shared_server.client(admin_token) as c:
        assert c.put(f"/resources/{rid}/shares/{user_id}", json={"permission": "view"}).status_code == 204
    with shared_server.client(viewer) as c:
        names = [r["name"] for r in c.get("/resources").json()["items"]]
        assert "shared-box" in names and "hidden-box" not in names
        assert c.get(f"/accounts/{aid}/password").json()["password"] == "svc-secret-1"
        assert c.patch(f"/accounts/{aid}", json={"password": "nope"}).status_code == 403
        assert c.post("/resources", json={"name": "mine"}).status_code == 403
        assert c.get("/audit").status_code == 403
