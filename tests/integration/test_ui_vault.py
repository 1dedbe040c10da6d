"""The vault pages, driven like a browser without JavaScript: GET a form, send it back with its CSRF
token, follow the 303s, keep the cookies."""

from __future__ import annotations

import html
import re
import string
import uuid

from tests.support import Server, seed_account, wait_until
from tests.ui_client import Browser, assert_strict_html, field_error, input_value, unique


def resource_id_of(location: str) -> str:
    m = re.fullmatch(r"/ui/vault/resources/([0-9a-f-]{36})", location)
    assert m, location
    return m.group(1)


def account_id_of(page: str, username: str) -> str:
    m = re.search(rf'<tr id="account-([0-9a-f-]{{36}})" data-username="{re.escape(username)}"', page)
    assert m, f"no account row of {username}"
    return m.group(1)


def test_resource_account_reveal_edit_delete(shared_server: Server, admin_token: str) -> None:
    name = unique("ui-db")
    secret = "Ui-Secret-" + uuid.uuid4().hex
    with Browser(shared_server) as b:
        b.sign_in()
        listing = b.get("/ui/vault").text
        assert 'type="search"' in listing and "data-search" in listing and 'id="q"' in listing
        assert 'id="add-resource"' in listing
        assert_strict_html(listing)

        # bad input: the form comes back with a message next to the field and what was typed
        r = b.post("/ui/vault/resources", {"name": "", "address": "db.example.internal"},
                   csrf_from="/ui/vault/resources/new")
        assert r.status_code == 422
        assert field_error(r.text, "name") == "name is required"
        assert input_value(r.text, "address") == "db.example.internal"
        long_name = "x" * 201
        r = b.post("/ui/vault/resources", {"name": long_name, "tags": "prod, linux"},
                   csrf_from="/ui/vault/resources/new")
        assert r.status_code == 422 and "at most 200 characters" in field_error(r.text, "name")
        assert input_value(r.text, "name") == long_name and input_value(r.text, "tags") == "prod, linux"

        # created: post/redirect/get to the resource's page
        r = b.post("/ui/vault/resources", {"name": name, "type": "database", "address": "db.example.internal",
                                           "tags": "prod, ui", "description": "made by the page test"},
                   csrf_from="/ui/vault/resources/new")
        rid = resource_id_of(r.headers["location"])
        page = b.follow(r).text
        assert name in page and "db.example.internal" in page and 'id="add-account"' in page
        assert_strict_html(page)
        # the same name again: a conflict, shown next to the name
        r = b.post("/ui/vault/resources", {"name": name}, csrf_from="/ui/vault/resources/new")
        assert r.status_code == 422 and "already exists" in field_error(r.text, "name")

        # search
        assert f"/ui/vault/resources/{rid}" in b.get(f"/ui/vault?q={name}").text
        assert f"/ui/vault/resources/{rid}" not in b.get(f"/ui/vault?q=no-such-{uuid.uuid4().hex}").text

        # the generator fills the password field of the account form
        new_account = f"/ui/vault/resources/{rid}/accounts/new"
        form = b.get(new_account).text
        assert 'id="generate-password"' in form and f'formaction="/ui/vault/resources/{rid}/accounts/generate"' in form
        r = b.post(f"/ui/vault/resources/{rid}/accounts/generate",
                   {"username": "root", "policy": "1", "length": "24", "lowercase": "1", "uppercase": "1",
                    "digits": "1"}, csrf_from=new_account)
        assert r.status_code == 200
        generated = input_value(r.text, "password")
        assert len(generated) == 24 and not set(generated) - set(string.ascii_letters + string.digits)
        assert input_value(r.text, "username") == "root"
        assert re.search(r'id="f-symbols" value="1"\s*>', r.text)  # unchecked now
        r = b.post(f"/ui/vault/resources/{rid}/accounts/generate", {"policy": "1", "length": "4"},
                   csrf_from=new_account)
        assert r.status_code == 422 and field_error(r.text, "length")

        # an account: bad input keeps the username but never the password
        r = b.post(f"/ui/vault/resources/{rid}/accounts", {"username": "root", "password": ""},
                   csrf_from=new_account)
        assert r.status_code == 422 and field_error(r.text, "password") == "password is required"
        r = b.post(f"/ui/vault/resources/{rid}/accounts", {"username": "", "password": secret},
                   csrf_from=new_account)
        assert r.status_code == 422 and field_error(r.text, "username") and secret not in r.text
        r = b.post(f"/ui/vault/resources/{rid}/accounts", {"username": "root", "password": secret,
                                                           "notes": "console only"}, csrf_from=new_account)
        assert r.headers["location"] == f"/ui/vault/resources/{rid}"
        page = b.follow(r).text
        aid = account_id_of(page, "root")
        assert secret not in page and f'id="reveal-{aid}"' in page

        # reveal: a POST without the CSRF token is refused and reveals nothing
        r = b.post(f"/ui/vault/accounts/{aid}/reveal")
        assert r.status_code == 403 and secret not in r.text
        r = b.post(f"/ui/vault/accounts/{aid}/reveal", csrf_from=f"/ui/vault/resources/{rid}")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        m = re.search(r'<div id="revealed" data-hide-after="20"[^>]*>\s*<span class="secret" data-secret '
                      r'id="revealed-password">([^<]*)</span>', r.text)
        assert m and html.unescape(m.group(1)) == secret
        assert 'data-copy-target="#revealed-password" hidden' in r.text and "console only" in r.text
        assert secret not in str(r.url)
        assert_strict_html(r.text)

        # ... audited like the API's retrieval
        with shared_server.client(admin_token) as api:
            records = api.get("/audit", params={"action": "password_retrieved", "limit": 500}).json()["items"]
        assert any(rec["target_id"] == aid and rec["actor"] == "admin" for rec in records)

        # no other page carries it
        for path in (f"/ui/vault/resources/{rid}", "/ui/vault", f"/ui/vault?q={name}",
                     f"/ui/vault/accounts/{aid}/edit", f"/ui/vault/accounts/{aid}/history"):
            assert secret not in b.get(path).text, path

        # edit the account (prefilled) with a new password: the old one goes to the history
        edit = b.get(f"/ui/vault/accounts/{aid}/edit").text
        assert input_value(edit, "username") == "root"
        r = b.post(f"/ui/vault/accounts/{aid}/edit", {"username": "root", "password": "Second-" + secret},
                   csrf_from=f"/ui/vault/accounts/{aid}/edit")
        assert r.headers["location"] == f"/ui/vault/resources/{rid}"
        history = b.get(f"/ui/vault/accounts/{aid}/history").text
        assert 'id="reveal-history"' in history and secret not in history
        r = b.post(f"/ui/vault/accounts/{aid}/history/reveal", csrf_from=f"/ui/vault/accounts/{aid}/history")
        assert r.status_code == 200 and secret in r.text and 'data-hide-after="20"' in r.text
        r = b.post(f"/ui/vault/accounts/{aid}/reveal", csrf_from=f"/ui/vault/resources/{rid}")
        assert "Second-" + secret in r.text

        # edit the resource: prefilled, bad input kept, then saved
        edit_path = f"/ui/vault/resources/{rid}/edit"
        edit = b.get(edit_path).text
        assert input_value(edit, "name") == name and input_value(edit, "tags") == "prod, ui"
        r = b.post(edit_path, {"name": "  ", "address": "new.example.internal"}, csrf_from=edit_path)
        assert r.status_code == 422 and field_error(r.text, "name")
        assert input_value(r.text, "address") == "new.example.internal"
        r = b.post(edit_path, {"name": name, "address": "new.example.internal", "tags": "prod"}, csrf_from=edit_path)
        page = b.follow(r).text
        assert "new.example.internal" in page

        # deletes: refused without the CSRF token, nothing changes
        assert b.post(f"/ui/vault/accounts/{aid}/delete").status_code == 403
        assert b.post(f"/ui/vault/resources/{rid}/delete").status_code == 403
        with shared_server.client(admin_token) as api:
            assert api.get(f"/accounts/{aid}").status_code == 200
            assert api.get(f"/resources/{rid}").status_code == 200
        assert 'data-confirm="Delete the account root' in page
        r = b.post(f"/ui/vault/accounts/{aid}/delete", csrf_from=f"/ui/vault/resources/{rid}")
        assert r.headers["location"] == f"/ui/vault/resources/{rid}"
        r = b.post(f"/ui/vault/resources/{rid}/delete", csrf_from=f"/ui/vault/resources/{rid}")
        assert r.headers["location"] == "/ui/vault"
        with shared_server.client(admin_token) as api:
            assert api.get(f"/accounts/{aid}").status_code == 404
            assert api.get(f"/resources/{rid}").status_code == 404
        assert b.get(f"/ui/vault/resources/{rid}", status=404).text.count("resource not found") == 1


def test_a_forged_post_changes_nothing(shared_server: Server, admin_token: str) -> None:
    name = unique("ui-forged")
    with Browser(shared_server) as b:
        b.sign_in()
        r = b.post("/ui/vault/resources", {"name": name})
        assert r.status_code == 403 and "CSRF" in r.text
        r = b.post("/ui/vault/resources", {"name": name, "csrf": "not-the-token"})
        assert r.status_code == 403
    with shared_server.client(admin_token) as api:
        assert api.get("/resources", params={"q": name}).json()["total"] == 0


def test_share_with_a_user_who_may_only_view(shared_server: Server, admin_token: str) -> None:
    viewer, password = unique("viewer"), "Viewer-Password-1234"
    name = unique("ui-shared")
    with shared_server.client(admin_token) as api:
        assert api.post("/users", json={"username": viewer, "password": password}).status_code == 201
    rid, aid = seed_account(shared_server, admin_token, "Shared-Secret-1", resource=name)
    page_path = f"/ui/vault/resources/{rid}"
    with Browser(shared_server) as admin:
        admin.sign_in()
        r = admin.post(f"{page_path}/shares", {"username": "nobody-" + uuid.uuid4().hex[:6], "permission": "view"},
                       csrf_from=page_path)
        assert r.status_code == 422 and "no user named" in field_error(r.text, "username")
        r = admin.post(f"{page_path}/shares", {"username": viewer, "permission": "view"}, csrf_from=page_path)
        assert r.headers["location"] == f"{page_path}#sharing"
        assert f'data-username="{viewer}"' in admin.get(page_path).text

    with Browser(shared_server) as b:
        b.sign_in(viewer, password)
        assert f"/ui/vault/resources/{rid}" in b.get("/ui/vault").text
        assert 'id="add-resource"' not in b.get("/ui/vault").text
        page = b.get(page_path).text
        assert f'id="reveal-{aid}"' in page
        for control in ('id="edit-resource"', 'id="delete-resource"', 'id="add-account"', f'id="edit-{aid}"',
                        'id="share-form"'):
            assert control not in page, control
        r = b.post(f"/ui/vault/accounts/{aid}/reveal", csrf_from=page_path)
        assert r.status_code == 200 and "Shared-Secret-1" in r.text
        for form in ("/ui/vault/resources/new", f"{page_path}/edit", f"{page_path}/accounts/new",
                     f"/ui/vault/accounts/{aid}/edit"):
            b.get(form, status=403)
        r = b.post(f"/ui/vault/accounts/{aid}/delete", csrf_from=page_path)
        assert r.status_code == 403
        b.get(f"/ui/vault/accounts/{aid}/history", status=403)  # history needs modify, as in the API


def test_readonly_server_reveals_but_offers_no_changes(primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    rid, aid = seed_account(primary, primary.login(), "Emergency-Secret-1", resource="ui-emergency")
    primary.stop()  # no primary and no secondary: the read-only server serves passwords itself

    def emergency() -> bool:
        with readonly.client() as c:
            return c.get("/me").status_code != 307

    wait_until(emergency, timeout=30, what="read-only emergency mode")
    with Browser(readonly) as b:
        b.sign_in()
        wait_until(lambda: f"/ui/vault/resources/{rid}" in b.get("/ui/vault").text, timeout=30,
                   what="the replica to have the resource")
        listing = b.get("/ui/vault").text
        assert 'id="mode-banner"' in listing and 'id="add-resource"' not in listing
        page = b.get(f"/ui/vault/resources/{rid}").text
        for control in ('id="edit-resource"', 'id="delete-resource"', 'id="add-account"', f'id="edit-{aid}"',
                        f'id="delete-{aid}"', 'id="share-form"'):
            assert control not in page, control
        r = b.post(f"/ui/vault/accounts/{aid}/reveal", csrf_from=f"/ui/vault/resources/{rid}")
        assert r.status_code == 200 and "Emergency-Secret-1" in r.text
        # a write sent anyway is refused with the error page
        r = b.post(f"/ui/vault/resources/{rid}/delete", csrf_from=f"/ui/vault/resources/{rid}")
        assert r.status_code == 503 and "read-only" in r.text
