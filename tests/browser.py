"""Browser tests of the console: the test's app served on a real port, driven by Playwright in Debian's
Chromium (``/usr/bin/chromium``; browser downloads are not possible here).

Import the fixtures into a test module::

    from tests.browser import browser, live_server, signed_in  # noqa: F401 - fixtures

Without Chromium or Playwright the browser tests are skipped, except when ``REQUIRE_BROWSER=1``
(``.ci/run`` sets it after installing the browser), where they fail instead. Each test keeps
screenshots under ``test-artifacts/console/`` (``TEST_ARTIFACTS_DIR``): :func:`shot`.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import release_test_session

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts")) / "console"
REQUIRED = os.environ.get("REQUIRE_BROWSER") == "1"


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


_LAUNCHED: list = []  # the browser the first module's fixture started (a second sync_playwright() would fail)


@pytest.fixture(scope="session")
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if REQUIRED:
            pytest.fail("REQUIRE_BROWSER=1 but Chromium or Playwright is missing (apt-get install chromium)")
        pytest.skip("no Chromium (apt-get install chromium) or no Playwright: browser tests skipped")
    if _LAUNCHED:  # each test module that imports this fixture has its own copy: one Playwright per process
        yield _LAUNCHED[0]
        return
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        _LAUNCHED.append(launched)
        try:
            yield launched
        finally:
            _LAUNCHED.clear()
            launched.close()


class LiveServer:
    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def live_server(app) -> Iterator[LiveServer]:
    """The test's own app (and database) served over HTTP in a thread while the test runs."""
    release_test_session()  # the test's writes so far are what the server must see
    with LiveServer(app) as server:
        yield server
    release_test_session(keep_writes=False)


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.console_errors = errors
    yield tab
    context.close()


def shot(tab, name: str) -> Path:
    """A screenshot of the page as it is, kept as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
    tab.screenshot(path=str(path), full_page=True)
    return path


def sign_in(tab, server: LiveServer, token: str) -> None:
    release_test_session()
    tab.goto(server.url + "/console/sign-in")
    tab.fill("input[name=token]", token)
    tab.click("#sign-in")
    tab.wait_for_load_state()
    assert "/console/sign-in" not in tab.url, tab.content()


def chart_option(tab, element_id: str) -> dict:
    """A chart's option as ECharts itself holds it (data, not pixels)."""
    return tab.evaluate(
        "id => JSON.parse(JSON.stringify(echarts.getInstanceByDom(document.getElementById(id)).getOption()))",
        element_id,
    )
