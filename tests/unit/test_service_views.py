"""The services' result views: built from rows field by field, no secret or version in an API body."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from fastapi import Response

from safehold.domain import Permission, UserRole
from safehold.services.views import (
    AccountView,
    HistoryEntry,
    ResourceDetailView,
    ResourceListItem,
    RevealedPassword,
    ShareView,
    UserView,
)
from safehold.web.api.vault import _tagged
from safehold.web.schemas import AccountOut, ResourceDetail, ResourceOut, ShareOut, UserOut

AT = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
RESOURCE = SimpleNamespace(id="r1", name="db1", type="server", address="10.0.0.1", description="", tags=["prod"],
                           owner_id="u1", created_at=AT, updated_at=AT, version="4711")
ACCOUNT = SimpleNamespace(id="a1", resource_id="r1", username="root", created_at=AT, updated_at=AT,
                          password_changed_at=AT, version="815", resource_name="db1", password_enc=b"sealed",
                          notes_enc=b"sealed", owner_id="u1", share_permission=None)


def test_a_resource_body_is_as_before_and_its_version_goes_to_the_etag() -> None:
    response = Response()
    body = _tagged(response, ResourceDetailView.with_accounts(RESOURCE, Permission.MODIFY, [ACCOUNT]), ResourceDetail)
    assert response.headers["ETag"] == '"4711"'
    assert body.model_dump(mode="json") == {
        "id": "r1", "name": "db1", "type": "server", "address": "10.0.0.1", "description": "", "tags": ["prod"],
        "owner_id": "u1", "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:05Z",
        "permission": "modify",
        "accounts": [{"id": "a1", "username": "root", "password_changed_at": "2025-01-02T03:04:05Z"}],
    }


def test_a_listed_resource_has_no_permission() -> None:
    listed = ResourceOut.model_validate(ResourceListItem.of(RESOURCE), from_attributes=True)
    assert listed.permission is None and listed.tags == ["prod"]


def test_an_account_view_leaves_its_ciphertexts_behind() -> None:
    response = Response()
    view = AccountView.with_resource(ACCOUNT, ACCOUNT.resource_name, Permission.VIEW)
    assert not hasattr(view, "password_enc") and not hasattr(view, "notes_enc")
    body = _tagged(response, view, AccountOut).model_dump(mode="json")
    assert response.headers["ETag"] == '"815"'
    assert "version" not in body and body["resource_name"] == "db1" and body["permission"] == "view"


def test_a_share_body_and_etag() -> None:
    row = SimpleNamespace(user_id="u2", username="ann", permission="view", created_at=AT, version="9")
    response = Response()
    body = _tagged(response, ShareView.of(row), ShareOut).model_dump(mode="json")
    assert response.headers["ETag"] == '"9"'
    assert body == {"user_id": "u2", "username": "ann", "permission": "view", "created_at": "2025-01-02T03:04:05Z"}


def test_a_revealed_password_is_not_in_a_repr() -> None:
    shown = repr([RevealedPassword("a1", "root", "s3cret!", "pin 1234"), HistoryEntry("h1", "ann", AT, "0ld-pw")])
    assert "s3cret!" not in shown and "pin 1234" not in shown and "0ld-pw" not in shown


@pytest.mark.parametrize(("enabled", "secret", "pending"), [
    (False, None, False),
    (False, b"sealed", True),   # enrolment begun, not yet confirmed
    (True, b"sealed", False),
])
def test_a_user_view_says_whether_totp_enrolment_is_pending(enabled: bool, secret: bytes | None,
                                                            pending: bool) -> None:
    row = SimpleNamespace(id="u1", username="ann", full_name="Ann", email="", role="auditor", totp_enabled=enabled,
                          totp_secret_enc=secret, password_hash="$argon2id$...", disabled=False, locked_until=None,
                          created_at=AT, updated_at=AT, version="3")
    view = UserView.of(row)
    assert view.totp_pending is pending and view.role is UserRole.AUDITOR
    assert not hasattr(view, "password_hash") and not hasattr(view, "totp_secret_enc")
    assert UserOut.model_validate(view, from_attributes=True).username == "ann"
