"""The simulator apart: nothing else in ``wechat`` imports it, and its state is shared by every process.

Two stores opened on the same database file (or Redis, or PostgreSQL when ``TEST_DATABASE_URL`` is
set) stand for two processes: what one simulator records, the other sees, and concurrent steps
never lose an update.
"""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from wechat.sim.errors import SimError
from wechat.sim.keys import Material
from wechat.sim.state import SimulatorState
from wechat.sim.store import SqlStore, open_store, shared_engine
from wechat.sim.wiring import MATERIAL, reset, shared_material

WECHAT_DIR = Path(__file__).resolve().parents[2] / "wechat"
REPORT = [{"info_type": "活动名称", "info_content": "双向返利"}, {"info_type": "奖励说明", "info_content": "消费返现"}]


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_else_in_wechat_imports_the_simulator():
    outside = [p for p in sorted(WECHAT_DIR.rglob("*.py")) if WECHAT_DIR / "sim" not in p.parents]
    assert len(outside) > 10  # the whole package was looked at
    for path in outside:
        bad = {name for name in _imports_of(path) if name == "wechat.sim" or name.startswith("wechat.sim.")}
        assert not bad, f"{path.relative_to(WECHAT_DIR.parent)} imports the simulator: {sorted(bad)}"


def test_only_the_app_factory_imports_the_simulator_and_only_when_asked():
    root = WECHAT_DIR.parent
    skip = {".venv", "tests", "migrations"}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if (
            parts[0] in skip
            or parts[0].startswith(".")
            or path.is_relative_to(WECHAT_DIR / "sim")
            or parts == ("app.py",)
        ):
            continue
        bad = {name for name in _imports_of(path) if name == "wechat.sim" or name.startswith("wechat.sim.")}
        assert not bad, f"{path.relative_to(root)} imports the simulator: {sorted(bad)}"
    # app.py imports it inside a function (simulator mode), never at module level
    tree = ast.parse((root / "app.py").read_text(encoding="utf-8"))
    top_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)} | {
        a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in top_level if m and (m == "wechat" or m.startswith("wechat.sim"))}


# -- two processes, one store ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(  # noqa: S603 - the redis-server found on PATH, our arguments
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


BACKENDS = ["sqlite", "redis", "postgresql"]


@pytest.fixture(params=BACKENDS)
def two_stores(request, tmp_path):
    """Two stores on one backing, as two processes would open it."""
    if request.param == "sqlite":
        url, redis = f"sqlite:///{tmp_path / 'app.db'}", None
    elif request.param == "redis":
        url, redis = None, request.getfixturevalue("redis_url")
    else:
        url = os.environ.get("TEST_DATABASE_URL") if os.environ.get("TEST_DB_BACKEND") != "sqlite" else None
        if not url:
            pytest.skip("TEST_DATABASE_URL is not set")
        redis = None
    first, second = open_store(url, redis), open_store(url, redis)
    first.clear()
    yield first, second
    first.clear()


def _state(store, material: Material) -> SimulatorState:
    return SimulatorState(
        mchid="1900000109",
        apiv3_key=material.apiv3_key,
        merchant_public_key=material.merchant_key.public_key(),
        keys=material.keys,
        store=store,
        card_key=material.card_key,
        notify_initial_delay_s=0,
    )


def _transfer_body(out_bill_no: str) -> dict:
    return {
        "appid": "wxsim0miniprogram",
        "out_bill_no": out_bill_no,
        "transfer_scene_id": "1000",
        "openid": "sim-openid-alice",
        "transfer_amount": 500,
        "transfer_remark": "返利",
        "transfer_scene_report_infos": REPORT,
    }


def test_a_transfer_sent_by_one_process_is_confirmed_by_the_other(two_stores):
    # given: two processes' simulators, each with the material the store handed it
    jobs_store, web_store = two_stores
    jobs, web = _state(jobs_store, shared_material(jobs_store)), _state(web_store, shared_material(web_store))
    try:
        # when: the jobs process sends a transfer bill and the person confirms it on the web server
        package_info = jobs.create_transfer(_transfer_body("TB1"), None)["package_info"]
        confirmed = web.confirm_transfer(package_info)
        # then: both see it finished, and a second confirmation is refused wherever it arrives
        assert confirmed["state"] == "SUCCESS"
        assert jobs.query_transfer("TB1")["state"] == "SUCCESS"
        with pytest.raises(SimError):
            jobs.confirm_transfer(package_info)
    finally:
        jobs.dispatcher.stop()
        web.dispatcher.stop()


def test_every_process_gets_the_same_keys(two_stores):
    first, second = two_stores
    a, b = shared_material(first), shared_material(second)
    assert a.to_record() == b.to_record()
    # a card code encrypted by one process decrypts in the other
    web, jobs = _state(first, a), _state(second, b)
    web.card_codes["123456789012"] = {"card_id": "c1", "openid": "o", "custom": False, "status": "NORMAL"}
    assert jobs.decrypt_card_code(web.encrypt_card_code("123456789012"))["code"] == "123456789012"
    # and a test reset forgets the records, not the keys
    reset(web)
    assert web.card_codes == {} and second.get(*MATERIAL) == a.to_record()


def test_concurrent_steps_lose_no_update(two_stores):
    # given: two processes, four threads each, all counting in one record
    stores, rounds = two_stores, 15

    def count(store) -> None:
        for _ in range(rounds):
            with store.lock:
                value = store.get("counters", "shared") or 0
                time.sleep(0.001)  # widen the window between read and write
                store.put("counters", "shared", value + 1)

    threads = [threading.Thread(target=count, args=(stores[i % 2],)) for i in range(8)]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then: every increment landed
    assert stores[0].get("counters", "shared") == 8 * rounds


def test_a_failed_step_changes_nothing(two_stores):
    first, second = two_stores
    first.put("orders", "O0", {"trade_state": "NOTPAY"})
    with pytest.raises(SimError), first.lock:
        first.put("orders", "O1", {"trade_state": "NOTPAY"})
        first.put("orders", "O0", {"trade_state": "SUCCESS"})
        assert first.get("orders", "O1") == {"trade_state": "NOTPAY"}  # a step reads its own writes
        assert dict(first.items("orders"))["O0"] == {"trade_state": "SUCCESS"}
        raise SimError(400, "PARAM_ERROR")
    assert second.get("orders", "O1") is None
    assert second.get("orders", "O0") == {"trade_state": "NOTPAY"}


def test_a_record_saves_itself_when_a_field_changes(two_stores):
    first, second = two_stores
    first.put("redpacks", "RP1", {"status": "SENT", "params": {"total_amount": "100"}})
    packet = first.collection("redpacks")["RP1"]
    packet["params"]["total_amount"] = "50000"  # a nested field, as the tests plant a wrong answer
    packet["status"] = "REFUND"
    assert second.get("redpacks", "RP1") == {"status": "REFUND", "params": {"total_amount": "50000"}}


def test_callbacks_wait_for_the_commit(two_stores):
    first, _ = two_stores
    seen = []
    with first.lock:
        first.after_commit(lambda: seen.append("sent"))
        assert seen == []
    assert seen == ["sent"]
    with pytest.raises(SimError), first.lock:
        first.after_commit(lambda: seen.append("never"))
        raise SimError(400, "PARAM_ERROR")
    assert seen == ["sent"]


def test_the_database_store_is_apart_from_the_app_schema(tmp_path):
    # SQLite: a file of its own beside the application's; PostgreSQL: its own schema
    store = open_store(f"sqlite:///{tmp_path / 'rebate.db'}")
    assert isinstance(store, SqlStore)
    assert Path(store.engine.url.database) == tmp_path / "rebate.wechat_sim.db"
    assert not (tmp_path / "rebate.db").exists()
    url = os.environ.get("TEST_DATABASE_URL") if os.environ.get("TEST_DB_BACKEND") != "sqlite" else None
    if url:
        from sqlalchemy import inspect

        SqlStore(shared_engine(url))
        tables = inspect(shared_engine(url))
        assert "wechat_sim_records" in tables.get_table_names(schema="wechat_sim")
        assert "wechat_sim_records" not in tables.get_table_names(schema="public")
