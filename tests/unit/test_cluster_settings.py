"""The cluster's alert settings and failover policy: how they are stored (secrets apart, sealed with the
row's key as associated data), how a channel is changed (tables), and how a read-only server follows a
changed policy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from safehold.alerts.settings import (
    AlertConfig,
    AlertsSection,
    from_stored,
    inline_secrets,
    remove_channel,
    secret_problems,
    set_channel,
    stored_section,
    to_stored,
)
from safehold.config import FailoverSection
from safehold.crypto.envelope import DecryptionError, Keyring
from safehold.errors import InvalidInput
from safehold.services import cluster_settings as cs

PASSWORD, COMMUNITY, SECRET = "smtp-pa55", "comm-un1ty", "hook-s3cret"
HOOK = "https://hooks.example.com/T0KEN"

FULL = AlertConfig(stored_section({
    "email": {"host": "smtp.example.com", "username": "alerts", "sender": "s@example.com", "to": ["o@example.com"]},
    "syslog": {"transport": "udp", "port": 5514},
    "snmp": {"host": "192.0.2.11"},
    "webhook": {"url": HOOK},
}), {"email": PASSWORD, "snmp": COMMUNITY, "webhook": SECRET})


def test_stored_form_keeps_secrets_and_the_webhook_url_out_of_the_json() -> None:
    data, sealed = to_stored(FULL)
    text = json.dumps(data)
    for s in (PASSWORD, COMMUNITY, SECRET, "T0KEN"):
        assert s not in text
    assert sealed == {"email": PASSWORD, "snmp": COMMUNITY, "webhook": SECRET, "webhook.url": HOOK}
    assert from_stored(data, sealed) == FULL
    assert "smtp-pa55" not in repr(FULL)


def test_sealed_values_open_only_as_the_row_they_belong_to() -> None:
    ring = Keyring({1: b"k" * 32}, 1)
    blob = cs.seal(ring, cs.ALERTS, {"email": PASSWORD})
    assert blob is not None and PASSWORD.encode() not in blob
    assert cs.unseal(ring, cs.ALERTS, blob) == {"email": PASSWORD}
    with pytest.raises(DecryptionError):
        cs.unseal(ring, cs.FAILOVER, blob)  # copied into another row: does not open
    assert cs.seal(ring, cs.ALERTS, {}) is None and cs.unseal(ring, cs.ALERTS, None) == {}


def test_safehold_toml_still_needs_secret_files_but_the_database_form_does_not() -> None:
    with pytest.raises(ValidationError, match="Field required"):
        AlertsSection.model_validate({"webhook": {"url": HOOK}})
    with pytest.raises(ValidationError, match="username and password_file go together"):
        AlertsSection.model_validate({"email": {"host": "h", "username": "u", "sender": "a@b", "to": ["o@p"]}})
    assert stored_section({"webhook": {"url": HOOK}}).webhook is not None


def test_import_reads_each_secret_file_and_drops_its_path(tmp_path: Path) -> None:
    (tmp_path / "hook").write_text(SECRET + "\n")
    section = AlertsSection.model_validate({"webhook": {"url": HOOK, "secret_file": "hook"}})
    config = inline_secrets(section, lambda p: tmp_path / p)
    assert config.secrets == {"webhook": SECRET}
    assert config.section.webhook is not None and config.section.webhook.secret_file is None
    with pytest.raises(ValueError, match="is missing") as exc:
        inline_secrets(AlertsSection.model_validate({"snmp": {"host": "h", "community_file": "nope"}}),
                       lambda p: tmp_path / p)
    assert COMMUNITY not in str(exc.value)


SET_CHANNEL = [
    # (channel, changes, secret, replace, expected field of the refusal or None)
    ("syslog", {"port": "6514"}, None, False, None),
    ("syslog", {"facility": "local9"}, None, False, "facility"),
    ("syslog", {"colour": "red"}, None, False, "colour"),
    ("syslog", {}, "x", False, "secret"),                       # syslog has no secret
    ("email", {"to": ["ops@example.com"]}, None, False, None),   # same destination: the saved password stays
    ("email", {"host": "evil.example.com"}, None, False, "secret"),  # new destination without the password
    ("email", {"port": 2525}, None, False, "secret"),
    ("email", {"host": "smtp2.example.com"}, PASSWORD, False, None),  # given again: fine
    ("snmp", {"host": "192.0.2.99"}, None, False, "secret"),
    ("webhook", {"url": "https://other.example.com/x"}, None, False, None),  # the secret signs, is not sent
    ("webhook", {"url": "ftp://x"}, None, False, "url"),
    ("script", {"path": "/usr/local/bin/on-event"}, None, False, None),
    ("retry", {"attempts": 3}, None, False, None),
    ("pager", {}, None, False, "channel"),
    ("email", {"sender": "s@example.com"}, None, True, "host"),  # replace: starts from the defaults
    ("email", {}, "one\ntwo", False, "secret"),
]


@pytest.mark.parametrize(("channel", "changes", "secret", "replace", "refused"), SET_CHANNEL)
def test_set_channel(channel: str, changes: dict[str, Any], secret: str | None, replace: bool,
                     refused: str | None) -> None:
    if refused is not None:
        with pytest.raises(InvalidInput) as exc:
            set_channel(FULL, channel, changes, secret=secret, replace=replace)
        assert exc.value.field == refused, exc.value.message
        for s in (PASSWORD, COMMUNITY, SECRET):
            assert s not in exc.value.message
        return
    new = set_channel(FULL, channel, changes, secret=secret, replace=replace)
    sub = getattr(new.section, channel)
    for k, v in changes.items():
        assert getattr(sub, k) == (int(v) if k == "port" else v) or str(getattr(sub, k)) == v
    assert new.secrets.get(channel) == (secret or FULL.secrets.get(channel))


def test_a_field_set_to_none_goes_back_to_its_default_and_remove_drops_the_secret() -> None:
    new = set_channel(FULL, "syslog", {"port": None})
    assert new.section.syslog is not None and new.section.syslog.port == 514
    gone = remove_channel(FULL, "email")
    assert gone.section.email is None and "email" not in gone.secrets and gone.secrets["snmp"] == COMMUNITY


@pytest.mark.parametrize(("secrets", "problem"), [
    ({"email": PASSWORD, "snmp": COMMUNITY, "webhook": SECRET}, None),
    ({"snmp": COMMUNITY, "webhook": SECRET}, "email"),
    ({"email": PASSWORD, "webhook": SECRET}, "snmp"),
    ({"email": PASSWORD, "snmp": COMMUNITY}, "webhook"),
])
def test_secret_problems(secrets: dict[str, str], problem: str | None) -> None:
    found = secret_problems(AlertConfig(FULL.section, secrets))
    assert [c for c, _ in found][:1] == ([problem] if problem else [])


# --- following the policy on a read-only server ---------------------------------------------------------


class FakeWatch:
    def __init__(self, settings: Any, log: list[str]) -> None:
        self.policy: FailoverSection = settings.ha.failover
        self.state = SimpleNamespace(promoted=False)
        self.log = log

    async def run_forever(self) -> None:
        self.log.append(f"start {self.policy.ping_iterations}")
        try:
            await asyncio.Event().wait()
        finally:
            self.log.append(f"stop {self.policy.ping_iterations}")


def test_follow_failover_starts_restarts_and_stops_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    from safehold.config import Settings

    settings = Settings.model_validate({"server": {"id": "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", "name": "ro"}})
    rt = SimpleNamespace(settings=settings)
    off = FailoverSection()
    on3 = FailoverSection(enabled=True, ping_iterations=3)
    on5 = FailoverSection(enabled=True, ping_iterations=5)
    rounds = [off, on3, on3, on5, on5, off, off]
    seen: list[str] = []
    done = asyncio.Event()

    async def policy(_: Any) -> FailoverSection:
        if len(rounds) == 1:
            done.set()
        return rounds.pop(0) if len(rounds) > 1 else rounds[0]

    monkeypatch.setattr(cs, "effective_failover", policy)

    async def main() -> None:
        task = asyncio.create_task(cs.follow_failover(rt, lambda s: FakeWatch(s, seen), every=0))  # type: ignore[arg-type]
        await asyncio.wait_for(done.wait(), 5)
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["start 3", "stop 3", "start 5", "stop 5"]
