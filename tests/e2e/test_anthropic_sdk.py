"""The official Anthropic Python SDK against fungible's Messages API, over every provider.

Runs under each pinned SDK version (see scripts/test.sh): a 2.x, which authenticates with
`Authorization: Bearer`, and an older 0.x, which sends `x-api-key`.
"""

import json

import anthropic
import pytest

from conftest import PROVIDERS, SECRETS

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture()
def claude(gateway):
    return anthropic.Anthropic(base_url=gateway, api_key="sk-ant-client-key", max_retries=0, timeout=30)


def tool_uses(message):
    return [block for block in message.content if block.type == "tool_use"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_create(claude, provider):
    m = claude.messages.create(
        model=f"{provider}/plain",
        max_tokens=50,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert m.id.startswith("msg_")
    assert [block.text for block in m.content if block.type == "text"] == ["Hello!"]
    assert m.stop_reason == "end_turn"
    # 20 prompt tokens, 8 of them read from the cache: Anthropic counts them apart.
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (12, 8, 5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream(claude, provider):
    with claude.messages.stream(
        model=f"{provider}/stream",
        max_tokens=50,
        messages=[{"role": "user", "content": "Say hello."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello!"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (12, 8, 5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call(claude, provider):
    m = claude.messages.create(
        model=f"{provider}/tools",
        max_tokens=1024,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    assert m.stop_reason == "tool_use"
    (call,) = tool_uses(m)
    assert call.id and call.name == "get_weather"
    assert call.input == {"city": "Paris"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_parallel_tool_calls(claude, provider):
    with claude.messages.stream(
        model=f"{provider}/tools_stream",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}],
        tools=[WEATHER_TOOL],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    calls = tool_uses(final)
    assert [c.input for c in calls] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert all(c.name == "get_weather" and c.id for c in calls)
    assert calls[0].id != calls[1].id


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_result_turn(claude, provider):
    m = claude.messages.create(
        model=f"{provider}/tool_result",
        max_tokens=1024,
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_abc", "content": '{"temp_c":18}'}]},
        ],
        tools=[WEATHER_TOOL],
    )
    assert m.content[-1].text == "It is 18°C in Paris."


@pytest.mark.parametrize("provider", PROVIDERS)
def test_json_schema(claude, provider):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    m = claude.messages.create(
        model=f"{provider}/json_schema",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Extract: Ada Lovelace was 36."}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    assert json.loads(m.content[-1].text) == {"name": "Ada Lovelace", "age": 36}


@pytest.mark.parametrize(
    "model,expected",
    [("anthropic/count_tokens", 14), ("gemini/count_tokens", 31), ("openai/plain", None), ("groq/plain", None)],
)
def test_count_tokens(claude, model, expected):
    r = claude.messages.count_tokens(
        model=model,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello."}],
        tools=[WEATHER_TOOL],
    )
    if expected is None:
        # The OpenAI family has no counting endpoint: a local o200k_base estimate.
        assert 20 < r.input_tokens < 200
    else:
        assert r.input_tokens == expected


ERRORS = [
    (400, 400, anthropic.BadRequestError),
    (401, 401, anthropic.AuthenticationError),
    (403, 403, anthropic.PermissionDeniedError),
    (404, 404, anthropic.NotFoundError),
    (422, 422, anthropic.UnprocessableEntityError),
    (429, 429, anthropic.RateLimitError),
    (500, 502, anthropic.InternalServerError),
    (503, 503, anthropic.APIStatusError),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("upstream,status,exc", ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors(claude, provider, upstream, status, exc, stream):
    with pytest.raises(exc) as info:
        r = claude.messages.create(
            model=f"{provider}/error_{upstream}",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
        )
        if stream:
            list(r)
    err = info.value
    assert err.status_code == status
    assert err.body["type"] == "error"
    message = err.body["error"]["message"]
    assert "simulated upstream failure" in message
    assert message.startswith(provider)
    assert not any(secret in json.dumps(err.body) for secret in SECRETS.values())
    if upstream == 429:
        assert err.body["error"]["type"] == "rate_limit_error"
        assert err.response.headers.get("retry-after") == "1"


def test_unknown_model(claude):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="nosuch/model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "not_found_error"
