"""Fixtures shared by the real-browser tests (tests/test_browser.py, tests/test_browser_inspect.py): a JupyterLab
server and a headless Chromium per test file (a server per file: `LabNotebook` waits on the one kernel of its server,
and the server restores its workspace's open notebooks), a fresh browser context per test."""
import shutil

import pytest

VIEWPORT = {'width': 1400, 'height': 1600}


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "JupyterLab on a free loopback port, serving a temporary root; always stopped (process group and kernels)."
    from browser_utils import JupyterLab, artifacts_root, require_browser
    require_browser()
    server = JupyterLab(tmp_path_factory.mktemp('lab_root'), tmp_path_factory.mktemp('lab_home'))
    try: yield server.start()
    finally:
        server.stop()
        artifacts_root().mkdir(parents=True, exist_ok=True)
        shutil.copy(server.log, artifacts_root()/'jupyterlab.log')   # the server's log beside the screenshots


@pytest.fixture(scope='module')
def browser(lab):
    from playwright.sync_api import sync_playwright
    from browser_utils import launch_chromium
    with sync_playwright() as p:
        b = launch_chromium(p)
        try: yield b
        finally: b.close()


@pytest.fixture
def page(browser):
    "A fresh browser context (no cookies, no storage) per test."
    ctx = browser.new_context(viewport=VIEWPORT)
    try: yield ctx.new_page()
    finally: ctx.close()
