"""The sign-in pages, driven like a browser without JavaScript (forms, cookies, redirects)."""

from __future__ import annotations

from tests.support import ADMIN_PASSWORD, Server
from tests.ui_client import client, hidden


def test_sign_in_and_out(shared_server: Server) -> None:
    with client(shared_server) as b:
        r = b.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/vault"
        r = b.get("/ui/vault")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=/ui/vault")
        page = b.get("/ui/login")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "script-src" not in csp or "'unsafe-inline'" not in csp
        assert "default-src 'self'" in csp and page.headers["x-frame-options"] == "DENY"
        assert "<script>" not in page.text and "style=" not in page.text
        token = hidden(page.text, "signin_token")  # the pre-session token, also in a cookie

        r = b.post("/ui/login", data={"username": "admin", "password": "", "signin_token": token})
        assert r.status_code == 422 and 'value="admin"' in r.text and "enter your password" in r.text
        r = b.post("/ui/login", data={"username": "admin", "password": "wrong-password-xyz", "signin_token": token})
        assert r.status_code == 401 and "invalid username or password" in r.text
        assert "wrong-password-xyz" not in r.text

        r = b.post("/ui/login", data={"username": "admin", "password": ADMIN_PASSWORD, "next": "/ui/audit",
                                      "signin_token": token})
        assert r.status_code == 303 and r.headers["location"] == "/ui/audit"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
        assert ADMIN_PASSWORD not in r.text

        # an off-site "next" is not followed
        token = hidden(b.get("/ui/login").text, "signin_token")  # signing in ended the last one
        r = b.post("/ui/login", data={"username": "admin", "password": ADMIN_PASSWORD, "next": "//evil.example/",
                                      "signin_token": token})
        assert r.headers["location"] == "/ui/vault"

        page = b.get("/ui/vault").text
        assert b.post("/ui/logout", data={}).status_code == 403  # no CSRF token: refused
        r = b.post("/ui/logout", data={"csrf": hidden(page, "csrf")})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert b.get("/ui/vault").status_code == 303  # signed out
