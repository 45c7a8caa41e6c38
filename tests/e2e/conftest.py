"""Starts the mock upstream and `fungible serve` for the SDK end-to-end tests.

The mock (`fungible-mock --fixtures tests/fixtures`) picks a vendor fixture by path and
model, so the model a test asks for names the case: `anthropic/tools` makes fungible call
Anthropic's Messages API with model `tools`, and the mock answers with
`tests/fixtures/anthropic/tools.response.json`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processes import free_port, wait_until_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("FUNGIBLE_BIN_DIR", ROOT / "target" / "debug"))
PROVIDERS = ["openai", "anthropic", "gemini", "groq"]
# Secrets the gateway holds; the tests check none of them ever reaches the client.
SECRETS = {
    "OPENAI_API_KEY": "sk-e2e-openai-secret",
    "ANTHROPIC_API_KEY": "sk-ant-e2e-secret",
    "GEMINI_API_KEY": "gm-e2e-secret",
    "GROQ_API_KEY": "gsk-e2e-secret",
}


@pytest.fixture(scope="session")
def mock_url():
    """The mock upstream's origin (its fixtures, and its fine-tuning APIs)."""
    mock_port = free_port()
    url = f"http://127.0.0.1:{mock_port}"
    mock = subprocess.Popen(
        [BIN_DIR / "fungible-mock", "--addr", f"127.0.0.1:{mock_port}", "--fixtures", ROOT / "tests" / "fixtures"],
    )
    try:
        wait_until_up(url + "/", mock, "fungible-mock")
        yield url
    finally:
        mock.terminate()
        try:
            mock.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mock.kill()


@pytest.fixture(scope="session")
def gateway(mock_url):
    """The gateway's origin, `http://127.0.0.1:PORT`."""
    port = free_port()
    procs = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.endswith("_BASE_URL")}
        env.update(SECRETS)
        env.update(
            OPENAI_BASE_URL=f"{mock_url}/v1",
            ANTHROPIC_BASE_URL=mock_url,
            GEMINI_BASE_URL=mock_url,
            GROQ_BASE_URL=f"{mock_url}/openai/v1",
            FUNGIBLE_LOG="warn",
        )
        serve = subprocess.Popen(
            [BIN_DIR / "fungible", "serve", "--port", str(port)], env=env, cwd=Path(__file__).parent
        )
        procs.append(serve)
        wait_until_up(f"http://127.0.0.1:{port}/health", serve, "fungible serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture()
def client(gateway):
    import openai

    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-client-key", max_retries=0, timeout=30)
