"""The Vault KV version 2 view of the vault, as tables: paths, versions from a password history, who is
told "permission denied" and who "not found", listings, tokens (policies, lifetimes, child tokens) — and
the web layer's conversion of Safehold's errors into Vault's shape."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from safehold import errors as e
from safehold.config import HttpSection
from safehold.domain import Permission, UserRole
from safehold.services import vault_kv as kv
from safehold.web.api.vault_kv import error_for

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# --- paths ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "resource", "account"), [
    ("db01/root", "db01", "root"),
    ("prod/db01/root", "prod/db01", "root"),          # a resource named with a slash
    ("/db01//root/", "db01", "root"),                 # empty segments count for nothing
    ("db%2001/Administrator", "db 01", "Administrator"),
    ("db01/DOMAIN%5Csvc", "db01", "DOMAIN\\svc"),
    ("db01/a%2Fb", "db01", "a/b"),                    # a slash inside a name, sent encoded
    ("%C3%84rzte/root", "Ärzte", "root"),
])
def test_a_path_names_a_resource_and_its_account(raw: str, resource: str, account: str) -> None:
    assert kv.secret_path(raw) == kv.SecretPath(resource, account)


@pytest.mark.parametrize("raw", ["", "/", "db01", "db01/", "x" * 201 + "/root", "db01/" + "y" * 201])
def test_a_path_that_names_no_account_is_not_found(raw: str) -> None:
    with pytest.raises(e.NotFound) as caught:
        kv.secret_path(raw)
    assert "<resource>/<account>" in (caught.value.hint or "")


@pytest.mark.parametrize(("raw", "prefix"), [("", ""), ("/", ""), ("/prod", "prod/"), ("/prod/db01/", "prod/db01/")])
def test_a_listing_asks_for_a_folder(raw: str, prefix: str) -> None:
    assert kv.list_prefix(raw) == prefix


RESOURCES = ["db01", "DB02", "prod/db01", "prod/web", "prodigy"]


@pytest.mark.parametrize(("prefix", "usernames", "keys"), [
    ("", [], ["DB02/", "db01/", "prod/", "prodigy/"]),            # resources are folders
    ("prod/", [], ["db01/", "web/"]),                              # "prodigy" does not begin with "prod/"
    ("db01/", ["root", "admin"], ["admin", "root"]),               # the accounts of the resource named
    ("prod/", ["svc"], ["db01/", "svc", "web/"]),                  # a resource "prod" beside "prod/…" ones
    ("PROD/", [], ["db01/", "web/"]),                              # names compare without case
    ("nothing/", [], []),
])
def test_a_listing_shows_one_level(prefix: str, usernames: list[str], keys: list[str]) -> None:
    assert kv.list_keys(prefix, RESOURCES, usernames) == keys


@pytest.mark.parametrize(("path", "inside"), [
    ("safehold/db01/root", True), ("safehold", True), ("safehold/", True), ("/safehold/x", True),
    ("safeholdx/db01", False), ("secret/db01", False), ("", False)])
def test_the_preflight_knows_its_mount(path: str, inside: bool) -> None:
    assert kv.in_mount(path, "safehold") is inside


@pytest.mark.parametrize(("value", "flag"), [(None, False), ("true", True), ("1", True), ("T", True),
                                             ("false", False), ("yes", False), ("", False)])
def test_the_list_flag_reads_as_go_reads_a_bool(value: str | None, flag: bool) -> None:
    assert kv.truthy(value) is flag


# --- versions -------------------------------------------------------------------------------------

def test_versions_are_the_password_history_oldest_first() -> None:
    # history entries as storage lists them (newest first); each password was set when the one before retired
    retired = [("h3", at(30)), ("h1", at(10)), ("h2", at(20))]
    got = kv.versions(T0, at(30), retired)
    assert got == (kv.Version(1, T0, "h1"), kv.Version(2, at(10), "h2"), kv.Version(3, at(20), "h3"),
                   kv.Version(4, at(30), None))


def test_an_account_never_changed_has_one_version() -> None:
    assert kv.versions(T0, T0, []) == (kv.Version(1, T0, None),)


@pytest.mark.parametrize(("text", "number"), [(None, None), ("", None), ("0", None), ("2", 2), (" 3 ", 3)])
def test_version_query(text: str | None, number: int | None) -> None:
    assert kv.parse_version(text) == number


@pytest.mark.parametrize("text", ["-1", "two", "1.5"])
def test_a_bad_version_is_a_bad_request(text: str) -> None:
    with pytest.raises(e.InvalidInput):
        kv.parse_version(text)


def test_picking_a_version() -> None:
    known = kv.versions(T0, at(10), [("h1", at(10))])
    assert kv.pick_version(known, None).entry_id is None and kv.pick_version(known, None).number == 2
    assert kv.pick_version(known, 1).entry_id == "h1"
    with pytest.raises(e.NotFound, match="no version 3; its current version is 2"):
        kv.pick_version(known, 3)


# --- access ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("visible", "is_admin", "account", "outcome"), [
    (True, False, True, None),
    (True, False, False, e.NotFound),          # inside a resource the caller sees: not found
    (False, False, False, e.PermissionDenied),  # a resource not shared, or none at all: the same denial
    (True, True, True, None),
    (False, True, False, e.NotFound),          # an administrator sees every resource: there is none
    (True, True, False, e.NotFound),
])
def test_denied_or_not_found_in_vaults_order(visible: bool, is_admin: bool, account: bool,
                                             outcome: type[Exception] | None) -> None:
    failure = kv.access_failure(visible=visible, is_admin=is_admin, account=account)
    assert (None if failure is None else type(failure)) is outcome


@pytest.mark.parametrize(("permission", "current", "allowed"), [
    (Permission.VIEW, True, True), (Permission.MODIFY, True, True),
    (Permission.MODIFY, False, True), (Permission.VIEW, False, False)])  # history needs modify, as in the REST API
def test_older_versions_need_modify(permission: Permission, current: bool, allowed: bool) -> None:
    if allowed:
        kv.check_version_access(permission, current=current)
    else:
        with pytest.raises(e.PermissionDenied):
            kv.check_version_access(permission, current=current)


# --- what a secret shows --------------------------------------------------------------------------

LOC = kv.Located("a-1", "r-1", "db01", "root", "database", "10.0.0.5", ("prod", "eu"), Permission.VIEW,
                 kv.versions(T0, at(10), [("h1", at(10))]))


def test_a_secret_in_vaults_kv2_shape() -> None:
    assert kv.secret_data(LOC, "pw-2", None) == {"username": "root", "password": "pw-2", "resource": "db01",
                                                 "address": "10.0.0.5", "type": "database"}
    assert kv.secret_data(LOC, "pw-2", "console only")["notes"] == "console only"
    meta = kv.version_metadata(LOC, LOC.versions[0])
    assert meta == {"created_time": "2025-01-02T03:04:05.678901Z", "deletion_time": "", "destroyed": False,
                    "version": 1, "custom_metadata": {"resource_id": "r-1", "account_id": "a-1", "type": "database",
                                                      "address": "10.0.0.5", "tags": "prod,eu"}}
    assert all(isinstance(v, str) for v in meta["custom_metadata"].values())  # External Secrets reads strings


def test_a_secrets_metadata_lists_every_version() -> None:
    doc = kv.metadata_document(LOC)
    assert doc["current_version"] == 2 and doc["oldest_version"] == 0
    assert doc["versions"] == {"1": {"created_time": "2025-01-02T03:04:05.678901Z", "deletion_time": "",
                                     "destroyed": False},
                               "2": {"created_time": "2025-01-02T03:14:05.678901Z", "deletion_time": "",
                                     "destroyed": False}}
    assert doc["created_time"] < doc["updated_time"]


def test_the_mount_is_kv_version_2() -> None:
    info = kv.mount_info("safehold")
    assert info["type"] == "kv" and info["options"] == {"version": "2"}
    assert info["uuid"] == kv.mount_info("safehold")["uuid"] != kv.mount_info("other")["uuid"]


def test_times_are_utc_with_z() -> None:
    assert kv.rfc3339(dt.datetime(2025, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == \
        "2025-01-02T03:04:05.000000Z"


# --- tokens ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("role", "policies"), [
    (UserRole.ADMINISTRATOR, ["default", "safehold-administrator"]),
    (UserRole.PASSWORD_ADMINISTRATOR, ["default", "safehold-password-administrator"]),
    (UserRole.AUDITOR, ["default", "safehold-auditor"]),
    (UserRole.USER, ["default", "safehold-user"]),
])
def test_policies_name_the_role_never_root(role: UserRole, policies: list[str]) -> None:
    assert kv.policies_for(role) == policies


def test_lookup_self_says_what_external_secrets_reads() -> None:
    info = kv.token_info(token="sht_x", token_id="t-1", name="ci", created_at=T0, expires_at=at(60),
                         username="deploy", role=UserRole.USER, now=at(10))
    assert info["type"] == "service" and info["ttl"] == 50 * 60 and info["creation_ttl"] == 3600
    assert info["expire_time"] == "2025-01-02T04:04:05.678901Z" and info["id"] == "sht_x"
    assert info["accessor"] == "t-1" and info["policies"] == ["default", "safehold-user"]
    json.dumps(info)  # plain JSON
    forever = kv.token_info(token="sht_x", token_id="t-1", name="ci", created_at=T0, expires_at=None,
                            username="deploy", role=UserRole.USER, now=at(10))
    assert forever["ttl"] == 0 and forever["expire_time"] is None  # as Vault says of a token that never expires
    assert kv.ttl_left(at(70), at(60)) == 0


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("", None), (0, None), ("0", None), ("0s", None),
    (1200, 1200), ("1200", 1200), ("1200s", 1200), ("20m", 1200), ("1h30m", 5400), ("2d", 172800),
    ("1.5h", 5400), ("500ms", 1), (90.5, 90),
])
def test_durations_as_vault_reads_them(value: object, seconds: int | None) -> None:
    got = kv.parse_ttl(value, "ttl")
    assert (None if got is None else int(got.total_seconds())) == seconds


@pytest.mark.parametrize("value", ["soon", "10x", "h", "1h 30m", -5, True, ["1h"], "3651d"])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(e.InvalidInput):
        kv.parse_ttl(value, "ttl")


PARENT = ["default", "safehold-user"]


def test_terraforms_child_token_request() -> None:
    # the body Terraform's provider sends (Go's TokenCreateRequest: display_name, num_uses, type and
    # entity_alias always present)
    body = {"ttl": "1200s", "explicit_max_ttl": "1200s", "display_name": "terraform", "num_uses": 0,
            "renewable": False, "type": "", "entity_alias": ""}
    assert kv.child_token_request(body, PARENT) == kv.ChildToken("terraform", dt.timedelta(seconds=1200))
    assert kv.child_token_request({}, PARENT) == kv.ChildToken("token", None)
    shorter = kv.child_token_request({"ttl": "2h", "explicit_max_ttl": "30m"}, PARENT)
    assert shorter.ttl == dt.timedelta(minutes=30)
    assert kv.child_token_request({"policies": "default"}, PARENT).ttl is None


@pytest.mark.parametrize(("body", "field"), [
    ({"policies": ["root"]}, "policies"), ({"policies": ["default", "safehold-administrator"]}, "policies"),
    ({"policies": 5}, "policies"), ({"num_uses": 3}, "num_uses"), ({"type": "batch"}, "type"),
    ({"period": "1h"}, "period"), ({"id": "my-own-token"}, "id"), ({"entity_alias": "x"}, "entity_alias"),
    ({"ttl": "forever"}, "ttl"),
])
def test_a_child_token_no_wider_than_its_parent(body: dict[str, object], field: str) -> None:
    with pytest.raises(e.InvalidInput) as caught:
        kv.child_token_request(body, PARENT)
    assert caught.value.field == field
    assert "my-own-token" not in caught.value.message  # what was sent is never echoed


def test_a_child_expires_with_its_parent_at_the_latest() -> None:
    assert kv.child_expiry(T0, dt.timedelta(minutes=20), None) == at(20)
    assert kv.child_expiry(T0, None, None) == T0 + kv.DEFAULT_TTL
    assert kv.child_expiry(T0, dt.timedelta(hours=5), at(60)) == at(60)
    assert kv.child_expiry(T0, None, at(60)) == at(60)
    assert len(kv.child_name("x" * 50, "y" * 100)) == 100


# --- the web layer's errors -----------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "status", "starts"), [
    (e.AuthenticationFailed("invalid or expired token"), 403, "permission denied: invalid or expired token"),
    (e.PermissionDenied(kv.DENIED), 403, "permission denied: no resource"),
    (e.NotFound("no secret at that path", hint="a secret's path is <resource>/<account>"), 404, "no secret at that"),
    (e.InvalidInput("version must be a whole number", field="version"), 400, "version must"),
    (e.Unavailable("the database is unreachable"), 503, "the database"),
    (e.AuditUnavailable("the audit record could not be written"), 503, "the audit"),
])
def test_errors_in_vaults_shape(exc: e.SafeholdError, status: int, starts: str) -> None:
    response = error_for(exc)
    body = json.loads(bytes(response.body))
    assert response.status_code == status and list(body) == ["errors"] and len(body["errors"]) == 1
    assert body["errors"][0].startswith(starts)
    assert type(exc).__name__ not in body["errors"][0]
    assert response.headers["content-type"] == "application/json"  # hvac reads errors only then


def test_the_mount_is_a_setting_of_one_path_segment() -> None:
    assert HttpSection().vault_mount == "safehold"
    assert HttpSection(vault_mount="kv-2.prod").vault_mount == "kv-2.prod"
    for bad in ("", "a/b", "-x", "x" * 65, "sp ace"):
        with pytest.raises(ValueError):
            HttpSection(vault_mount=bad)
