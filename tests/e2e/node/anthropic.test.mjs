// The official Anthropic Node SDK against fungible's Messages API: one streamed tool call
// per provider, read back through the SDK's own stream accumulator.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { startGateway } from "./harness.mjs";

let gw;
before(async () => { gw = await startGateway(); });
after(() => gw?.stop());

const tools = [{
  name: "get_weather",
  description: "Current weather for a city.",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
}];

for (const provider of ["openai", "anthropic", "gemini", "groq"]) {
  test(`messages streaming tool calls via ${provider}`, async () => {
    const client = new Anthropic({ baseURL: gw.origin, apiKey: "sk-ant-client", maxRetries: 0 });
    const stream = client.messages.stream({
      model: `${provider}/tools_stream`,
      max_tokens: 1024,
      messages: [{ role: "user", content: "Weather in Paris and Tokyo?" }],
      tools,
    });
    const inputs = [];
    stream.on("contentBlock", (block) => {
      if (block.type === "tool_use") inputs.push(block.input);
    });
    const final = await stream.finalMessage();
    assert.equal(final.stop_reason, "tool_use");
    const calls = final.content.filter((b) => b.type === "tool_use");
    assert.deepEqual(calls.map((c) => c.input), [{ city: "Paris" }, { city: "Tokyo" }]);
    assert.deepEqual(inputs, [{ city: "Paris" }, { city: "Tokyo" }]);
    assert.ok(calls.every((c) => c.name === "get_weather" && c.id));
    assert.notEqual(calls[0].id, calls[1].id);
    assert.equal(final.usage.input_tokens, 30);
    assert.equal(final.usage.output_tokens, 20);
  });
}
