// The official OpenAI Node SDK's Responses API: one streaming function call over every
// provider, read both from the raw events and from the SDK's own stream accumulator.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway } from "./harness.mjs";

let gw;
before(async () => { gw = await startGateway(); });
after(() => gw?.stop());

const tools = [{
  type: "function",
  name: "get_weather",
  description: "Current weather for a city.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  strict: false,
}];

for (const provider of ["openai", "anthropic", "gemini", "groq"]) {
  test(`responses streaming function calls via ${provider}`, async () => {
    const client = new OpenAI({ baseURL: `${gw.origin}/v1`, apiKey: "sk-client", maxRetries: 0 });
    const stream = await client.responses.create({
      model: `${provider}/tools_stream`,
      input: "Weather in Paris and Tokyo?",
      tools,
      stream: true,
    });
    const calls = new Map();
    let seq = 0;
    let completed = null;
    for await (const event of stream) {
      assert.equal(event.sequence_number, seq++, "sequence numbers count from 0 without gaps");
      if (event.type === "response.output_item.added" && event.item.type === "function_call") {
        calls.set(event.output_index, { id: event.item.call_id, name: event.item.name, args: "" });
      } else if (event.type === "response.function_call_arguments.delta") {
        calls.get(event.output_index).args += event.delta;
      } else if (event.type === "response.completed") {
        completed = event.response;
      }
    }
    const ordered = [...calls.keys()].sort((a, b) => a - b).map((k) => calls.get(k));
    assert.deepEqual(ordered.map((c) => JSON.parse(c.args)), [{ city: "Paris" }, { city: "Tokyo" }]);
    assert.ok(ordered.every((c) => c.name === "get_weather" && c.id));
    assert.notEqual(ordered[0].id, ordered[1].id);
    assert.equal(completed.status, "completed");
    assert.deepEqual(
      completed.output.filter((i) => i.type === "function_call").map((i) => i.call_id),
      ordered.map((c) => c.id),
    );
  });

  test(`responses.stream accumulates a function call via ${provider}`, async () => {
    const client = new OpenAI({ baseURL: `${gw.origin}/v1`, apiKey: "sk-client", maxRetries: 0 });
    const stream = client.responses.stream({ model: `${provider}/tools_stream`, input: "Weather in Paris and Tokyo?", tools });
    const final = await stream.finalResponse();
    const calls = final.output.filter((i) => i.type === "function_call");
    assert.deepEqual(calls.map((c) => JSON.parse(c.arguments)), [{ city: "Paris" }, { city: "Tokyo" }]);
  });
}
