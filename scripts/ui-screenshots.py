"""Takes the README's pictures of the web UI: `fungible serve` over a store filled with
`crates/fungible-server/examples/ui_bench.rs` (a month of synthetic traffic), and the
playground answering with the built-in local model beside a mock upstream.

    UI_BENCH_SQLITE_PATH=/tmp/ui-bench.db target/debug/examples/ui_bench   # once: fill the store
    target/e2e/ui/bin/python scripts/ui-screenshots.py /tmp/ui-bench.db     # writes docs/ui-*.png
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ui"))
from conftest import BIN_DIR, CHROMIUM, ROOT, free_port, stop, wait_until_up  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

store = Path(sys.argv[1]).resolve()
out = ROOT / "docs"
with tempfile.TemporaryDirectory() as tmp:
    mock_port, port = free_port(), free_port()
    mock = subprocess.Popen([BIN_DIR / "fungible-mock", "--addr", f"127.0.0.1:{mock_port}", "--fixtures", ROOT / "tests" / "fixtures"])
    config = Path(tmp) / "fungible.toml"
    config.write_text(
        f'[store]\npath = "{store}"\n'
        "[models.smart]\ntargets = [{ target = \"openai/gpt-5\" }, { target = \"openai/gpt-5-mini\" }]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.endswith("_BASE_URL")}
    env.update(OPENAI_API_KEY="sk-screenshots", OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1", FUNGIBLE_LOG="warn")
    serve = subprocess.Popen([BIN_DIR / "fungible", "serve", "--config", str(config), "--port", str(port)], env=env, cwd=ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{mock_port}/", mock, "fungible-mock")
        wait_until_up(f"http://127.0.0.1:{port}/health", serve, "fungible serve")
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/ui?range=7d")
            page.wait_for_selector("#charts[data-drawn]", timeout=120_000)
            page.screenshot(path=str(out / "ui-overview.png"))
            page.goto(url + "/ui/playground")
            page.wait_for_selector("#pg-columns .column >> nth=1")
            columns = page.locator("#pg-columns .column")
            columns.nth(0).locator(".pg-model").fill("local/smollm2-135m-instruct")
            columns.nth(0).locator(".pg-temperature").fill("0")
            columns.nth(0).locator(".pg-max-tokens").fill("80")
            columns.nth(1).locator(".pg-model").fill("openai/stream")
            page.fill("#pg-system", "Answer in two sentences.")
            page.fill("#pg-user", "Why is the sky blue?")
            page.click("#pg-run")
            for i in (1, 2):
                page.wait_for_selector(f'#pg-columns .column:nth-child({i})[data-state="done"]', timeout=300_000)
            page.screenshot(path=str(out / "ui-playground.png"))
            browser.close()
    finally:
        stop(serve)
        stop(mock)
print(f"wrote {out / 'ui-overview.png'} and {out / 'ui-playground.png'}")
