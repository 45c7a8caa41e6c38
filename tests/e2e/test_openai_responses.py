"""The official OpenAI Python SDK's Responses API (`client.responses`) against fungible, over
every provider.

Runs under each pinned SDK version (see scripts/test.sh): a 3.x and an older 1.x.
"""

import json

import openai
import pytest
from pydantic import BaseModel

from conftest import PROVIDERS, SECRETS

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_create(client, provider):
    r = client.responses.create(
        model=f"{provider}/plain", instructions="You are terse.", input="Say hello.", max_output_tokens=50
    )
    assert r.id.startswith("resp_")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == "Hello!"
    assert r.instructions == "You are terse."
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (20, 5, 25)
    assert r.usage.input_tokens_details.cached_tokens == 8


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream(client, provider):
    stream = client.responses.create(model=f"{provider}/stream", input="Say hello.", stream=True)
    deltas, types, completed = [], [], None
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "".join(deltas) == "Hello!"
    assert completed.output_text == "Hello!"
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (20, 5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_helper_accumulates(client, provider):
    # `responses.stream` rebuilds the response from the events and checks their consistency
    # (ids, output indices, items closed before the end).
    with client.responses.stream(model=f"{provider}/stream", input="Say hello.") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "Hello!"
    assert final.output_text == "Hello!"
    assert final.status == "completed"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_call(client, provider):
    r = client.responses.create(model=f"{provider}/tools", input="What's the weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = [item for item in r.output if item.type == "function_call"]
    assert call.call_id and call.id.startswith("fc_")
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert r.status == "completed"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_calls_stream(client, provider):
    stream = client.responses.create(
        model=f"{provider}/tools_stream",
        input="Weather in Paris and Tokyo?",
        tools=[WEATHER_TOOL],
        parallel_tool_calls=True,
        stream=True,
    )
    calls, completed = {}, None
    for event in stream:
        if event.type == "response.output_item.added" and event.item.type == "function_call":
            calls[event.output_index] = {"call_id": event.item.call_id, "name": event.item.name, "args": ""}
        elif event.type == "response.function_call_arguments.delta":
            calls[event.output_index]["args"] += event.delta
        elif event.type == "response.function_call_arguments.done":
            assert event.arguments == calls[event.output_index]["args"]
        elif event.type == "response.completed":
            completed = event.response
    ordered = [calls[i] for i in sorted(calls)]
    assert [json.loads(c["args"]) for c in ordered] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert all(c["name"] == "get_weather" and c["call_id"] for c in ordered)
    assert ordered[0]["call_id"] != ordered[1]["call_id"]
    final_calls = [item for item in completed.output if item.type == "function_call"]
    assert [c.call_id for c in final_calls] == [c["call_id"] for c in ordered]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_previous_response_id_continues(client, provider):
    first = client.responses.create(model=f"{provider}/tools", input="What's the weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = [item for item in first.output if item.type == "function_call"]
    # Only the tool result is sent: the earlier turn comes from the gateway's store. (Gemini
    # names a function response after its call, which it finds only in that earlier turn.)
    second = client.responses.create(
        model=f"{provider}/tool_result",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c":18}'}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "It is 18°C in Paris."
    assert second.previous_response_id == first.id

    again = client.responses.retrieve(second.id)
    assert (again.id, again.output_text, again.previous_response_id) == (second.id, second.output_text, first.id)

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=f"{provider}/tool_result", previous_response_id=first.id, input="and now?")
    assert info.value.body["param"] == "previous_response_id"


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("provider", PROVIDERS)
def test_parse_with_schema(client, provider):
    r = client.responses.parse(
        model=f"{provider}/json_schema", input="Extract: Ada Lovelace was 36.", text_format=Person
    )
    assert r.output_parsed == Person(name="Ada Lovelace", age=36)


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
        r = client.responses.create(model=f"{provider}/error_{upstream}", input="hi", stream=stream)
        if stream:
            list(r)
    err = info.value
    assert "simulated upstream failure" in err.message
    assert provider in err.message
    body = json.dumps(err.body)
    assert not any(secret in body for secret in SECRETS.values())
    if upstream == 429:
        assert err.response.headers.get("retry-after") == "1"


def test_bad_requests_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="openai/plain", input="hi", tools=[{"type": "web_search"}])
    assert info.value.body["param"] == "tools[0].type"
    assert "not supported" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="nosuch/model", input="hi")
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
