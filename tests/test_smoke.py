def test_healthz_reports_database_and_migrations(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.json
    assert response.json == {"status": "ok", "checks": {"database": "ok", "migrations": "ok"}}
