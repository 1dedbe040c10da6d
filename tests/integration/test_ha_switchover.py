"""Switchover (planned role swap) under a concurrent writer: no acknowledged write is lost."""

from __future__ import annotations

import ssl
import threading
import time

import httpx

from tests.integration.test_ha_failover import resources
from tests.support import Server, run_cli, wait_until


class Writer(threading.Thread):
    """Creates resources one after another; follows the read-only server's redirect to the primary
    (keeping its token); remembers every name whose creation was acknowledged (201)."""

    def __init__(self, url: str, token: str, ca: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.ca = url, token, ca
        self.acked: list[str] = []
        self.ack_times: list[float] = []
        self.failures = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=10, headers={"Authorization": f"Bearer {self.token}"}) as c:
            while not self.stop_flag.is_set():
                n += 1
                name = f"w-{n}"
                try:
                    r = c.post(f"{self.url}/api/v1/resources", json={"name": name})
                    if r.status_code == 307:
                        location = httpx.URL(r.headers["location"])
                        self.url = f"{location.scheme}://{location.host}:{location.port}"
                        r = c.post(f"{self.url}/api/v1/resources", json={"name": name})
                except httpx.HTTPError:
                    self.failures += 1
                    time.sleep(0.05)
                    continue
                if r.status_code == 201:
                    self.acked.append(name)
                    self.ack_times.append(time.monotonic())
                else:
                    self.failures += 1
                    time.sleep(0.05)

    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.ack_times, self.ack_times[1:], strict=False)), default=0.0)


def test_switchover_under_a_writer_loses_no_acknowledged_write(primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    token = primary.login()
    wait_until(lambda: (readonly.client().get("/ha/local").json()["data_age_seconds"] or 99) < 5, timeout=30,
               what="the replica to stream")
    writer = Writer(primary.url, token, primary.ca)
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 20, timeout=30, what="the writer to get going")
        out = run_cli("ha", "switchover", "--data-dir", str(primary.data_dir), "--to", "readonly")
        assert "is the primary (generation 2)" in out.stdout, out.stdout + out.stderr
        before = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= before + 20, timeout=60,
                   what="the writer to be acknowledged by the new primary")
    finally:
        writer.stop_flag.set()
        writer.join(timeout=30)
    acked = set(writer.acked)
    on_new_primary = resources(readonly.data_dir)
    assert acked <= on_new_primary, f"lost acknowledged writes: {sorted(acked - on_new_primary)[:10]}"
    assert writer.url == readonly.url  # the old primary sent the writer on to the new one
    with readonly.client(readonly.login()) as c:
        local = c.get("/ha/local").json()
        events = c.get("/ha/events").json()["items"]
    assert local["role"] == "primary" and local["generation"] == 2
    switches = [e for e in events if e["kind"] == "ManualSwitch"]
    assert len(switches) == 1 and switches[0]["args"][0] == "readonly", events
    # the old primary is now the new primary's replica, and it follows it
    wait_until(lambda: primary.client().get("/ha/local").json()["role"] == "readonly", timeout=30,
               what="the old primary to carry on as a read-only server")
    wait_until(lambda: resources(primary.data_dir) == resources(readonly.data_dir), timeout=30,
               what="the old primary's replica to converge")
    print(f"switchover: {len(acked)} acknowledged writes, longest gap between acknowledgements "
          f"{writer.longest_gap():.2f} s, {writer.failures} refused/failed attempts")
