// The official Google Gen AI Node SDK (@google/genai) against fungible's Gemini API front end:
// one streaming function call over every provider.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { GoogleGenAI } from "@google/genai";
import { startGateway } from "./harness.mjs";

let gw;
before(async () => { gw = await startGateway(); });
after(() => gw?.stop());

const weather = {
  name: "get_weather",
  description: "Current weather for a city.",
  parametersJsonSchema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

for (const provider of ["openai", "anthropic", "gemini", "groq"]) {
  test(`generateContentStream function calls via ${provider}`, async () => {
    const ai = new GoogleGenAI({ apiKey: "client-key", httpOptions: { baseUrl: gw.origin } });
    const stream = await ai.models.generateContentStream({
      model: `${provider}/tools_stream`,
      contents: "Weather in Paris and Tokyo?",
      config: {
        tools: [{ functionDeclarations: [weather] }],
        toolConfig: { functionCallingConfig: { mode: "AUTO" } },
      },
    });
    const calls = [];
    let finish = null;
    let usage = null;
    for await (const chunk of stream) {
      calls.push(...(chunk.functionCalls ?? []));
      finish = chunk.candidates?.[0]?.finishReason ?? finish;
      usage = chunk.usageMetadata ?? usage;
    }
    assert.equal(finish, "STOP");
    assert.deepEqual(calls.map((c) => [c.name, c.args]), [["get_weather", { city: "Paris" }], ["get_weather", { city: "Tokyo" }]]);
    assert.equal(usage.promptTokenCount, 30);
    assert.equal(usage.totalTokenCount, 50);
  });
}
