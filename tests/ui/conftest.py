"""Starts the mock upstream and `fungible serve` with auth on and a SQLite store, and a
headless Chromium (the system's, driven by Playwright) for the web UI tests."""

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processes import free_port, stop, wait_until_up  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("FUNGIBLE_BIN_DIR", ROOT / "target" / "debug"))
SCREENSHOTS = ROOT / "target" / "ui-screenshots"
ADMIN_KEY = "ui-test-admin-key-0123456789"
CHROMIUM = os.environ.get("FUNGIBLE_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


class Gateway:
    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body=None, key: str = ADMIN_KEY, headers=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {key}")
        request.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")

    def key(self, name: str, **settings) -> tuple[str, str]:
        status, _, body = self.call("POST", "/admin/keys", {"name": name, **settings})
        assert status == 201, body
        return body["id"], body["key"]

    def chat(self, key: str, model: str, text: str) -> str:
        status, headers, body = self.call(
            "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}]}, key=key
        )
        assert status == 200, body
        return headers["x-fungible-inference-id"]

    def chat_stream(self, key: str, model: str, text: str) -> str:
        """A streamed chat, read to its end; its inference id."""
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
        request = urllib.request.Request(self.url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST")
        request.add_header("authorization", f"Bearer {key}")
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            events = response.read().decode()
            assert response.status == 200 and "data: [DONE]" in events, events
            return response.headers["x-fungible-inference-id"]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    mock_port, port = free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    mock = subprocess.Popen(
        [BIN_DIR / "fungible-mock", "--addr", f"127.0.0.1:{mock_port}", "--fixtures", ROOT / "tests" / "fixtures"]
    )
    procs = [mock]
    try:
        wait_until_up(mock_url + "/", mock, "fungible-mock")
        config = tmp / "fungible.toml"
        config.write_text(
            f'[auth]\nenabled = true\n[store]\npath = "{tmp / "fungible.db"}"\nflush_interval_ms = 10\n'
            "[models.assistant]\ntargets = [{ target = \"openai/stream\" }, { target = \"anthropic/stream\" }]\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.endswith("_BASE_URL")}
        env.update(
            OPENAI_API_KEY="sk-ui-openai-secret",
            ANTHROPIC_API_KEY="sk-ant-ui-secret",
            OPENAI_BASE_URL=f"{mock_url}/v1",
            ANTHROPIC_BASE_URL=mock_url,
            FUNGIBLE_ADMIN_KEY=ADMIN_KEY,
            FUNGIBLE_LOG="warn",
        )
        serve = subprocess.Popen(
            [BIN_DIR / "fungible", "serve", "--config", str(config), "--port", str(port)], env=env, cwd=tmp
        )
        procs.append(serve)
        wait_until_up(f"http://127.0.0.1:{port}/health", serve, "fungible serve")
        yield Gateway(f"http://127.0.0.1:{port}")
    finally:
        for p in reversed(procs):
            stop(p)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: install Debian's chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def screenshot(page, name: str) -> None:
    """The page at a laptop and a phone width, into target/ui-screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for width, label in [(1280, "laptop"), (390, "phone")]:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(size)
