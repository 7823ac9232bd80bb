"""Fixtures for the console tests: a real server, Debian's chromium driven by Playwright, and
screenshots that the run lists at its end."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import TinyModelFactory
from tests.console.harness import ConsoleEnv, make_console_env

if TYPE_CHECKING:
    from playwright.sync_api import Page, Playwright

CHROMIUM = "/usr/bin/chromium"
# The browser is Debian's, never one that Playwright downloads; nothing may reach the network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = pytest.StashKey[list[Path]]()

Shot = Callable[["Page", str], Path]


# Per module, not per session: Playwright's sync API keeps an event loop of its own, which must
# be gone before later test packages run their own asyncio loops.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def page(playwright_driver: Playwright, tmp_path: Path) -> Iterator[Page]:
    """A fresh browser profile per test, so no session storage carries over."""
    context = playwright_driver.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 860},
    )
    blocked: list[str] = []
    try:
        tab = context.pages[0] if context.pages else context.new_page()
        tab.set_default_timeout(15_000)
        tab.on(
            "console",
            lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
        )
        yield tab
    finally:
        context.close()
    assert not blocked, f"the console's own content-security policy blocked: {blocked}"


@pytest.fixture(scope="module")
def console_env(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[ConsoleEnv]:
    env = make_console_env(tmp_path_factory.mktemp("console"), tiny_model)
    try:
        yield env
    finally:
        env.server.stop()


@pytest.fixture
def shot(request: pytest.FixtureRequest, tmp_path: Path) -> Shot:
    """Saves a full-page screenshot under $TURNOUT_SCREENSHOT_DIR (or the test's tmp_path)."""
    chosen = os.environ.get("TURNOUT_SCREENSHOT_DIR")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        request.config.stash.setdefault(SHOTS, []).append(path)
        return path

    return take


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    shots = terminalreporter.config.stash.get(SHOTS, [])
    if shots:
        terminalreporter.section("console screenshots")
        for path in shots:
            terminalreporter.write_line(str(path))
