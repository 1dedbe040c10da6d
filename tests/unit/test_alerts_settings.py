"""[alerts] in safehold.toml: a full example, and clear errors that never echo a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.config import CONFIG_NAME, Settings, load_settings, write_settings
from safehold.errors import ConfigError

MINIMAL = '[server]\nid = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"\nname = "vault-1"\n[database]\nport = 5433\n'

FULL = MINIMAL + """
[alerts.email]
host = "smtp.example.com"
sender = "safehold@example.com"
to = ["ops@example.com", "dba@example.com"]
username = "safehold"
password_file = "secrets/smtp_password"

[alerts.syslog]
transport = "tcp"
host = "192.0.2.10"
port = 6514
facility = "local3"

[alerts.snmp]
host = "192.0.2.11"
community_file = "secrets/snmp_community"

[alerts.webhook]
url = "https://hooks.example.com/safehold/T0KEN"
secret_file = "secrets/webhook_secret"

[alerts.script]
path = "/usr/local/lib/safehold/on-event"
timeout = 10

[alerts.retry]
attempts = 3
"""


def load(tmp_path: Path, text: str) -> Settings:
    (tmp_path / CONFIG_NAME).write_text(text)
    return load_settings(tmp_path, env={})


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return exc.value.message


def test_no_alerts_by_default(tmp_path: Path) -> None:
    a = load(tmp_path, MINIMAL).alerts
    assert a.configured() == [] and a.retry.attempts == 5


def test_a_full_configuration(tmp_path: Path) -> None:
    s = load(tmp_path, FULL)
    a = s.alerts
    assert a.configured() == ["email", "syslog", "snmp", "webhook", "script"]
    assert a.email is not None and a.email.port == 587 and a.email.security == "starttls"
    assert a.syslog is not None and a.syslog.facility == "local3"
    assert a.snmp is not None and a.snmp.enterprise_oid == "1.3.6.1.4.1.32473.1" and a.snmp.port == 162
    assert a.script is not None and a.script.timeout == 10
    assert s.path(a.email.password_file or Path()) == tmp_path.resolve() / "secrets/smtp_password"
    assert a.retry.attempts == 3
    write_settings(s)  # and it survives a rewrite of the file
    assert load_settings(tmp_path, env={}).alerts == a


@pytest.mark.parametrize(("snippet", "expected"), [
    ('[alerts.email]\nhost = "h"\nsender = "a@b"\n', "alerts.email.to: Field required"),
    ('[alerts.email]\nhost = "h"\nsender = "a@b"\nto = ["ops"]\n', "alerts.email.to: Value error, each recipient"),
    ('[alerts.email]\nhost = "h"\nsender = "a@b"\nto = ["o@p"]\nusername = "u"\n',
     "username and password_file go together"),
    ('[alerts.email]\nhost = "h"\nsender = "a@b"\nto = ["o@p"]\nsecurity = "none"\nusername = "u"\n'
     'password_file = "p"\n', "a password is never sent in clear"),
    ('[alerts.email]\nhost = "h"\nsender = "a@b"\nto = ["o@p"]\nport = 70000\n', "alerts.email.port:"),
    ('[alerts.syslog]\nfacility = "local9"\n', "alerts.syslog.facility: Value error, must be one of kern,"),
    ('[alerts.syslog]\ntransport = "tls"\n', "alerts.syslog.transport:"),
    ('[alerts.snmp]\nhost = "h"\ncommunity_file = "c"\nenterprise_oid = "1.3.6.x"\n',
     "alerts.snmp.enterprise_oid: Value error, must be a numeric OID"),
    ('[alerts.snmp]\nhost = "h"\n', "alerts.snmp.community_file: Field required"),
    ('[alerts.snmp]\nhost = "h"\ncommunity_file = "c"\ncommunity = "public"\n', "alerts.snmp.community: unknown key"),
    ('[alerts.webhook]\nurl = "ftp://h/x"\nsecret_file = "s"\n', "alerts.webhook.url: Value error, must be an http"),
    ('[alerts.script]\npath = "/x"\ntimeout = 0\n', "alerts.script.timeout:"),
    ('[alerts.retry]\nattempts = 0\n', "alerts.retry.attempts:"),
    ('[alerts.pager]\nhost = "h"\n', "alerts.pager: unknown key"),
])
def test_errors_name_the_key(tmp_path: Path, snippet: str, expected: str) -> None:
    assert expected in error(tmp_path, MINIMAL + snippet)


def test_errors_never_echo_a_value(tmp_path: Path) -> None:
    msg = error(tmp_path, MINIMAL + '[alerts.webhook]\nurl = "https://user:hunter2@h/T0KEN"\nsecret_file = "s"\n')
    assert "alerts.webhook.url" in msg and "hunter2" not in msg and "T0KEN" not in msg
    msg = error(tmp_path, MINIMAL + '[alerts.email]\nhost = "h"\nsender = "a@b"\nto = ["o@p"]\npassword = "hunter2"\n')
    assert "alerts.email.password: unknown key" in msg and "hunter2" not in msg
