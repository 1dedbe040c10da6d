"""The names Safehold gives what it makes for other servers (ha.names), the address rules for a new
server (ha.addresses), as tables."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from safehold import names
from safehold.errors import ConfigError, InvalidInput
from safehold.ha.addresses import (
    dns_name,
    is_loopback_address,
    is_loopback_host,
    login_hba_lines,
    resolve_addresses,
)

ID = "01234567-89ab-cdef-0123-456789abcdef"


@pytest.mark.parametrize(("build", "expected", "pattern"), [
    (names.replication_role, "repl_0123456789ab", names.REPLICATION_ROLE),
    (names.readonly_slot, "ro_0123456789ab", names.READONLY_SLOT),
    (names.secondary_login, "app_0123456789ab", names.SECONDARY_LOGIN),
])
def test_each_name_is_built_from_the_server_id_and_found_again_by_its_pattern(
        build: Callable[[str], str], expected: str, pattern: re.Pattern[str]) -> None:
    assert build(ID) == expected
    assert build(ID.upper()) == expected  # the id's spelling does not change the name
    assert pattern.fullmatch(expected)
    others = {names.REPLICATION_ROLE, names.READONLY_SLOT, names.SECONDARY_LOGIN} - {pattern}
    assert not any(p.fullmatch(expected) for p in others)


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "------------------------------------", "x'; DROP ROLE y"])
def test_a_name_is_never_built_from_something_that_is_no_server_id(bad: str) -> None:
    for build in (names.replication_role, names.readonly_slot, names.secondary_login):
        with pytest.raises(InvalidInput):
            build(bad)


def test_the_replica_reports_its_server_id_and_the_spool_has_one_directory_name() -> None:
    assert names.application_name(ID) == ID
    assert names.SPOOL_DIR == "spool"


@pytest.mark.parametrize(("host", "loopback_host", "loopback_address"), [
    ("127.0.0.1", True, True),
    ("127.0.0.53", True, True),
    ("::1", True, True),
    ("localhost", True, False),  # a name: where a database listens it is local, as an address it is not
    ("10.0.0.5", False, False),
    ("db.example.org", False, False),
    ("", False, False),
])
def test_loopback_means_a_loopback_address_and_for_hosts_also_localhost(host: str, loopback_host: bool,
                                                                         loopback_address: bool) -> None:
    assert is_loopback_host(host) is loopback_host
    assert is_loopback_address(host) is loopback_address


@pytest.mark.parametrize(("host", "expected"), [
    ("10.1.2.3", ["10.1.2.3"]),
    ("::1", ["::1"]),
    ("127.0.0.1", ["127.0.0.1"]),
])
def test_an_address_resolves_to_itself(host: str, expected: list[str]) -> None:
    assert resolve_addresses(host) == expected


def test_a_name_that_does_not_resolve_is_refused_with_the_callers_hint() -> None:
    with pytest.raises(ConfigError, match="cannot resolve 'no-such-host.invalid'") as caught:
        resolve_addresses("no-such-host.invalid", hint="give its IP address")
    assert caught.value.hint == "give its IP address"


def test_a_login_is_let_in_from_each_address_over_tls_only() -> None:
    assert login_hba_lines("safehold", "app_0123456789ab", ["10.0.0.5", "fd00::5"]) == [
        "hostssl safehold app_0123456789ab 10.0.0.5/32 scram-sha-256",
        "hostssl safehold app_0123456789ab fd00::5/128 scram-sha-256",
    ]


@pytest.mark.parametrize(("host", "expected"), [("ro.example.org", "ro.example.org"), ("10.0.0.5", ""),
                                                ("::1", "")])
def test_the_registry_lists_a_dns_name_only(host: str, expected: str) -> None:
    assert dns_name(host) == expected
