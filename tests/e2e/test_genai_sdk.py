"""The official Google Gen AI Python SDK (google-genai) against fungible's Gemini API front end,
over every provider.

Runs under each pinned SDK version (see scripts/test.sh): 3.x, which calls `/v1/` by default,
and 1.x, which calls `/v1beta/`. The model is fungible's `PROVIDER/CASE`; the SDK sends it as
`models/PROVIDER/CASE` in the path.
"""

import json

import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel

from conftest import PROVIDERS, SECRETS

SDK_MAJOR = int(genai.__version__.split(".")[0])
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather for a city.",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]),
)
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


def make_client(gateway, api_version=None):
    options = {"base_url": gateway}
    if api_version:
        options["api_version"] = api_version
    return genai.Client(api_key="client-key", http_options=types.HttpOptions(**options))


@pytest.fixture()
def genai_client(gateway):
    return make_client(gateway)


def test_each_sdk_generation_uses_its_own_api_version(genai_client):
    # What the other tests exercise: 3.x defaults to v1, 1.x to v1beta.
    assert genai_client._api_client._http_options.api_version == ("v1" if SDK_MAJOR >= 3 else "v1beta")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("api_version", [None, "v1", "v1beta"])
def test_generate_content(gateway, provider, api_version):
    client = make_client(gateway, api_version)
    r = client.models.generate_content(
        model=f"{provider}/plain",
        contents="Say hello.",
        config=types.GenerateContentConfig(system_instruction="You are terse.", max_output_tokens=50),
    )
    assert r.text == "Hello!"
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (20, 5, 25)
    assert u.cached_content_token_count == 8
    assert r.response_id and r.model_version


@pytest.mark.parametrize("provider", PROVIDERS)
def test_generate_content_stream(genai_client, provider):
    chunks = list(genai_client.models.generate_content_stream(model=f"{provider}/stream", contents="Say hello."))
    assert "".join(c.text or "" for c in chunks) == "Hello!"
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert (last.usage_metadata.prompt_token_count, last.usage_metadata.candidates_token_count) == (20, 5)
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_stream_keeps_the_turn_in_history(genai_client, provider):
    chat = genai_client.chats.create(model=f"{provider}/stream")
    text = "".join(c.text or "" for c in chat.send_message_stream("Say hello."))
    assert text == "Hello!"
    # The SDK keeps a streamed turn (one model content per chunk) only if every chunk was valid.
    history = chat.get_history(curated=True)
    assert [c.role for c in history[:2]] == ["user", "model"]
    assert "".join(p.text or "" for c in history[1:] for p in c.parts) == "Hello!"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_call(genai_client, provider):
    r = genai_client.models.generate_content(
        model=f"{provider}/tools",
        contents="What's the weather in Paris?",
        config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[WEATHER])],
            tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="AUTO")),
            automatic_function_calling=NO_AFC,
        ),
    )
    (call,) = r.function_calls
    assert call.name == "get_weather"
    assert call.args == {"city": "Paris"}
    assert r.candidates[0].finish_reason == types.FinishReason.STOP


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_calls_stream(genai_client, provider):
    calls = []
    for chunk in genai_client.models.generate_content_stream(
        model=f"{provider}/tools_stream",
        contents="Weather in Paris and Tokyo?",
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])], automatic_function_calling=NO_AFC),
    ):
        calls += chunk.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_response_turn(genai_client, provider):
    r = genai_client.models.generate_content(
        model=f"{provider}/tool_result",
        contents=[
            types.Content(role="user", parts=[types.Part(text="What's the weather in Paris?")]),
            types.Content(role="model", parts=[types.Part.from_function_call(name="get_weather", args={"city": "Paris"})]),
            types.Content(
                role="user", parts=[types.Part.from_function_response(name="get_weather", response={"temp_c": 18})]
            ),
        ],
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])], automatic_function_calling=NO_AFC),
    )
    assert r.text == "It is 18°C in Paris."


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("provider", PROVIDERS)
def test_response_schema(genai_client, provider):
    r = genai_client.models.generate_content(
        model=f"{provider}/json_schema",
        contents="Extract: Ada Lovelace was 36.",
        config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=Person),
    )
    assert r.parsed == Person(name="Ada Lovelace", age=36)
    assert json.loads(r.text) == {"name": "Ada Lovelace", "age": 36}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_image_parts(genai_client, provider):
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
    r = genai_client.models.generate_content(
        model=f"{provider}/image",
        contents=[
            "What is in these images?",
            types.Part.from_bytes(data=png, mime_type="image/png"),
            types.Part.from_uri(file_uri="https://example.com/cat.jpg", mime_type="image/jpeg"),
        ],
    )
    assert r.text == "A red pixel and a cat."


@pytest.mark.parametrize("provider", ["openai", "gemini", "groq"])
def test_count_tokens(genai_client, provider):
    # Gemini answers from its countTokens endpoint (tests/fixtures/gemini/count_tokens.response.json);
    # the OpenAI family has none, so fungible estimates locally.
    r = genai_client.models.count_tokens(model=f"{provider}/count_tokens", contents="Say hello.")
    if provider == "gemini":
        assert r.total_tokens == 31
    else:
        assert 0 < r.total_tokens < 20


ERRORS = [
    (400, 400, errors.ClientError),
    (401, 401, errors.ClientError),
    (403, 403, errors.ClientError),
    (404, 404, errors.ClientError),
    (429, 429, errors.ClientError),
    (500, 502, errors.ServerError),
    (503, 503, errors.ServerError),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("upstream,status,exc", ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors(genai_client, provider, upstream, status, exc, stream):
    with pytest.raises(exc) as info:
        if stream:
            list(genai_client.models.generate_content_stream(model=f"{provider}/error_{upstream}", contents="hi"))
        else:
            genai_client.models.generate_content(model=f"{provider}/error_{upstream}", contents="hi")
    err = info.value
    assert err.code == status
    assert "simulated upstream failure" in err.message
    assert provider in err.message
    assert not any(secret in str(err.details) for secret in SECRETS.values())


def test_stream_cut_midway_raises(genai_client):
    # tests/fixtures/gemini/stream_cut.response.sse stops after two chunks, with no finishReason.
    text = ""
    with pytest.raises(errors.ServerError) as info:
        for chunk in genai_client.models.generate_content_stream(model="gemini/stream_cut", contents="Say hello."):
            text += chunk.text or ""
    assert text == "Hello"
    assert info.value.code == 502
    assert info.value.message.startswith("gemini")


def test_blocked_prompt(genai_client):
    r = genai_client.models.generate_content(model="gemini/blocked", contents="...")
    assert r.text is None
    assert r.candidates[0].finish_reason == types.FinishReason.SAFETY


def test_unknown_model_and_bad_request(genai_client):
    with pytest.raises(errors.ClientError) as info:
        genai_client.models.generate_content(model="nosuch/model", contents="hi")
    assert info.value.code == 404
    assert info.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as info:
        genai_client.models.generate_content(
            model="openai/plain", contents="hi", config=types.GenerateContentConfig(candidate_count=2)
        )
    assert info.value.code == 400
    assert "candidateCount" in info.value.message


def test_embed_content(genai_client):
    r = genai_client.models.embed_content(model="gemini/embed", contents="cat")
    assert [e.values for e in r.embeddings] == [[0.125, -0.5, 0.25, 1.0]]
