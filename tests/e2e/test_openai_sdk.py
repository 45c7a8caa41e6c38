"""The official OpenAI Python SDK against fungible, over every provider.

Runs under each pinned SDK version (see scripts/test.sh): a 3.x and an older 1.x.
"""

import json

import openai
import pytest
from pydantic import BaseModel

from conftest import PROVIDERS, SECRETS

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat(client, provider):
    r = client.chat.completions.create(
        model=f"{provider}/plain",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}],
        max_tokens=50,
    )
    assert r.choices[0].message.content == "Hello!"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (20, 5, 25)
    assert r.usage.prompt_tokens_details.cached_tokens == 8


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream(client, provider):
    stream = client.chat.completions.create(
        model=f"{provider}/stream",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "Hello!"
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (20, 5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call(client, provider):
    r = client.chat.completions.create(
        model=f"{provider}/tools",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_parallel_tool_calls_stream(client, provider):
    stream = client.chat.completions.create(
        model=f"{provider}/tools_stream",
        messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": None, "args": ""})
                entry["id"] = d.id or entry["id"]
                if d.function and d.function.name:
                    entry["name"] = d.function.name
                entry["args"] += (d.function.arguments or "") if d.function else ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert [json.loads(calls[i]["args"]) for i in (0, 1)] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert all(c["name"] == "get_weather" and c["id"] for c in calls.values())
    assert calls[0]["id"] != calls[1]["id"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_result_turn(client, provider):
    r = client.chat.completions.create(
        model=f"{provider}/tool_result",
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c":18}'},
        ],
        tools=[WEATHER_TOOL],
    )
    assert r.choices[0].message.content == "It is 18°C in Paris."


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("provider", PROVIDERS)
def test_parse_with_schema(client, provider):
    beta = getattr(client, "beta", None)
    parse = getattr(getattr(beta, "chat", None), "completions", None)
    parse = getattr(parse, "parse", None) or client.chat.completions.parse
    r = parse(
        model=f"{provider}/json_schema",
        messages=[{"role": "user", "content": "Extract: Ada Lovelace was 36."}],
        response_format=Person,
    )
    assert r.choices[0].message.parsed == Person(name="Ada Lovelace", age=36)


ERRORS = [
    (400, openai.BadRequestError),
    (401, openai.AuthenticationError),
    (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError),
    (422, openai.UnprocessableEntityError),
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (503, openai.InternalServerError),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("upstream,exc", ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors(client, provider, upstream, exc, stream):
    with pytest.raises(exc) as info:
        r = client.chat.completions.create(
            model=f"{provider}/error_{upstream}", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            list(r)
    err = info.value
    assert "simulated upstream failure" in err.message
    assert provider in err.message
    body = json.dumps(err.body)
    assert not any(secret in body for secret in SECRETS.values())
    if upstream == 429:
        assert err.response.headers.get("retry-after") == "1"


def test_unknown_model_and_bad_request(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nosuch/model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="openai/plain", messages=[])
    assert info.value.body["param"] == "messages"


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"openai/gpt-5", "anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash"} <= ids
