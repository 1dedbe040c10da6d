"""Vault's clients against a real Safehold server over HTTPS with its CA (docs/VAULT-API.md): hvac and an
Ansible playbook run for real; Terraform's vault provider, External Secrets and vault-agent (consul-template)
are not installed here, so the requests their sources make — method, path, headers, body — are replayed,
and their answers checked for the fields those sources read.

One server for the module (the session's shared one): a user with a personal API token, a resource shared
with it for modify, one for view and one not shared, each with an account whose password changed once (two
versions)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
import requests
from hvac import exceptions as hvac_errors

from tests.support import Server

MOUNT = "safehold"


@dataclass
class Vault:
    server: Server
    admin: str            # the administrator's session token (REST API)
    user: str             # the reading user's name
    token: str            # the user's personal API token, the "Vault token"
    modify: str           # resource names: shared for modify, for view, not shared
    view: str
    hidden: str
    accounts: dict[str, str]  # resource name -> its account's id

    def client(self, token: str | None = None, **headers: str) -> hvac.Client:
        """hvac as documented: ``strict_http`` lists with ``GET ?list=true`` (the server's HTTP parser knows no
        LIST method)."""
        session = requests.Session()
        session.headers.update(headers)
        session.verify = self.server.ca  # hvac takes a given session's own verify over its argument
        return hvac.Client(url=self.server.url, token=token or self.token, verify=self.server.ca, session=session,
                           strict_http=True)

    def read(self, path: str, version: int | None = None, **headers: str) -> dict[str, Any]:
        return self.client(**headers).secrets.kv.v2.read_secret_version(  # type: ignore[no-any-return]
            path=path, version=version, mount_point=MOUNT, raise_on_deleted_version=True)

    def retrievals(self, resource: str) -> list[dict[str, Any]]:
        """The audit trail's password retrievals of the resource's account, by the user."""
        with self.server.client(self.admin) as c:
            r = c.get("/audit", params={"action": "password_retrieved", "actor": self.user, "limit": 500})
        assert r.status_code == 200, r.text
        return [rec for rec in r.json()["items"] if rec["target_id"] == self.accounts[resource]]

    def raw(self) -> httpx.Client:
        """A plain HTTPS client for replaying other tools' requests, byte for byte."""
        return httpx.Client(base_url=self.server.url, verify=self.server.ssl_context(), timeout=30)


def password(resource: str, version: int) -> str:
    return f"pw-{version}-{resource}"


@pytest.fixture(scope="module")
def vault(shared_server: Server, admin_token: str) -> Iterator[Vault]:
    tag = secrets.token_hex(4)
    names = {p: f"vk-{tag}-{p}" for p in ("modify", "view", "hidden")}
    accounts: dict[str, str] = {}
    with shared_server.client(admin_token) as c:
        user = c.post("/users", json={"username": f"vk-{tag}", "password": f"Vk-Password-{tag}-long",
                                      "role": "user"})
        assert user.status_code == 201, user.text
        uid = user.json()["id"]
        made = c.post(f"/users/{uid}/tokens", json={"name": "automation", "days": 30})
        assert made.status_code == 201, made.text
        for permission, name in names.items():
            rid = c.post("/resources", json={"name": name, "type": "database", "address": f"{name}.example.internal",
                                             "tags": ["prod", "vault-api"]}).json()["id"]
            a = c.post(f"/resources/{rid}/accounts", json={"username": "root", "password": password(name, 1),
                                                          "notes": "break-glass only"})
            assert a.status_code == 201, a.text
            accounts[name] = a.json()["id"]
            changed = c.patch(f"/accounts/{accounts[name]}", json={"password": password(name, 2)})
            assert changed.status_code == 200, changed.text
            if permission != "hidden":
                shared = c.put(f"/resources/{rid}/shares/{uid}", json={"permission": permission})
                assert shared.status_code == 204, shared.text
    yield Vault(shared_server, admin_token, f"vk-{tag}", made.json()["token"], names["modify"], names["view"],
                names["hidden"], accounts)


# --- hvac -----------------------------------------------------------------------------------------

def test_hvac_reads_what_the_token_may_see_and_each_read_is_audited_once(vault: Vault) -> None:
    assert vault.client().is_authenticated()
    assert not vault.client(token="sht_" + "x" * 43).is_authenticated()  # a wrong token: Vault's 403

    latest = vault.read(f"{vault.modify}/root", **{"X-Safehold-Reason": "deploy #42"})
    assert latest["data"]["data"] == {"username": "root", "password": password(vault.modify, 2),
                                      "resource": vault.modify, "address": f"{vault.modify}.example.internal",
                                      "type": "database", "notes": "break-glass only"}
    meta = latest["data"]["metadata"]
    assert meta["version"] == 2 and meta["deletion_time"] == "" and meta["destroyed"] is False
    assert meta["custom_metadata"]["account_id"] == vault.accounts[vault.modify]
    assert latest["lease_duration"] == 0 and latest["renewable"] is False

    older = vault.read(f"{vault.modify}/root", version=1)
    assert older["data"]["data"]["password"] == password(vault.modify, 1)
    assert older["data"]["metadata"]["version"] == 1 and "notes" not in older["data"]["data"]
    assert older["data"]["metadata"]["created_time"] < meta["created_time"]

    # shared for view: the current password, but not the history (as the REST API)
    assert vault.read(f"{vault.view}/root")["data"]["data"]["password"] == password(vault.view, 2)
    with pytest.raises(hvac_errors.Forbidden):
        vault.read(f"{vault.view}/root", version=1)
    # not shared: denied, as a resource that does not exist at all
    with pytest.raises(hvac_errors.Forbidden):
        vault.read(f"{vault.hidden}/root")
    with pytest.raises(hvac_errors.Forbidden):
        vault.read(f"vk-no-such-{secrets.token_hex(4)}/root")
    # inside a resource it sees: not found
    with pytest.raises(hvac_errors.InvalidPath):
        vault.read(f"{vault.modify}/no-such-account")
    with pytest.raises(hvac_errors.InvalidPath):
        vault.read(f"{vault.modify}/root", version=3)

    records = vault.retrievals(vault.modify)
    assert len(records) == 2, records
    by_history = {bool(r["detail"].get("history")): r for r in records}
    assert by_history[False]["detail"] == {"via": "vault-api", "reason": "deploy #42"}
    assert by_history[True]["detail"]["via"] == "vault-api" and by_history[True]["detail"]["count"] == 1
    assert [r["detail"] for r in vault.retrievals(vault.view)] == [{"via": "vault-api"}]
    assert vault.retrievals(vault.hidden) == []
    # the Authorization header works as well as X-Vault-Token
    with vault.raw() as c:
        r = c.get(f"/v1/{MOUNT}/data/{vault.view}/root", headers={"Authorization": f"Bearer {vault.token}"})
    assert r.status_code == 200 and r.json()["data"]["data"]["password"] == password(vault.view, 2)
    assert r.headers["cache-control"] == "no-store"


def test_hvac_lists_and_reads_metadata_of_what_it_may_see(vault: Vault) -> None:
    kv2 = vault.client().secrets.kv.v2
    top = kv2.list_secrets(path="", mount_point=MOUNT)["data"]["keys"]
    assert f"{vault.modify}/" in top and f"{vault.view}/" in top and f"{vault.hidden}/" not in top
    assert kv2.list_secrets(path=vault.view, mount_point=MOUNT)["data"]["keys"] == ["root"]
    with pytest.raises(hvac_errors.InvalidPath):
        kv2.list_secrets(path=vault.hidden, mount_point=MOUNT)
    before = len(vault.retrievals(vault.view))
    meta = kv2.read_secret_metadata(path=f"{vault.view}/root", mount_point=MOUNT)["data"]
    assert meta["current_version"] == 2 and sorted(meta["versions"]) == ["1", "2"]
    assert len(vault.retrievals(vault.view)) == before  # metadata reveals no password: nothing to audit
    mounts = vault.client().sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{MOUNT}/"]["type"] == "kv" and mounts[f"{MOUNT}/"]["options"] == {"version": "2"}
    looked = vault.client().lookup_token()["data"]
    assert looked["policies"] == ["default", "safehold-user"] and looked["type"] == "service"
    assert 29 * 86400 < looked["ttl"] <= 30 * 86400 and looked["expire_time"]
    assert looked["meta"]["username"] == vault.user


# --- Ansible --------------------------------------------------------------------------------------

def test_an_ansible_playbook_reads_a_password_with_vault_kv2_get(vault: Vault) -> None:
    playbook = textwrap.dedent(f"""\
        - hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: read a Safehold password as a Vault KV version 2 secret
              ansible.builtin.debug:
                msg: "password={{{{ lookup('community.hashi_vault.vault_kv2_get', '{vault.view}/root',
                      engine_mount_point='{MOUNT}', token_validate=true).secret.password }}}}"
        """)
    home = Path.home() / ".ansible"
    had_home = home.exists()
    before = len(vault.retrievals(vault.view))
    with tempfile.TemporaryDirectory(prefix="safehold-ansible-") as tmp:
        root = Path(tmp)
        (root / "read.yml").write_text(playbook)
        (root / "ansible.cfg").write_text("")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VAULT_"))},
               "HOME": str(root), "ANSIBLE_HOME": str(root / "ansible"), "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
               "ANSIBLE_LOCAL_TEMP": str(root / "ansible" / "tmp"), "ANSIBLE_REMOTE_TEMP": str(root / "ansible" / "remote"),
               "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
               "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
               "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
               # the connection, never on the command line: the token stays out of the process list
               "ANSIBLE_HASHI_VAULT_ADDR": vault.server.url, "ANSIBLE_HASHI_VAULT_TOKEN": vault.token,
               "ANSIBLE_HASHI_VAULT_CA_CERT": vault.server.ca}
        run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "read.yml"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"password={password(vault.view, 2)}" in run.stdout, run.stdout
    assert len(vault.retrievals(vault.view)) == before + 1
    assert home.exists() == had_home  # nothing written to the real home


# --- Terraform, External Secrets, vault-agent: their requests replayed --------------------------------

def go_headers(token: str, agent: str) -> dict[str, str]:
    """What Go's Vault client (github.com/hashicorp/vault/api) sends with every request."""
    return {"X-Vault-Token": token, "X-Vault-Request": "true", "User-Agent": agent, "Accept-Encoding": "gzip"}


TERRAFORM = "Terraform/1.9.8 (+https://www.terraform.io) Terraform-Plugin-SDK/2.34.0 terraform-provider-vault/4.4.0"


def test_terraforms_vault_provider_requests(vault: Vault) -> None:
    with vault.raw() as c:
        # configure: lookup-self (policies, ttl), then a child token for 20 minutes (skip_child_token unset)
        looked = c.get("/v1/auth/token/lookup-self", headers=go_headers(vault.token, TERRAFORM))
        assert looked.status_code == 200, looked.text
        assert isinstance(looked.json()["data"]["policies"], list) and isinstance(looked.json()["data"]["ttl"], int)
        body = b'{"ttl":"1200s","explicit_max_ttl":"1200s","display_name":"terraform","num_uses":0,' \
               b'"renewable":false,"type":"","entity_alias":""}'  # Go's json.Marshal of TokenCreateRequest
        made = c.post("/v1/auth/token/create", content=body, headers=go_headers(vault.token, TERRAFORM))
        assert made.status_code == 200, made.text
        auth = made.json()["auth"]
        assert auth["policies"] == ["default", "safehold-user"] and 1190 <= auth["lease_duration"] <= 1200
        child = auth["client_token"]
        child_info = c.get("/v1/auth/token/lookup-self", headers=go_headers(child, TERRAFORM)).json()["data"]
        assert 1100 < child_info["ttl"] <= 1200 and child_info["expire_time"] is not None

        # data "vault_kv_secret_v2": GET {mount}/data/{name}, and ?version=N when set
        read = c.get(f"/v1/{MOUNT}/data/{vault.modify}/root", headers=go_headers(child, TERRAFORM))
        assert read.status_code == 200, read.text
        secret = read.json()["data"]
        assert all(isinstance(v, str) for v in secret["data"].values())  # serializeDataMapToString
        assert secret["data"]["password"] == password(vault.modify, 2)
        assert {"created_time", "deletion_time", "destroyed", "custom_metadata"} <= set(secret["metadata"])
        old = c.get(f"/v1/{MOUNT}/data/{vault.modify}/root?version=1", headers=go_headers(child, TERRAFORM))
        assert old.json()["data"]["data"]["password"] == password(vault.modify, 1)
        # a child token is no wider than its parent
        wider = c.post("/v1/auth/token/create", content=b'{"policies":["root"],"display_name":"x","num_uses":0}',
                       headers=go_headers(child, TERRAFORM))
        assert wider.status_code == 400 and wider.json()["errors"], wider.text
        denied = c.get(f"/v1/{MOUNT}/data/{vault.hidden}/root", headers=go_headers(child, TERRAFORM))
        assert denied.status_code == 403 and denied.json()["errors"][0].startswith("permission denied")
    with vault.server.client(vault.admin) as c:
        tokens = c.get("/audit", params={"action": "token_created", "actor": vault.user}).json()["items"]
    assert any("terraform (Vault child of automation)" in t["target_name"] for t in tokens), tokens


ESO = "external-secrets"


def test_external_secrets_requests(vault: Vault) -> None:
    headers = go_headers(vault.token, ESO)
    with vault.raw() as c:
        # checkToken: type, ttl (a json.Number it reads as Int64) and expire_time must be there
        data = c.get("/v1/auth/token/lookup-self", headers=headers).json()["data"]
        assert data["type"] == "service" and type(data["ttl"]) is int and "expire_time" in data
        assert data["ttl"] >= 60  # else the token is taken for expired

        # a SecretStore with path "safehold", version "v2": ReadWithData at safehold/data/<key>
        got = c.get(f"/v1/{MOUNT}/data/{vault.view}/root", headers=headers)
        assert got.json()["data"]["data"]["password"] == password(vault.view, 2)
        versioned = c.get(f"/v1/{MOUNT}/data/{vault.modify}/root", params={"version": "1"}, headers=headers)
        assert versioned.json()["data"]["data"]["password"] == password(vault.modify, 1)
        # metadataPolicy: Fetch reads custom_metadata, every value a string
        custom = c.get(f"/v1/{MOUNT}/metadata/{vault.view}/root", headers=headers).json()["data"]["custom_metadata"]
        assert all(isinstance(v, str) for v in custom.values()) and custom["tags"] == "prod,vault-api"
        # a missing key: 404, which the Go client reads as no secret
        missing = c.get(f"/v1/{MOUNT}/data/{vault.view}/nobody", headers=headers)
        assert missing.status_code == 404 and "errors" in missing.json()

        # dataFrom.find: List (GET ...?list=true) from the top, folders followed
        def walk(path: str) -> list[str]:
            r = c.get(f"/v1/{MOUNT}/metadata/{path}", params={"list": "true"}, headers=headers)
            if r.status_code == 404:
                return []
            assert r.status_code == 200, r.text
            found: list[str] = []
            for key in r.json()["data"]["keys"]:
                found += walk(path + key) if key.endswith("/") else [path + key]
            return found

        found = walk("")
    assert f"{vault.modify}/root" in found and f"{vault.view}/root" in found
    assert f"{vault.hidden}/root" not in found


AGENT = "Vault/1.17.6 (+https://www.vaultproject.io/; go1.22.7)"


def test_vault_agent_and_consul_template_requests(vault: Vault) -> None:
    headers = go_headers(vault.token, AGENT)
    secret = f"{MOUNT}/{vault.view}/root"  # {{ with secret "safehold/<resource>/<account>" }}
    with vault.raw() as c:
        # checkForKV2: the preflight says the mount's KV version ("2", a string) and its path
        mount = c.get(f"/v1/sys/internal/ui/mounts/{secret}", headers=headers).json()["data"]
        assert mount["options"]["version"] == "2" and mount["path"] == f"{MOUNT}/"
        # readSecret: mountPath + "data/" + the rest
        query = mount["path"] + "data/" + secret.removeprefix(mount["path"])
        got = c.get(f"/v1/{query}", headers=headers)
        assert got.status_code == 200 and got.json()["data"]["data"]["password"] == password(vault.view, 2)
        assert got.json()["renewable"] is False and got.json()["lease_duration"] == 0  # re-read on its own schedule
        elsewhere = c.get("/v1/sys/internal/ui/mounts/secret/app", headers=headers)
        assert elsewhere.status_code == 403 and elsewhere.json()["errors"]


# --- errors ---------------------------------------------------------------------------------------

def test_errors_are_vaults_and_the_rest_api_keeps_its_own(vault: Vault) -> None:
    token = {"X-Vault-Token": vault.token}
    written = f"pw-written-{secrets.token_hex(4)}"
    with vault.raw() as c:
        cases = [
            c.get(f"/v1/{MOUNT}/data/{vault.view}/root"),  # no token
            c.get(f"/v1/{MOUNT}/data/{vault.view}/root", headers={"X-Vault-Token": vault.admin}),  # a session token
            c.get(f"/v1/{MOUNT}/data/{vault.view}/root", params={"version": "two"}, headers=token),
            c.post(f"/v1/{MOUNT}/data/{vault.view}/root", json={"data": {"password": written}}, headers=token),
            c.delete(f"/v1/{MOUNT}/metadata/{vault.view}/root", headers=token),
            c.get("/v1/secret/data/app", headers=token),
            c.get("/v1/sys/no-such-thing", headers=token),
            c.get(f"/v1/{MOUNT}/metadata/vk-none-{secrets.token_hex(4)}/", params={"list": "true"}, headers=token),
        ]
        statuses = [r.status_code for r in cases]
        assert statuses == [403, 403, 400, 405, 405, 404, 404, 404], [(r.status_code, r.text) for r in cases]
        for r in cases:
            body = r.json()
            assert list(body) == ["errors"] and all(isinstance(m, str) and m for m in body["errors"]), body
            assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-store"
            assert "Error" not in json.dumps(body) and written not in json.dumps(body)
        assert "session tokens" in cases[1].json()["errors"][0]
        # the REST API under /api/v1 answers in its own shape, as before
        rest = c.get("/api/v1/accounts/not-an-id", headers={"Authorization": f"Bearer {vault.token}"})
        assert rest.status_code == 404 and set(rest.json()) == {"error"}
    # an administrator sees every resource: a missing one is not found (not denied)
    admin_token = _admin_api_token(vault)
    with pytest.raises(hvac_errors.InvalidPath):
        vault.client(token=admin_token).secrets.kv.v2.read_secret_version(
            path=f"vk-no-such-{secrets.token_hex(4)}/root", mount_point=MOUNT, raise_on_deleted_version=True)


def _admin_api_token(vault: Vault) -> str:
    with vault.server.client(vault.admin) as c:
        r = c.post("/me/tokens", json={"name": f"vault-api-{secrets.token_hex(3)}", "days": 1})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])
