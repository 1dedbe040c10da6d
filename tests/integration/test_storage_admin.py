"""The storage functions the HA code calls instead of writing SQL itself, against a real server's bundled
PostgreSQL (one shared server process on 127.0.0.1): the one connect helper, the roles Safehold makes for
other servers, the advisory lock of the schedules lease, the registry and the cluster row as the teardown
reads them, and the read-only state fencing sets."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from safehold.config import load_settings
from safehold.errors import DatabaseError
from safehold.storage import admin, cluster, locks, roles, servers, system_settings
from safehold.storage.db import app_target, check_reachable, connect, make_engine, owner_target
from tests.support import Server

NAMESPACE, KEY = 0x53484C44, 999  # a lock key of the tests' own (the schedules lease uses 1)


def test_the_connect_helper_says_who_could_not_connect_and_never_the_password(shared_server: Server) -> None:
    settings = load_settings(shared_server.data_dir)
    check_reachable(app_target(settings))  # the right password: one round trip
    wrong = secrets.token_urlsafe(16)
    with pytest.raises(DatabaseError) as caught:
        connect(dataclasses.replace(app_target(settings), password=wrong), timeout=5)
    assert f"cannot connect to the database as {settings.database.user}" in caught.value.message
    assert wrong not in caught.value.message


def test_replication_roles_are_listed_revoked_and_dropped(shared_server: Server) -> None:
    settings = load_settings(shared_server.data_dir)
    su = owner_target(settings, dbname="postgres")
    role = "repl_" + secrets.token_hex(6)
    admin.create_replication_role(su, role, secrets.token_urlsafe(16))  # also granted the pg_rewind functions
    try:
        found = {r.name: r for r in roles.safehold_roles(su, settings.database.user)}
        assert found[role] == roles.RoleInfo(role, replication=True, superuser=False, app_member=False)
        assert not roles.is_member(su, role, settings.database.user)
        assert roles.is_member(su, settings.database.user, settings.database.user)
        assert not roles.is_member(su, "repl_" + "0" * 12, settings.database.user)  # no such role
        roles.revoke_privileges(su, role)
    finally:
        assert admin.drop_replication_role(su, role) is True
    assert role not in {r.name for r in roles.safehold_roles(su, settings.database.user)}


def test_the_registry_and_the_cluster_row_read_synchronously(shared_server: Server) -> None:
    settings = load_settings(shared_server.data_dir)
    target = app_target(settings)
    entries = servers.registry(target)
    assert settings.server.id in [e.id for e in entries]
    assert servers.unregister(target, "00000000-0000-4000-8000-000000000000") is False  # not listed
    assert cluster.cluster_id(target) is not None


def test_the_database_is_not_read_only_unless_fenced(shared_server: Server) -> None:
    settings = load_settings(shared_server.data_dir)
    assert system_settings.read_only_state(owner_target(settings)) == (False, False)


def test_an_advisory_lock_has_one_holder_that_every_session_sees(shared_server: Server) -> None:
    settings = load_settings(shared_server.data_dir)

    async def go() -> None:
        base = make_engine(app_target(settings), pool_size=1)
        engine = locks.session_engine(base.url, application_name="safehold-lock-test", timeout=5)
        try:
            async with engine.connect() as a, engine.connect() as b:
                assert await locks.holder(b, NAMESPACE, KEY) is None
                taken = await locks.try_lock(a, NAMESPACE, KEY)
                assert taken.ok
                seen = await locks.holder(b, NAMESPACE, KEY)
                assert seen == locks.LockHolder(taken.pid, "safehold-lock-test", mine=False)
                assert not (await locks.try_lock(b, NAMESPACE, KEY)).ok
                assert await locks.unlock(b, NAMESPACE, KEY) is False  # b holds nothing
                assert await locks.unlock(a, NAMESPACE, KEY) is True
                assert await locks.holder(b, NAMESPACE, KEY) is None
                held_by_b = await locks.try_lock(b, NAMESPACE, KEY)
                assert held_by_b.ok
            # b's session ended with its connection: the lock went with it
            async with engine.connect() as c:
                assert await locks.holder(c, NAMESPACE, KEY) is None
        finally:
            await engine.dispose()
            await base.dispose()

    asyncio.run(go())
