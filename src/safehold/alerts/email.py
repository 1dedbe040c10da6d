"""Email over SMTP: STARTTLS (or implicit TLS) with a verified certificate, optional login."""

from __future__ import annotations

import email.policy
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from safehold.alerts.base import AlertError, network_error, read_secret_file, tls_context
from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import EmailSection

# headers stay on one line (RFC 5322 allows 998 characters; our subject has at most 200): a folded
# subject reads badly in some clients
_POLICY = email.policy.SMTP.clone(max_line_length=998)


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def build_message(event: AlertEvent, section: EmailSection) -> EmailMessage:
    """The email for one event: the event name and the servers involved in the subject."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = section.sender
    msg["To"] = ", ".join(section.to)
    msg["Subject"] = _one_line(f"{section.subject_prefix} {event.kind}: {event.message}".strip())
    msg["Date"] = format_datetime(event.at)
    msg["Message-ID"] = make_msgid(domain=section.sender.rpartition("@")[2])
    msg["X-Safehold-Event"] = event.kind
    lines = [
        f"Event:      {event.kind}",
        f"Arguments:  {' '.join(event.args) if event.args else '-'}",
        f"Subject:    {event.subject}",
        f"Message:    {event.message}",
        f"Severity:   {event.severity.name.lower()}",
        f"At:         {event.at_text()}",
        f"Reported by: {event.server_name or '-'} ({event.server_id or '-'})",
        f"Cluster:    {event.cluster_id or '-'}",
    ]
    if event.id is not None:
        lines.append(f"Event id:   {event.id}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailChannel:
    name = "email"

    def __init__(self, section: EmailSection, resolve: Callable[[Path], Path] = lambda p: p,
                 password: str | None = None) -> None:
        self.section = section
        self._password = password  # the stored password (the database's settings), else password_file
        self.password_file = resolve(section.password_file) if section.password_file else None
        self.ca_file = resolve(section.ca_file) if section.ca_file else None

    def target(self) -> str:
        s = self.section
        login = f" as {s.username}" if s.username else ""
        return f"smtp://{s.host}:{s.port} ({s.security}{login}) to {', '.join(s.to)}"

    def _read_password(self) -> str | None:
        if self._password is not None:
            return self._password
        return read_secret_file(self.password_file, "SMTP password") if self.password_file else None

    def check(self) -> None:
        if self._password is None and self.password_file is not None:
            read_secret_file(self.password_file, "SMTP password")
        if self.section.security != "none":
            tls_context(self.ca_file)

    def send(self, event: AlertEvent) -> str:
        s = self.section
        where = f"{s.host}:{s.port}"
        password = self._read_password()
        context = tls_context(self.ca_file) if s.security != "none" else None
        message = build_message(event, s)
        try:
            smtp: smtplib.SMTP
            if s.security == "tls":
                smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            with smtp:
                smtp.ehlo()
                if s.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise AlertError(f"email: the SMTP server {where} does not offer STARTTLS",
                                         hint="use security = \"tls\" for port 465, or another server",
                                         transient=False)
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if s.username is not None and password is not None:
                    self._login(smtp, s.username, password, where)
                refused = smtp.send_message(message)
        except AlertError:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            raise AlertError(f"email: {where} refused every recipient ({', '.join(exc.recipients)})",
                             transient=False) from None
        except smtplib.SMTPSenderRefused as exc:
            raise AlertError(f"email: {where} refused the sender {s.sender} ({exc.smtp_code})",
                             transient=False) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error if isinstance(exc.smtp_error, str) else exc.smtp_error.decode(errors="replace")
            raise AlertError(f"email: {where} answered {exc.smtp_code} ({_one_line(text, 120)})") from None
        except smtplib.SMTPServerDisconnected:
            raise AlertError(f"email: {where} closed the connection") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise network_error("email", where, exc) from None
        sent = [a for a in s.to if a not in refused]
        return f"email sent to {', '.join(sent)} via {where}"

    @staticmethod
    def _login(smtp: smtplib.SMTP, username: str, password: str, where: str) -> None:
        try:
            smtp.login(username, password)
        except smtplib.SMTPAuthenticationError as exc:
            # the server's own words are left out: some echo what was sent
            raise AlertError(f"email: {where} refused the login of {username} ({exc.smtp_code})",
                             hint="check the username and the password", transient=False) from None
        except smtplib.SMTPNotSupportedError:
            raise AlertError(f"email: {where} does not offer login (AUTH)",
                             hint="remove the username and password, or use another server",
                             transient=False) from None

