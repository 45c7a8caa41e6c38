//! Parses an OpenAI Chat Completions request body into a canonical [`ChatRequest`].
//!
//! The body is read as a JSON object and each known field is taken out and checked on its
//! own, so an error names the exact field (`messages[2].content[1].image_url.url`); what is
//! left over is the `extra_body` passed through to the provider.

use fungible_types::{
    ChatRequest, ContentPart, ImageSource, JsonSchemaFormat, Message, OpenAiOptions, ReasoningConfig,
    ReasoningEffort, ResponseFormat, Role, SamplingParams, Tool, ToolCall, ToolChoice,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::fields::{bad, from_value, take, take_at};
use crate::limits;

pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    limits::precheck(body, &[("messages", limits::MAX_MESSAGES), ("tools", limits::MAX_TOOLS)])?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(None, format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut f) = value else {
        return Err(ApiError::invalid_request(None, "request body must be a JSON object"));
    };

    let model: String = take(&mut f, "model")?.ok_or_else(|| bad("model", "is required"))?;
    if model.is_empty() {
        return Err(bad("model", "must not be empty"));
    }
    let raw_messages: Vec<Value> = take(&mut f, "messages")?.ok_or_else(|| bad("messages", "is required"))?;
    if raw_messages.is_empty() {
        return Err(bad("messages", "must contain at least one message"));
    }
    limits::check("messages", raw_messages.len(), limits::MAX_MESSAGES)?;
    let messages = raw_messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| parse_message(m, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let tools = match take::<Vec<Value>>(&mut f, "tools")? {
        None => Vec::new(),
        Some(tools) => limits::check("tools", tools.len(), limits::MAX_TOOLS).map(|()| tools)?
            .into_iter()
            .enumerate()
            .map(|(i, t)| parse_tool(t, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let tool_choice = match f.remove("tool_choice") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_tool_choice(v)?),
    };
    let response_format = match f.remove("response_format") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_response_format(v)?),
    };

    let stop = match f.remove("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(v) => from_value::<Vec<String>>(v, "stop")?,
    };
    let max_completion_tokens: Option<u32> = take(&mut f, "max_completion_tokens")?;
    let max_tokens: Option<u32> = take(&mut f, "max_tokens")?;
    let params = SamplingParams {
        temperature: take(&mut f, "temperature")?,
        top_p: take(&mut f, "top_p")?,
        top_k: take(&mut f, "top_k")?,
        max_tokens: max_completion_tokens.or(max_tokens),
        stop,
        seed: take(&mut f, "seed")?,
        presence_penalty: take(&mut f, "presence_penalty")?,
        frequency_penalty: take(&mut f, "frequency_penalty")?,
    };
    if let Some(n) = take::<u32>(&mut f, "n")?
        && n != 1
    {
        return Err(bad("n", format!("only n = 1 is supported, got {n}")));
    }
    let reasoning = take::<ReasoningEffort>(&mut f, "reasoning_effort")?
        .map(|effort| ReasoningConfig { effort: Some(effort), budget_tokens: None });

    #[derive(Deserialize)]
    struct StreamOptions {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    let stream = take::<bool>(&mut f, "stream")?.unwrap_or(false);
    let stream_options: Option<StreamOptions> = take(&mut f, "stream_options")?;

    let openai = OpenAiOptions {
        logprobs: take(&mut f, "logprobs")?,
        top_logprobs: take(&mut f, "top_logprobs")?,
        logit_bias: take(&mut f, "logit_bias")?,
        service_tier: take(&mut f, "service_tier")?,
        store: take(&mut f, "store")?,
        verbosity: take(&mut f, "verbosity")?,
        prompt_cache_key: take(&mut f, "prompt_cache_key")?,
        safety_identifier: take(&mut f, "safety_identifier")?,
    };

    let metadata: Option<Map<String, Value>> = take(&mut f, "metadata")?;
    if let Some(metadata) = &metadata {
        crate::tags::check_metadata(metadata)?;
    }

    let mut req = ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: take(&mut f, "parallel_tool_calls")?,
        response_format,
        params,
        reasoning,
        stream,
        stream_include_usage: stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        user: take(&mut f, "user")?,
        metadata,
        openai,
        extra_body: Map::new(),
        extra_body_vendor: None,
    };
    // An explicit `extra_body` object (some clients send it literally) is merged too.
    if let Some(Value::Object(extra)) = f.remove("extra_body") {
        f.extend(extra);
    }
    req.extra_body = f;
    Ok(req)
}

fn parse_message(value: Value, path: &str) -> Result<Message, ApiError> {
    let Value::Object(mut m) = value else {
        return Err(bad(path, "must be an object"));
    };
    let role: String = take(&mut m, "role")?.ok_or_else(|| bad(format!("{path}.role"), "is required"))?;
    let role = match role.as_str() {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        "function" => {
            return Err(bad(format!("{path}.role"), "the legacy 'function' role is not supported; use 'tool'"));
        }
        other => {
            return Err(bad(
                format!("{path}.role"),
                format!("unknown role {other:?} (expected system, developer, user, assistant or tool)"),
            ));
        }
    };
    let content_path = format!("{path}.content");
    let content = match m.remove("content") {
        None | Some(Value::Null) => {
            if matches!(role, Role::Assistant) {
                Vec::new()
            } else {
                return Err(bad(content_path, "is required"));
            }
        }
        Some(v) => parse_content(v, &content_path, role == Role::User)?,
    };
    let mut message = Message::new(role, content);
    message.name = take_at(&mut m, "name", path)?;
    match role {
        Role::Assistant => {
            let calls: Vec<Value> = take_at(&mut m, "tool_calls", path)?.unwrap_or_default();
            limits::check(&format!("{path}.tool_calls"), calls.len(), limits::MAX_PARTS)?;
            for (j, call) in calls.into_iter().enumerate() {
                message.tool_calls.push(parse_tool_call(call, &format!("{path}.tool_calls[{j}]"))?);
            }
            if message.content.is_empty() && message.tool_calls.is_empty() {
                // An empty assistant turn is legal in OpenAI's API (e.g. a prefill).
                message.content.push(ContentPart::Text { text: String::new() });
            }
        }
        Role::Tool => {
            let id: String =
                take_at(&mut m, "tool_call_id", path)?.ok_or_else(|| bad(format!("{path}.tool_call_id"), "is required"))?;
            message.tool_call_id = Some(id);
        }
        _ => {}
    }
    Ok(message)
}

fn parse_content(value: Value, path: &str, images_allowed: bool) -> Result<Vec<ContentPart>, ApiError> {
    match value {
        Value::String(text) => Ok(vec![ContentPart::Text { text }]),
        Value::Array(parts) => limits::check(path, parts.len(), limits::MAX_PARTS).map(|()| parts)?
            .into_iter()
            .enumerate()
            .map(|(k, p)| parse_part(p, &format!("{path}[{k}]"), images_allowed))
            .collect(),
        _ => Err(bad(path, "must be a string or an array of content parts")),
    }
}

fn parse_part(value: Value, path: &str, images_allowed: bool) -> Result<ContentPart, ApiError> {
    let Value::Object(mut p) = value else {
        return Err(bad(path, "must be an object"));
    };
    let kind: String = take_at(&mut p, "type", path)?.ok_or_else(|| bad(format!("{path}.type"), "is required"))?;
    match kind.as_str() {
        "text" => {
            let text: String = take_at(&mut p, "text", path)?.ok_or_else(|| bad(format!("{path}.text"), "is required"))?;
            Ok(ContentPart::Text { text })
        }
        "image_url" if images_allowed => {
            #[derive(Deserialize)]
            struct ImageUrl {
                url: String,
                #[serde(default)]
                detail: Option<String>,
            }
            let image: ImageUrl =
                take_at(&mut p, "image_url", path)?.ok_or_else(|| bad(format!("{path}.image_url"), "is required"))?;
            let source = ImageSource::from_openai_url(&image.url).map_err(|e| bad(format!("{path}.image_url.url"), e))?;
            Ok(ContentPart::Image { source, detail: image.detail })
        }
        "image_url" => Err(bad(format!("{path}.type"), "images are only allowed in user messages")),
        other => Err(bad(
            format!("{path}.type"),
            format!("content part type {other:?} is not supported (expected text or image_url)"),
        )),
    }
}

fn parse_tool_call(value: Value, path: &str) -> Result<ToolCall, ApiError> {
    #[derive(Deserialize)]
    struct Call {
        id: String,
        #[serde(rename = "type", default)]
        kind: Option<String>,
        function: Function,
    }
    #[derive(Deserialize)]
    struct Function {
        name: String,
        #[serde(default)]
        arguments: Option<String>,
    }
    let call: Call = from_value(value, path)?;
    if let Some(kind) = call.kind.filter(|k| k != "function") {
        return Err(bad(format!("{path}.type"), format!("tool call type {kind:?} is not supported (expected function)")));
    }
    Ok(ToolCall { id: call.id, name: call.function.name, arguments: call.function.arguments.unwrap_or_default() })
}

fn parse_tool(value: Value, path: &str) -> Result<Tool, ApiError> {
    #[derive(Deserialize)]
    struct InTool {
        #[serde(rename = "type")]
        kind: String,
        function: Option<Function>,
    }
    #[derive(Deserialize)]
    struct Function {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        parameters: Option<Value>,
        #[serde(default)]
        strict: Option<bool>,
    }
    let tool: InTool = from_value(value, path)?;
    if tool.kind != "function" {
        return Err(bad(format!("{path}.type"), format!("tool type {:?} is not supported (expected function)", tool.kind)));
    }
    let function = tool.function.ok_or_else(|| bad(format!("{path}.function"), "is required"))?;
    if function.name.is_empty() {
        return Err(bad(format!("{path}.function.name"), "must not be empty"));
    }
    Ok(Tool {
        name: function.name,
        description: function.description,
        // OpenAI treats a missing schema as "no arguments".
        parameters: function.parameters.unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        strict: function.strict,
        cache_control: None,
    })
}

fn parse_tool_choice(value: Value) -> Result<ToolChoice, ApiError> {
    match &value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(bad("tool_choice", format!("unknown value {other:?} (expected auto, none, required or an object)"))),
        },
        Value::Object(o) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Ok(ToolChoice::Tool(name.to_owned())),
                _ => Err(bad("tool_choice", "expected {\"type\": \"function\", \"function\": {\"name\": ...}}")),
            }
        }
        _ => Err(bad("tool_choice", "must be a string or an object")),
    }
}

fn parse_response_format(value: Value) -> Result<ResponseFormat, ApiError> {
    #[derive(Deserialize)]
    struct Format {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        json_schema: Option<Schema>,
    }
    #[derive(Deserialize)]
    struct Schema {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        schema: Option<Value>,
        #[serde(default)]
        strict: Option<bool>,
    }
    let format: Format = from_value(value, "response_format")?;
    match format.kind.as_str() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let s = format.json_schema.ok_or_else(|| bad("response_format.json_schema", "is required"))?;
            Ok(ResponseFormat::JsonSchema(JsonSchemaFormat {
                name: s.name,
                description: s.description,
                schema: s.schema.unwrap_or_else(|| serde_json::json!({"type": "object"})),
                strict: s.strict,
            }))
        }
        other => Err(bad(
            "response_format.type",
            format!("unknown format {other:?} (expected text, json_object or json_schema)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{", None),
            ("[]", None),
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, Some("model")),
            (r#"{"model":"a/b","messages":[]}"#, Some("messages")),
            (r#"{"model":"a/b","messages":"hi"}"#, Some("messages")),
            (r#"{"model":"a/b","messages":[{"role":"robot","content":"x"}]}"#, Some("messages[0].role")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":5}]}"#, Some("messages[0].content")),
            (
                r#"{"model":"a/b","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                Some("messages[0].content[0].text"),
            ),
            (
                r#"{"model":"a/b","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#,
                Some("messages[0].content[0].image_url.url"),
            ),
            (r#"{"model":"a/b","messages":[{"role":"tool","content":"x"}]}"#, Some("messages[0].tool_call_id")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, Some("temperature")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, Some("max_tokens")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"n":3}"#, Some("n")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#, Some("tools[0].function")),
            (
                r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":1}}]}"#,
                Some("tools[0].function.name"),
            ),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#, Some("response_format.type")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"reasoning_effort":"max"}"#, Some("reasoning_effort")),
        ];
        for (body, param) in cases {
            let e = err(body);
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            if let Some(p) = param {
                assert!(e.message.starts_with(p), "{body}: {}", e.message);
            }
        }
    }

    #[test]
    fn unknown_fields_pass_through_as_extra_body() {
        let req = parse(
            br#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"top_k":3,"thinking":{"type":"enabled"},"extra_body":{"safe_prompt":true}}"#,
        )
        .unwrap();
        assert_eq!(req.params.top_k, Some(3));
        assert_eq!(req.extra_body["thinking"]["type"], "enabled");
        assert_eq!(req.extra_body["safe_prompt"], true);
        assert!(!req.extra_body.contains_key("top_k"));
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let req = parse(
            br#"{"model":"a/b","messages":[{"role":"user","content":"x"}],"max_tokens":5,"max_completion_tokens":9,"stop":"END"}"#,
        )
        .unwrap();
        assert_eq!(req.params.max_tokens, Some(9));
        assert_eq!(req.params.stop, ["END"]);
    }

    #[test]
    fn assistant_tool_calls_and_tool_results_parse() {
        let req = parse(include_bytes!("../../../../tests/fixtures/inbound/openai_chat/tool_result.json")).unwrap();
        assert_eq!(req.messages[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(req.messages[2].tool_call_id.as_deref(), Some("call_abc"));
    }
}
