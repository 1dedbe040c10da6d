from tests.support import Server


def test_health_over_https(shared_server: Server) -> None:
    with shared_server.client() as c:
        r = c.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["server"]["role"] == "standalone"
