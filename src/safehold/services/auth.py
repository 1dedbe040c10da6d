"""Logins, sessions, API tokens, TOTP and lockout."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from safehold.audit.chain import AuditEvent
from safehold.crypto.barrier import Barrier, Secret
from safehold.domain import AuditAction, AuditResult, UserRole
from safehold.errors import (
    AccountLocked,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    ReauthenticationRequired,
    TotpRequired,
)
from safehold.runtime import Runtime
from safehold.services.access import Principal
from safehold.storage import users as user_store

HASHER = PasswordHasher()  # argon2id, the library's recommended parameters
_DUMMY_HASH = HASHER.hash("safehold dummy password for timing")
SESSION_PREFIX = "shs_"
API_PREFIX = "sht_"
TOUCH_EVERY = dt.timedelta(seconds=60)
#: how long a token's principal (its user, role, expiry) is reused without reading the database again: a
#: revoked token, a logout, a disabled user or a changed role takes effect at once on the server that made the
#: change (all its workers) and within this on every other server; well under the one second promised
PRINCIPAL_TTL = 0.5
PRINCIPAL_CACHE_MAX = 10_000
REAUTH_VALID = dt.timedelta(minutes=5)
MIN_PASSWORD_LEN = 12
UNKNOWN_USER = "(unknown user)"  # the actor of a failed sign-in whose name is no user's
NAME_FINGERPRINT = "login name fingerprint"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


async def _verify(hash_: str, password: str) -> bool:
    def check() -> bool:
        try:
            return HASHER.verify(hash_, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def check_password_strength(password: str, *, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD_LEN:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD_LEN} characters", field=field)
    if len(password) > 1024:
        raise InvalidInput("password is too long (at most 1024 characters)", field=field)


@dataclass(frozen=True)
class LoginResult:
    token: str
    principal: Principal
    csrf_token: str


def _event(actor: str, action: str, result: str, source_ip: str, user_id: str = "", **detail: object) -> AuditEvent:
    return AuditEvent(actor=actor, action=action, result=result, source_ip=source_ip, target_type="user",
                      target_id=user_id, target_name=actor, detail=dict(detail))


def derived_key(rt: Runtime, label: str) -> bytes:
    """A 32-byte key for one purpose, derived one-way from the cluster's audit key (the same on every
    server of the cluster, so what one server makes with it another can check)."""
    return hmac.new(rt.keys.audit_key, b"safehold derive v1:" + label.encode(), hashlib.sha256).digest()


def name_fingerprint(key: bytes, name: str) -> str:
    """A keyed fingerprint of a name typed at sign-in: equal for equal names, so repeated attempts can be
    told apart and correlated, but the text itself (perhaps a password typed into the wrong field)
    cannot be read back or guessed without the key."""
    return hmac.new(key, name.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]


def _unknown_user(rt: Runtime, username: str, source_ip: str) -> AuditEvent:
    """The audit record of a sign-in with a name that is no user's: none of the typed text, only a
    fixed marker and the name's keyed fingerprint."""
    fingerprint = name_fingerprint(derived_key(rt, NAME_FINGERPRINT), username)
    return _event(UNKNOWN_USER, AuditAction.LOGIN_FAILED, AuditResult.FAILURE, source_ip, reason="unknown user",
                  name_fingerprint=fingerprint)


async def login(rt: Runtime, username: str, password: str, totp: str | None, source_ip: str) -> LoginResult:
    """Check credentials; on success open a session.  Every outcome is audited."""
    if rt.readonly:
        return await _login_readonly(rt, username, password, totp, source_ip)
    sec = rt.settings.security
    failure: Exception | None = None
    async with rt.write() as conn:
        user = await user_store.by_username(conn, username, for_update=True)
        if user is None:
            await _verify(_DUMMY_HASH, password)
            await rt.append_audit(conn, _unknown_user(rt, username, source_ip))
            failure = AuthenticationFailed("invalid username or password")
        elif user.locked_until is not None and user.locked_until > now():
            minutes = max(1, int((user.locked_until - now()).total_seconds() // 60) + 1)
            await rt.append_audit(conn, _event(user.username, AuditAction.LOGIN_FAILED, AuditResult.DENIED,
                                               source_ip, user.id, reason="account locked"))
            failure = AccountLocked(f"this account is locked after repeated failed logins; "
                                    f"try again in {minutes} minute(s) or ask an administrator to unlock it")
        elif not await _verify(user.password_hash, password) or user.disabled:
            failures = user.failed_logins + 1
            reason = "account disabled" if user.disabled else "wrong password"
            await rt.append_audit(conn, _event(user.username, AuditAction.LOGIN_FAILED, AuditResult.FAILURE,
                                               source_ip, user.id, reason=reason))
            failure = await _count_failure(rt, conn, user, failures, source_ip)
        elif user.totp_enabled and not totp:
            failure = TotpRequired("a TOTP code is required for this account")
        elif user.totp_enabled and not _totp_ok(rt, user, totp or ""):
            await rt.append_audit(conn, _event(user.username, AuditAction.LOGIN_FAILED, AuditResult.FAILURE,
                                               source_ip, user.id, reason="wrong TOTP code"))
            failure = await _count_failure(rt, conn, user, user.failed_logins + 1, source_ip,
                                           message="invalid TOTP code")
        else:
            token, csrf = new_token(SESSION_PREFIX), secrets.token_urlsafe(24)
            token_id = str(uuid.uuid4())
            t = now()
            values: dict[str, object] = {"failed_logins": 0, "locked_until": None}
            if user.totp_enabled:
                values["totp_last_step"] = _totp_step(rt, user, totp or "")
            await user_store.update_user(conn, user.id, **values)
            await user_store.add_token(
                conn, id=token_id, token_hash=hash_token(token), kind="session", user_id=user.id,
                csrf_token=csrf, server_id=rt.identity.id, source_ip=source_ip[:64], created_at=t,
                last_used_at=t, expires_at=t + dt.timedelta(minutes=sec.session_idle_minutes),
            )
            await rt.append_audit(conn, _event(user.username, AuditAction.LOGIN, AuditResult.SUCCESS,
                                               source_ip, user.id, method="password+totp" if user.totp_enabled
                                               else "password"))
            principal = Principal(user.id, user.username, UserRole(user.role), token_id, "session",
                                  source_ip, csrf)
    if failure is not None:
        rt.metrics.logins.labels("failure").inc()
        raise failure
    rt.metrics.logins.labels("success").inc()
    return LoginResult(token, principal, csrf)


async def _login_readonly(rt: Runtime, username: str, password: str, totp: str | None,
                          source_ip: str) -> LoginResult:
    """The same checks against the replica; counters, used TOTP steps and the session stay in this
    server's memory, and the audit records go to its spool."""
    sec, local, t = rt.settings.security, rt.local, now()
    async with rt.read() as conn:
        user = await user_store.by_username(conn, username)

    async def fail(exc: Exception, actor: str, user_id: str = "", **detail: object) -> Exception:
        await rt.record_audit(_event(actor, AuditAction.LOGIN_FAILED, AuditResult.FAILURE, source_ip, user_id,
                                     **detail))
        rt.metrics.logins.labels("failure").inc()
        return exc

    if user is None:
        await _verify(_DUMMY_HASH, password)
        await rt.record_audit(_unknown_user(rt, username, source_ip))
        rt.metrics.logins.labels("failure").inc()
        raise AuthenticationFailed("invalid username or password")
    locked = max([x for x in (user.locked_until, local.locked_until(user.id)) if x is not None], default=None)
    if locked is not None and locked > t:
        raise await fail(AccountLocked("this account is locked after repeated failed logins; try again later"),
                         user.username, user.id, reason="account locked")
    password_ok = await _verify(user.password_hash, password) and not user.disabled
    totp_missing = password_ok and user.totp_enabled and not totp
    step = _totp_step(rt, user, totp or "") if password_ok and user.totp_enabled and totp else None
    # the step is claimed at once (a code is good once, whichever worker sees it first)
    totp_bad = password_ok and user.totp_enabled and bool(totp) and (
        step is None or not local.claim_totp_step(user.id, step, user.totp_last_step or 0))
    if totp_missing:
        raise TotpRequired("a TOTP code is required for this account")
    if not password_ok or totp_bad:
        failures = local.add_failure(user.id, user.failed_logins)
        if failures >= sec.lockout_threshold:
            local.lock_out(user.id, t + dt.timedelta(minutes=sec.lockout_minutes))
            await rt.record_audit(_event(user.username, AuditAction.USER_LOCKED, AuditResult.SUCCESS, source_ip,
                                         user.id, failures=failures, minutes=sec.lockout_minutes))
        reason = "wrong TOTP code" if totp_bad else "wrong password"
        message = "invalid TOTP code" if totp_bad else "invalid username or password"
        raise await fail(AuthenticationFailed(message), user.username, user.id, reason=reason)
    local.clear_failures(user.id)
    await rt.record_audit(_event(user.username, AuditAction.LOGIN, AuditResult.SUCCESS, source_ip, user.id,
                                 method="password+totp" if user.totp_enabled else "password"))
    token, csrf = new_token(SESSION_PREFIX), secrets.token_urlsafe(24)
    principal = Principal(user.id, user.username, UserRole(user.role), str(uuid.uuid4()), "session", source_ip,
                          csrf)
    local.purge(t)
    local.add_session(hash_token(token), principal, t + dt.timedelta(minutes=sec.session_idle_minutes))
    rt.metrics.logins.labels("success").inc()
    return LoginResult(token, principal, csrf)


async def _count_failure(rt, conn, user, failures: int, source_ip: str,  # type: ignore[no-untyped-def]
                         message: str = "invalid username or password") -> Exception:
    sec = rt.settings.security
    if failures >= sec.lockout_threshold:
        until = now() + dt.timedelta(minutes=sec.lockout_minutes)
        await user_store.update_user(conn, user.id, failed_logins=0, locked_until=until)
        await rt.append_audit(conn, _event(user.username, AuditAction.USER_LOCKED, AuditResult.SUCCESS,
                                           source_ip, user.id, failures=failures,
                                           minutes=sec.lockout_minutes))
        return AccountLocked(f"too many failed logins: this account is locked for {sec.lockout_minutes} minutes")
    await user_store.update_user(conn, user.id, failed_logins=failures)
    return AuthenticationFailed(message)


def _totp_of(rt: Runtime, user) -> pyotp.TOTP:  # type: ignore[no-untyped-def]
    secret = Barrier(rt.keyring).open_str(Secret.TOTP_SECRET, user.id, bytes(user.totp_secret_enc))
    return pyotp.TOTP(secret)


def _totp_step(rt: Runtime, user, code: str) -> int | None:  # type: ignore[no-untyped-def]
    """The time step a code belongs to (±1 step of drift), or None if it matches none."""
    totp = _totp_of(rt, user)
    code = code.strip().replace(" ", "")
    t = now().timestamp()
    for drift in (0, -1, 1):
        step = int(t // totp.interval) + drift
        if secrets.compare_digest(totp.at(step * totp.interval), code):
            return step
    return None


def _totp_ok(rt: Runtime, user, code: str) -> bool:  # type: ignore[no-untyped-def]
    if user.totp_secret_enc is None:
        return False
    step = _totp_step(rt, user, code)
    return step is not None and (user.totp_last_step is None or step > user.totp_last_step)


async def authenticate(rt: Runtime, token: str, source_ip: str = "", *, replica_sessions: bool = False) -> Principal:
    """The principal a bearer/session token stands for; raises AuthenticationFailed.  ``replica_sessions``:
    on a read-only server, a session made on a writable server counts too (see :func:`_authenticate_readonly`)."""
    if not token.startswith((SESSION_PREFIX, API_PREFIX)) or len(token) > 100:
        raise AuthenticationFailed("invalid or expired token")
    if rt.readonly:
        return await _authenticate_readonly(rt, token, source_ip, replica_sessions)
    token_hash = hash_token(token)
    row = await _principal_row(rt, token_hash)
    t = now()
    if row is None or row.disabled or (row.expires_at is not None and row.expires_at <= t):
        raise AuthenticationFailed("invalid or expired token")
    max_age = dt.timedelta(hours=rt.settings.security.session_max_hours)
    if row.kind == "session" and row.created_at + max_age <= t:
        raise AuthenticationFailed("the session has expired; sign in again")
    if t - row.last_used_at > TOUCH_EVERY:
        expires = None
        if row.kind == "session":
            expires = min(t + dt.timedelta(minutes=rt.settings.security.session_idle_minutes),
                          row.created_at + max_age)
        rt.principals.pop(token_hash, None)  # its last use and expiry change
        async with rt.read() as conn:
            await user_store.touch_token(conn, row.token_id, t, expires)
            await conn.commit()
    return Principal(row.user_id, row.username, UserRole(row.role), row.token_id, row.kind, source_ip,
                     row.csrf_token)


async def _principal_row(rt: Runtime, token_hash: bytes) -> Any:
    """A token's principal row, read from the database at most once per :data:`PRINCIPAL_TTL` per process, and
    afresh once any process of this server forgot the principals (a revocation there).  The age and that count
    are taken before the read, so a change committed before it is seen, and one committed later within the
    TTL after it (at once when it was made on this server)."""
    hit = rt.principals.get(token_hash)
    started, seen = time.monotonic(), rt.principals_seen()
    if hit is not None and started - hit[0] < PRINCIPAL_TTL and hit[1] == seen:
        return hit[2]
    async with rt.read() as conn:
        row = await user_store.principal_by_token(conn, token_hash)
    if row is not None:
        if len(rt.principals) >= PRINCIPAL_CACHE_MAX:
            rt.principals.clear()
        rt.principals[token_hash] = (started, seen, row)
    return row


async def _authenticate_readonly(rt: Runtime, token: str, source_ip: str, replica_sessions: bool) -> Principal:
    """Sessions made on this read-only server live in its local state; API tokens are read from the replica,
    and so are sessions made on a writable server when ``replica_sessions`` (the HA view this server serves
    itself even while it sends users to the primary, where those sessions were made).

    Nothing is written: a token's last use is not noted here, and a replica session's idle expiry is the one
    the primary last set.  A token revoked or a session ended on the primary is deleted from the replica by
    replication, and is refused here from then on.  Other requests do not take replica sessions: a sign-out
    here could not end them (the replica cannot be written)."""
    t = now()
    if token.startswith(SESSION_PREFIX):
        idle = dt.timedelta(minutes=rt.settings.security.session_idle_minutes)
        session = rt.local.session(hash_token(token), t, idle)
        if session is not None:
            return replace(session, source_ip=source_ip)
    async with rt.read() as conn:
        row = await user_store.principal_by_token(conn, hash_token(token))
    if row is None or row.disabled or (row.expires_at is not None and row.expires_at <= t):
        raise AuthenticationFailed("invalid or expired token")
    if row.kind == "session":
        max_age = dt.timedelta(hours=rt.settings.security.session_max_hours)
        if not replica_sessions or row.created_at + max_age <= t:
            raise AuthenticationFailed("invalid or expired token")
    elif row.kind != "api":
        raise AuthenticationFailed("invalid or expired token")
    return Principal(row.user_id, row.username, UserRole(row.role), row.token_id, row.kind, source_ip, None)


async def purge_expired_tokens(rt: Runtime) -> int:
    async with rt.write() as conn:
        return await user_store.purge_expired(conn, now())


async def logout(rt: Runtime, p: Principal) -> None:
    if rt.readonly:
        rt.local.end_sessions(p.token_id)
        await rt.record_audit(_event(p.username, AuditAction.LOGOUT, AuditResult.SUCCESS, p.source_ip, p.user_id))
        return
    async with rt.write() as conn:
        await user_store.delete_token(conn, p.token_id)
        await rt.append_audit(conn, _event(p.username, AuditAction.LOGOUT, AuditResult.SUCCESS,
                                           p.source_ip, p.user_id))
    rt.forget_principals()


async def reauthenticate(rt: Runtime, p: Principal, password: str, totp: str | None) -> None:
    """Check the caller's password (and TOTP) again, for sensitive actions such as export."""
    async with rt.read() as conn:
        user = await user_store.by_id(conn, p.user_id)
    if user is None or not await _verify(user.password_hash, password):
        raise ReauthenticationRequired("re-authentication failed: wrong password")
    if user.totp_enabled and not (totp and _totp_step(rt, user, totp) is not None):
        raise ReauthenticationRequired("re-authentication failed: a valid TOTP code is required")


# --- TOTP enrolment -----------------------------------------------------------

async def totp_enroll(rt: Runtime, p: Principal) -> tuple[str, str]:
    """Start enrolment: a new secret (shown once) and its otpauth:// URI."""
    secret = pyotp.random_base32()
    async with rt.write() as conn:
        user = await user_store.by_id(conn, p.user_id, for_update=True)
        if user is None:
            raise NotFound("user not found")
        if user.totp_enabled:
            raise InvalidInput("TOTP is already enabled; disable it first", field="totp")
        sealed = Barrier(rt.keyring).seal_str(Secret.TOTP_SECRET, p.user_id, secret)
        await user_store.update_user(conn, p.user_id, totp_secret_enc=sealed)
    uri = pyotp.TOTP(secret).provisioning_uri(name=p.username, issuer_name="Safehold")
    return secret, uri


async def totp_confirm(rt: Runtime, p: Principal, code: str) -> None:
    async with rt.write() as conn:
        user = await user_store.by_id(conn, p.user_id, for_update=True)
        if user is None or user.totp_secret_enc is None:
            raise InvalidInput("start TOTP enrolment first", field="code")
        step = _totp_step(rt, user, code)
        if step is None:
            raise InvalidInput("the code does not match; check the device clock and try again", field="code")
        await user_store.update_user(conn, p.user_id, totp_enabled=True, totp_last_step=step)
        await rt.append_audit(conn, _event(p.username, AuditAction.TOTP_ENABLED, AuditResult.SUCCESS,
                                           p.source_ip, p.user_id))


async def totp_disable(rt: Runtime, actor: Principal | str, user_id: str, source_ip: str = "") -> None:
    name = actor.username if isinstance(actor, Principal) else actor
    async with rt.write() as conn:
        user = await user_store.by_id(conn, user_id, for_update=True)
        if user is None:
            raise NotFound("user not found")
        await user_store.update_user(conn, user_id, totp_enabled=False, totp_secret_enc=None, totp_last_step=None)
        await rt.append_audit(conn, AuditEvent(actor=name, action=AuditAction.TOTP_DISABLED,
                                               result=AuditResult.SUCCESS, source_ip=source_ip,
                                               target_type="user", target_id=user_id,
                                               target_name=user.username))


# --- API tokens ---------------------------------------------------------------

async def create_api_token(
    rt: Runtime, user_id: str, name: str, *, days: int | None, actor: str, source_ip: str = "",
    expires_at: dt.datetime | None = None,
) -> tuple[str, str]:
    """A personal API token (shown once); returns (token id, token).  ``expires_at`` instead of ``days``: an
    expiry to the second (the Vault-compatible API's child tokens)."""
    if not name.strip() or len(name) > 100:
        raise InvalidInput("a token needs a name of 1-100 characters", field="name")
    if days is not None and not 1 <= days <= 3650:
        raise InvalidInput("expiry must be between 1 and 3650 days", field="days")
    token, token_id, t = new_token(API_PREFIX), str(uuid.uuid4()), now()
    async with rt.write() as conn:
        user = await user_store.by_id(conn, user_id)
        if user is None:
            raise NotFound("user not found")
        await user_store.add_token(
            conn, id=token_id, token_hash=hash_token(token), kind="api", user_id=user_id, name=name.strip(),
            server_id=rt.identity.id, source_ip=source_ip[:64], created_at=t, last_used_at=t,
            expires_at=t + dt.timedelta(days=days) if days else expires_at,
        )
        await rt.append_audit(conn, AuditEvent(actor=actor, action=AuditAction.TOKEN_CREATED,
                                               result=AuditResult.SUCCESS, source_ip=source_ip,
                                               target_type="token", target_id=token_id,
                                               target_name=f"{user.username}/{name.strip()}"))
    return token_id, token


async def list_api_tokens(rt: Runtime, user_id: str) -> list[object]:
    async with rt.read() as conn:
        return list(await user_store.api_tokens(conn, user_id))


async def revoke_api_token(rt: Runtime, p: Principal, token_id: str) -> None:
    async with rt.write() as conn:
        n = await user_store.delete_token(conn, token_id, user_id=p.user_id)
        if n == 0:
            raise NotFound("token not found")
        await rt.append_audit(conn, AuditEvent(actor=p.username, action=AuditAction.TOKEN_REVOKED,
                                               result=AuditResult.SUCCESS, source_ip=p.source_ip,
                                               target_type="token", target_id=token_id))
    rt.forget_principals()
