// The official OpenAI Node SDK: one streaming tool call over every provider.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway } from "./harness.mjs";

let gw;
before(async () => { gw = await startGateway(); });
after(() => gw?.stop());

const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather for a city.",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];

for (const provider of ["openai", "anthropic", "gemini", "groq"]) {
  test(`chat completions streaming tool calls via ${provider}`, async () => {
    const client = new OpenAI({ baseURL: `${gw.origin}/v1`, apiKey: "sk-client", maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: `${provider}/tools_stream`,
      messages: [{ role: "user", content: "Weather in Paris and Tokyo?" }],
      tools,
      stream: true,
    });
    const calls = [];
    let finish = null;
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        finish = choice.finish_reason ?? finish;
        for (const d of choice.delta.tool_calls ?? []) {
          calls[d.index] ??= { id: "", name: "", args: "" };
          if (d.id) calls[d.index].id = d.id;
          if (d.function?.name) calls[d.index].name = d.function.name;
          calls[d.index].args += d.function?.arguments ?? "";
        }
      }
    }
    assert.equal(finish, "tool_calls");
    assert.deepEqual(calls.map((c) => JSON.parse(c.args)), [{ city: "Paris" }, { city: "Tokyo" }]);
    assert.ok(calls.every((c) => c.name === "get_weather" && c.id));
    assert.notEqual(calls[0].id, calls[1].id);
  });
}
