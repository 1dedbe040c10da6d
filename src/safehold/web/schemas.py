"""Request and response bodies of the REST API.

Separate input and output models, so a database row (or a secret) never
reaches a response by accident.  Every text input refuses NUL characters and
unencodable code points, which PostgreSQL cannot store.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Header
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from safehold.domain import Permission, UserRole


def _clean_text(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return v


Clean = AfterValidator(_clean_text)
Text64 = Annotated[str, Field(min_length=0, max_length=64), Clean]
Text64Required = Annotated[str, Field(min_length=1, max_length=64), Clean]
Text100Required = Annotated[str, Field(min_length=1, max_length=100), Clean]
Text200 = Annotated[str, Field(min_length=0, max_length=200), Clean]
Text200Required = Annotated[str, Field(min_length=1, max_length=200), Clean]
Text254 = Annotated[str, Field(min_length=0, max_length=254), Clean]
Text500 = Annotated[str, Field(min_length=0, max_length=500), Clean]
Text1024Required = Annotated[str, Field(min_length=1, max_length=1024), Clean]
Text4096 = Annotated[str, Field(min_length=0, max_length=4096), Clean]
Text4096Required = Annotated[str, Field(min_length=1, max_length=4096), Clean]
Text5000 = Annotated[str, Field(min_length=0, max_length=5000), Clean]


# A TOTP code as a person types it: digits, perhaps grouped with spaces.  Anything else can never
# match, and must not reach the constant-time comparison (it refuses non-ASCII text).
TotpCode = Annotated[str, Field(max_length=16, pattern=r"^[0-9 ]*$")]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- optimistic concurrency: ETag out, If-Match in ---------------------------------------------

IfMatchHeader = Annotated[str | None, Header(
    alias="If-Match",
    description='Make the change only if the row is unchanged: the `ETag` of an earlier response (a list of '
                'them, or `*` for any current version).  If it changed, nothing is written and the answer is '
                '412 `precondition_failed`.  Without it, the last writer wins field by field: only the '
                'fields a PATCH names are changed.',
)]


def etag_header(status: int, what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI description of the ``ETag`` header a response carries."""
    return {status: {"headers": {"ETag": {
        "description": f"The version of the {what} (a strong validator; it changes whenever the {what} "
                       f"changes): send it back in `If-Match` to change the {what} only if it is unchanged.",
        "schema": {"type": "string"},
    }}}}


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    hint: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ServerInfo(BaseModel):
    id: str
    name: str
    role: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    server: ServerInfo
    database: Literal["ok", "unavailable"]


CheckName = Literal["live", "ready", "writable", "primary", "readonly", "replica"]


class HealthCheck(BaseModel):
    """The body of ``/api/v1/health/<check>`` (Patroni's convention): the status code is the answer, this says
    why.  No secret, no peer address."""

    check: CheckName
    ok: bool
    reason: str
    role: str
    mode: str
    redirecting: bool = Field(description="users are sent to another server")
    database: str = Field(description="ok, refusing (up but refusing connections), unavailable, or unchecked "
                                      "(live does not ask)")
    data_age_seconds: float | None = Field(default=None, description="how old the replica's data may be")
    max_lag_seconds: float | None = Field(default=None, description="the replica check's limit")


class VaultHealth(BaseModel):
    """The body of ``/v1/sys/health``, as Vault's ``/sys/health`` has it."""

    initialized: bool
    sealed: bool
    standby: bool
    performance_standby: bool
    replication_performance_mode: str = "disabled"
    replication_dr_mode: str = "disabled"
    server_time_utc: int
    version: str
    cluster_id: str
    enterprise: bool = False


class LoginIn(In):
    username: Text64Required
    password: Text1024Required
    totp: TotpCode | None = None


class LoginOut(BaseModel):
    token: str
    csrf_token: str
    user: UserOut
    expires_in: int


class UserOut(BaseModel):
    id: str
    username: str
    full_name: str
    email: str
    role: UserRole
    totp_enabled: bool
    disabled: bool
    locked_until: dt.datetime | None
    created_at: dt.datetime


class UserCreate(In):
    username: Text64Required
    password: Text1024Required
    role: UserRole = UserRole.USER
    full_name: Text200 = ""
    email: Text254 = ""


class UserUpdate(In):
    role: UserRole | None = None
    disabled: bool | None = None
    full_name: Text200 | None = None
    email: Text254 | None = None


class PasswordSet(In):
    password: Text1024Required


class OwnPasswordChange(In):
    current_password: Text1024Required
    new_password: Text1024Required


class TotpEnrollOut(BaseModel):
    secret: str
    otpauth_uri: str


class TotpConfirm(In):
    code: Annotated[TotpCode, Field(min_length=1)]


class TokenCreate(In):
    name: Text100Required
    days: int | None = Field(default=None, ge=1, le=3650)


class TokenCreated(BaseModel):
    id: str
    name: str
    token: str


class TokenOut(BaseModel):
    id: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime
    expires_at: dt.datetime | None


Tag = Text64Required


class ResourceCreate(In):
    name: Text200Required
    type: Text64 = "server"
    address: Text500 = ""
    description: Text5000 = ""
    tags: list[Tag] = Field(default_factory=list, max_length=50)


class ResourceUpdate(In):
    name: Text200Required | None = None
    type: Text64 | None = None
    address: Text500 | None = None
    description: Text5000 | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)


class AccountSummary(BaseModel):
    id: str
    username: str
    password_changed_at: dt.datetime


class ResourceOut(BaseModel):
    id: str
    name: str
    type: str
    address: str
    description: str
    tags: list[str]
    owner_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    permission: Permission | None = None


class ResourceDetail(ResourceOut):
    accounts: list[AccountSummary]


class AccountCreate(In):
    username: Text200Required
    password: Text4096Required
    notes: Text4096 | None = None


class AccountUpdate(In):
    username: Text200Required | None = None
    password: Text4096Required | None = None
    notes: Text4096 | None = None


class AccountOut(BaseModel):
    id: str
    resource_id: str
    resource_name: str
    username: str
    created_at: dt.datetime
    updated_at: dt.datetime
    password_changed_at: dt.datetime
    permission: Permission


class PasswordOut(BaseModel):
    account_id: str
    username: str
    password: str
    notes: str | None


class HistoryItem(BaseModel):
    id: str
    changed_by: str
    retired_at: dt.datetime
    password: str | None = None


class ShareIn(In):
    permission: Permission


class ShareOut(BaseModel):
    user_id: str
    username: str
    permission: Permission
    created_at: dt.datetime


class GenerateIn(In):
    length: int = Field(default=20, ge=8, le=256)
    lowercase: bool = True
    uppercase: bool = True
    digits: bool = True
    symbols: bool = True
    exclude_ambiguous: bool = False


class GenerateOut(BaseModel):
    password: str


class ExportIn(In):
    password: Text1024Required
    totp: TotpCode | None = None


class ImportOut(BaseModel):
    resources_created: int
    accounts_created: int
    accounts_updated: int


class AuditRecordOut(BaseModel):
    id: int
    server_id: str
    server_name: str
    server_role: str
    seq: int
    at: dt.datetime
    actor: str
    source_ip: str
    action: str
    target_type: str
    target_id: str
    target_name: str
    result: str
    detail: dict[str, object]


class ChainServer(BaseModel):
    server_id: str
    records: int


class ChainProblem(BaseModel):
    server_id: str
    record_id: int | None
    seq: int | None
    problem: str


class ChainReportOut(BaseModel):
    ok: bool
    servers: list[ChainServer]
    problems: list[ChainProblem]


LoginOut.model_rebuild()
