"""No lost updates, as real processes on 127.0.0.1: a primary and a secondary serving one database.

The stories:

* Clients race PATCHes of different fields of one resource (and of one account, one user) through
  both servers at once; every change a server acknowledged is in the final row.
* Clients race password changes of one account through both servers; the history holds every old
  password once, in the order the changes were made, and no password was retired before it was set.
* A client that read a row's ``ETag`` changes it with ``If-Match``: accepted while the row is
  unchanged (with a new ``ETag``), 412 ``precondition_failed`` with nothing written once another
  client changed it.  Both servers give a row the same ``ETag``.

Every process is stopped by the fixture's finalizer even when a test fails.
"""

from __future__ import annotations

import datetime as dt
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Server, make_secondary, running_server

ROUNDS = 6
RESOURCE_FIELDS = ("name", "type", "address", "description", "tags")  # 6 rounds x 5 fields = 30 changes
PASSWORD_CHANGES = 12


@dataclass(frozen=True)
class Pair:
    primary: Server
    secondary: Server
    tokens: dict[str, str]  # the administrator's session on each server, by server name

    @property
    def servers(self) -> list[Server]:
        return [self.primary, self.secondary]

    def client(self, n: int) -> httpx.Client:
        """The n-th client of a race: even ones talk to the primary, odd ones to the secondary."""
        server = self.servers[n % 2]
        return server.client(self.tokens[server.data_dir.name])


@pytest.fixture(scope="module")
def pair(server_root: Path) -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(dir=server_root, prefix="updates-"))
    with running_server(root / "primary") as primary:
        secondary = make_secondary(primary, root / "secondary", name="secondary")
        try:
            primary.stop()  # a restart makes the standalone server serve as the primary of its new secondary
            primary.start()
            secondary.start()
            yield Pair(primary, secondary, {"primary": primary.login(), "secondary": secondary.login()})
        finally:
            secondary.cleanup()


def race(client: Callable[[int], httpx.Client], requests: list[Callable[[httpx.Client], httpx.Response]],
         ) -> list[httpx.Response]:
    """Send the requests at once, from one thread each, the n-th with ``client(n)`` (``Pair.client``:
    alternating primary and secondary); their responses in the same order."""
    clients = [client(n) for n in range(len(requests))]
    start = threading.Barrier(len(requests))
    responses: list[httpx.Response | BaseException | None] = [None] * len(requests)

    def run(n: int) -> None:
        try:
            start.wait(timeout=30)
            responses[n] = requests[n](clients[n])
        except BaseException as exc:  # noqa: BLE001 - reported below, with the others
            responses[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(requests))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for c in clients:
            c.close()
    failed = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not failed, failed
    return [r for r in responses if isinstance(r, httpx.Response)]


def etag(r: httpx.Response) -> str:
    value = r.headers.get("ETag")
    assert value and value.startswith('"') and value.endswith('"'), f"no strong ETag: {r.headers}"
    return value


def ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


# --- concurrent changes of different fields ---------------------------------------------------------

def _resource_value(field: str, round_: int) -> Any:
    text = f"{field}-{round_}-{secrets.token_hex(3)}"
    return [text] if field == "tags" else text


def test_concurrent_patches_of_different_fields_through_both_servers_are_all_kept(pair: Pair) -> None:
    with pair.client(0) as c:
        r = c.post("/resources", json={"name": f"race-{secrets.token_hex(4)}"})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

    acknowledged, lost = 0, set()
    for round_ in range(ROUNDS):
        wanted = {f: _resource_value(f, round_) for f in RESOURCE_FIELDS}
        responses = race(pair.client, [
            (lambda c, f=f, v=v: c.patch(f"/resources/{rid}", json={f: v})) for f, v in wanted.items()
        ])
        assert [r.status_code for r in responses] == [200] * len(wanted), [r.text for r in responses]
        acknowledged += len(responses)
        for server in pair.servers:
            with server.client(pair.tokens[server.data_dir.name]) as c:
                final = c.get(f"/resources/{rid}").json()
            lost |= {(round_, f) for f, v in wanted.items() if final[f] != v}

    assert acknowledged == ROUNDS * len(RESOURCE_FIELDS) == 30
    assert not lost, f"{len(lost)} of 30 acknowledged changes lost (round, field): {sorted(lost)}"


def test_concurrent_patches_of_an_account_and_a_user_keep_every_field(pair: Pair) -> None:
    with pair.client(0) as c:
        r = c.post("/resources", json={"name": f"race-account-{secrets.token_hex(4)}"})
        rid = r.json()["id"]
        r = c.post(f"/resources/{rid}/accounts", json={"username": "svc", "password": "first-password"})
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        r = c.post("/users", json={"username": f"race-{secrets.token_hex(4)}", "password": secrets.token_urlsafe(16)})
        assert r.status_code == 201, r.text
        uid = r.json()["id"]

    for round_ in range(3):
        account = {"username": f"svc-{round_}", "notes": f"notes-{round_}", "password": f"password-{round_}"}
        user = {"full_name": f"Race Person {round_}", "email": f"race{round_}@example.org", "role": "auditor"}
        race(pair.client, [
            *[(lambda c, k=k, v=v: c.patch(f"/accounts/{aid}", json={k: v})) for k, v in account.items()],
            *[(lambda c, k=k, v=v: c.patch(f"/users/{uid}", json={k: v})) for k, v in user.items()],
        ])
        with pair.client(1) as c:
            got = c.get(f"/accounts/{aid}").json()
            secret = c.get(f"/accounts/{aid}/password").json()
            person = c.get(f"/users/{uid}").json()
        assert (got["username"], secret["notes"], secret["password"]) == (
            account["username"], account["notes"], account["password"])
        assert {k: person[k] for k in user} == user


# --- concurrent password changes: the history ----------------------------------------------------------

def test_concurrent_password_changes_leave_a_complete_history_in_the_order_they_were_made(pair: Pair) -> None:
    initial = f"initial-{secrets.token_hex(4)}"
    with pair.client(0) as c:
        rid = c.post("/resources", json={"name": f"race-history-{secrets.token_hex(4)}"}).json()["id"]
        r = c.post(f"/resources/{rid}/accounts", json={"username": "root", "password": initial})
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        set_at = {initial: ts(r.json()["password_changed_at"])}

    passwords = [f"changed-{n}-{secrets.token_hex(4)}" for n in range(PASSWORD_CHANGES)]
    responses = race(pair.client, [(lambda c, pw=pw: c.patch(f"/accounts/{aid}", json={"password": pw}))
                            for pw in passwords])
    assert [r.status_code for r in responses] == [200] * PASSWORD_CHANGES, [r.text for r in responses]
    set_at |= {pw: ts(r.json()["password_changed_at"]) for pw, r in zip(passwords, responses, strict=True)}

    with pair.client(1) as c:
        history = c.get(f"/accounts/{aid}/history", params={"reveal": "true"}).json()
        current = c.get(f"/accounts/{aid}/password").json()["password"]

    # complete: every password but the current one, each once
    retired = [h["password"] for h in history]
    assert sorted([*retired, current]) == sorted([initial, *passwords])
    # in the order the changes were made: newest first, each retired when its successor was set
    by_set_time = sorted(set_at, key=lambda pw: set_at[pw])
    assert by_set_time[-1] == current
    assert retired == list(reversed(by_set_time[:-1]))
    times = [ts(h["retired_at"]) for h in history]
    assert times == sorted(times, reverse=True) and len(set(times)) == len(times)
    # never retired before it was set
    early = [(pw[:9], str(set_at[pw]), str(t)) for pw, t in zip(retired, times, strict=True) if t < set_at[pw]]
    assert early == [], f"retired before it was set (password, set at, retired at): {early}"


# --- optimistic concurrency: ETag and If-Match -----------------------------------------------------------

def test_if_match_with_the_current_etag_changes_a_resource_and_a_stale_one_is_refused(pair: Pair) -> None:
    with pair.client(0) as primary, pair.client(1) as secondary:
        r = primary.post("/resources", json={"name": f"etag-{secrets.token_hex(4)}", "address": "10.0.0.1"})
        rid = r.json()["id"]
        first = etag(secondary.get(f"/resources/{rid}"))
        assert etag(primary.get(f"/resources/{rid}")) == first  # one database: one version everywhere

        r = primary.patch(f"/resources/{rid}", json={"description": "v2"}, headers={"If-Match": first})
        assert r.status_code == 200, r.text
        second = etag(r)
        assert second != first and r.json()["description"] == "v2"

        r = secondary.patch(f"/resources/{rid}", json={"address": "10.9.9.9"}, headers={"If-Match": first})
        assert r.status_code == 412, r.text
        assert r.json()["error"]["code"] == "precondition_failed"
        r = primary.get(f"/resources/{rid}")
        assert (r.json()["address"], etag(r)) == ("10.0.0.1", second)  # nothing written

        r = secondary.patch(f"/resources/{rid}", json={"address": "10.0.0.2"}, headers={"If-Match": "*"})
        assert r.status_code == 200 and etag(r) not in (first, second), r.text
        third = etag(r)
        for stale in (second, f"W/{third}", "garbage"):
            r = primary.patch(f"/resources/{rid}", json={"type": "router"}, headers={"If-Match": stale})
            assert r.status_code == 412, (stale, r.text)
        assert primary.delete(f"/resources/{rid}", headers={"If-Match": second}).status_code == 412
        assert primary.get(f"/resources/{rid}").json()["type"] == "server"
        assert primary.delete(f"/resources/{rid}", headers={"If-Match": third}).status_code == 204


def test_a_password_change_gives_an_account_a_new_etag_and_a_stale_one_changes_nothing(pair: Pair) -> None:
    with pair.client(0) as primary, pair.client(1) as secondary:
        rid = primary.post("/resources", json={"name": f"etag-acct-{secrets.token_hex(4)}"}).json()["id"]
        r = primary.post(f"/resources/{rid}/accounts", json={"username": "root", "password": "one"})
        aid, created = r.json()["id"], etag(r)
        assert etag(secondary.get(f"/accounts/{aid}")) == created

        r = secondary.patch(f"/accounts/{aid}", json={"password": "two"}, headers={"If-Match": created})
        assert r.status_code == 200, r.text
        changed = etag(r)
        assert changed != created and etag(primary.get(f"/accounts/{aid}")) == changed

        r = primary.patch(f"/accounts/{aid}", json={"password": "three"}, headers={"If-Match": created})
        assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed", r.text
        assert primary.get(f"/accounts/{aid}/password").json()["password"] == "two"
        assert len(primary.get(f"/accounts/{aid}/history").json()) == 1


def test_users_and_shares_carry_etags_and_honour_if_match(pair: Pair) -> None:
    with pair.client(0) as primary, pair.client(1) as secondary:
        r = primary.post("/users", json={"username": f"etag-{secrets.token_hex(4)}",
                                         "password": secrets.token_urlsafe(16)})
        uid, created = r.json()["id"], etag(r)
        assert etag(secondary.get(f"/users/{uid}")) == created
        r = secondary.patch(f"/users/{uid}", json={"full_name": "Ada"}, headers={"If-Match": created})
        assert r.status_code == 200 and etag(r) != created, r.text
        r = primary.patch(f"/users/{uid}", json={"email": "stale@example.org"}, headers={"If-Match": created})
        assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed", r.text
        assert primary.get(f"/users/{uid}").json()["email"] == ""

        rid = primary.post("/resources", json={"name": f"etag-share-{secrets.token_hex(4)}"}).json()["id"]
        path = f"/resources/{rid}/shares/{uid}"
        assert primary.put(path, json={"permission": "view"}, headers={"If-Match": "*"}).status_code == 412
        r = primary.put(path, json={"permission": "view"})
        assert r.status_code == 204, r.text
        shared = etag(r)
        assert etag(secondary.get(path)) == shared
        r = secondary.put(path, json={"permission": "modify"}, headers={"If-Match": shared})
        assert r.status_code == 204 and etag(r) != shared, r.text
        assert primary.delete(path, headers={"If-Match": shared}).status_code == 412
        assert primary.get(path).json()["permission"] == "modify"
        assert primary.delete(path, headers={"If-Match": etag(primary.get(path))}).status_code == 204


# --- the last administrator --------------------------------------------------------------------------------

def test_two_administrators_demoting_each_other_at_once_leave_one(server: Server) -> None:
    """The "last active administrator" check cannot be raced: of two concurrent demotions of the only two
    administrators, one is refused in every round: 409 when it reached the check, or 403 when the other's
    demotion was committed before its own request was authorised (it is no administrator by then)."""
    password = secrets.token_urlsafe(16)
    with server.client(server.login()) as c:
        r = c.post("/users", json={"username": "second-admin", "password": password, "role": "administrator"})
        assert r.status_code == 201, r.text
    ids = {"admin": "", "second-admin": r.json()["id"]}
    tokens = {"admin": server.login(), "second-admin": server.login("second-admin", password)}
    with server.client(tokens["admin"]) as c:
        ids["admin"] = c.get("/me").json()["id"]

    actors = [("admin", "second-admin"), ("second-admin", "admin")]  # (who demotes, whom)
    for round_ in range(5):
        responses = race(lambda n: server.client(tokens[actors[n][0]]), [
            (lambda c, target=target: c.patch(f"/users/{ids[target]}", json={"role": "user"}))
            for _, target in actors
        ])
        results = {actor: r.status_code for (actor, _), r in zip(actors, responses, strict=True)}
        assert sorted(results.values()) in ([200, 403], [200, 409]), f"round {round_}: {results}"
        survivor = next(name for name, status in results.items() if status == 200)
        demoted = next(name for name in ids if name != survivor)
        with server.client(tokens[survivor]) as c:
            r = c.patch(f"/users/{ids[demoted]}", json={"role": "administrator"})
            assert r.status_code == 200, r.text
