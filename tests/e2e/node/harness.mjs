// Starts the mock upstream and `fungible serve` for one Node test file, like
// tests/e2e/conftest.py does for the Python tests. The model a test asks for names the
// fixture case: `anthropic/tools` -> tests/fixtures/anthropic/tools.response.json.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "../../..");
const BIN_DIR = process.env.FUNGIBLE_BIN_DIR ?? path.join(ROOT, "target", "debug");

export const SECRETS = {
  OPENAI_API_KEY: "sk-e2e-openai-secret",
  ANTHROPIC_API_KEY: "sk-ant-e2e-secret",
  GEMINI_API_KEY: "gm-e2e-secret",
  GROQ_API_KEY: "gsk-e2e-secret",
};

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function waitUntilUp(url, child, what) {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    try {
      await fetch(url);
      return;
    } catch {
      // not listening yet; poll again, bounded by the deadline
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`${what} did not start within 60 s`);
}

/** Starts mock + gateway; returns { origin, stop }. `origin` is http://127.0.0.1:PORT. */
export async function startGateway() {
  const mockPort = await freePort();
  const port = await freePort();
  const mockUrl = `http://127.0.0.1:${mockPort}`;
  const mock = spawn(path.join(BIN_DIR, "fungible-mock"), [
    "--addr", `127.0.0.1:${mockPort}`, "--fixtures", path.join(ROOT, "tests", "fixtures"),
  ], { stdio: "inherit" });
  await waitUntilUp(mockUrl + "/", mock, "fungible-mock");
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.endsWith("_API_KEY") && !k.endsWith("_BASE_URL")),
  );
  Object.assign(env, SECRETS, {
    OPENAI_BASE_URL: `${mockUrl}/v1`,
    ANTHROPIC_BASE_URL: mockUrl,
    GEMINI_BASE_URL: mockUrl,
    GROQ_BASE_URL: `${mockUrl}/openai/v1`,
    FUNGIBLE_LOG: "warn",
  });
  const serve = spawn(path.join(BIN_DIR, "fungible"), ["serve", "--port", String(port)], {
    env, cwd: here, stdio: "inherit",
  });
  const origin = `http://127.0.0.1:${port}`;
  try {
    await waitUntilUp(origin + "/health", serve, "fungible serve");
  } catch (e) {
    mock.kill();
    serve.kill();
    throw e;
  }
  return {
    origin,
    stop() {
      serve.kill();
      mock.kill();
    },
  };
}
