//! Parses an OpenAI Responses API request body (`POST /v1/responses`) into a canonical
//! [`ChatRequest`] plus what only this API has: `instructions`, `previous_response_id`,
//! `store`, and the request values a response object echoes back.
//!
//! Like the Chat Completions parser, every known field is taken out and checked on its own so
//! an error names the exact field (`input[2].content[0].image_url`); what is left over is
//! returned apart, for the handler to pass on as `extra_body` or drop, depending on the
//! provider.

use fungible_types::{
    ChatRequest, ContentPart, ImageSource, JsonSchemaFormat, Message, OpenAiOptions, ReasoningBlock, ReasoningConfig,
    ReasoningEffort, ResponseFormat, Role, SamplingParams, Tool, ToolCall, ToolChoice,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::fields::{Fields, bad, take, take_at};
use crate::limits;

/// `encrypted_content` of a reasoning item that stands for a redacted (vendor-encrypted)
/// reasoning block starts with this; any other `encrypted_content` is a thinking block's
/// signature. Vendors' signatures are base64, so they never contain the `:`.
pub const REDACTED_PREFIX: &str = "redacted:";

/// A parsed `POST /v1/responses` body.
#[derive(Debug)]
pub struct ResponsesRequest {
    /// The canonical request; `messages` holds only this request's `input` (no
    /// instructions, no earlier turns: the handler adds those).
    pub chat: ChatRequest,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    /// Whether to keep the response for `GET` and `previous_response_id` (default true).
    pub store: bool,
    /// The request values the response object repeats.
    pub echo: Echo,
    /// Fields this parser does not know.
    pub unknown: Map<String, Value>,
}

/// Request values a Responses API response object carries, already in their response shape.
#[derive(Debug, Clone)]
pub struct Echo {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub max_tool_calls: Option<u64>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub reasoning_effort: Option<String>,
    pub reasoning_summary: Option<String>,
    pub safety_identifier: Option<String>,
    pub service_tier: String,
    pub store: bool,
    pub temperature: f64,
    /// `text.format`.
    pub format: EchoFormat,
    pub verbosity: String,
    /// `None` is OpenAI's default, `auto`.
    pub tool_choice: Option<ToolChoice>,
    pub tools: Vec<EchoTool>,
    pub top_logprobs: u32,
    pub top_p: f64,
    pub truncation: String,
    pub user: Option<String>,
    pub metadata: Map<String, Value>,
}

/// A function tool as the response repeats it.
#[derive(Debug, Clone, Serialize)]
pub struct EchoTool {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub description: Option<String>,
    pub name: String,
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

/// `text.format` as the response repeats it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EchoFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        description: Option<String>,
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

fn required<T>(value: Option<T>, path: impl Into<String>) -> Result<T, ApiError> {
    value.ok_or_else(|| bad(path, "is required"))
}

fn not_supported(param: &str, what: &str) -> ApiError {
    bad(param, format!("{what} is not supported by this gateway"))
}

pub fn parse(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
    limits::precheck(body, &[("input", limits::MAX_MESSAGES), ("tools", limits::MAX_TOOLS)])?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(None, format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut f) = value else {
        return Err(ApiError::invalid_request(None, "request body must be a JSON object"));
    };

    let model: String = required(take(&mut f, "model")?, "model")?;
    if model.is_empty() {
        return Err(bad("model", "must not be empty"));
    }
    let previous_response_id: Option<String> = take(&mut f, "previous_response_id")?;
    for (key, what) in [
        ("background", "background mode"),
        ("conversation", "the Conversations API"),
        ("prompt", "a stored prompt template"),
    ] {
        match f.remove(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => return Err(not_supported(key, what)),
        }
    }

    let messages = match f.remove("input") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![Message::text(Role::User, text)],
        Some(Value::Array(items)) => {
            limits::check("input", items.len(), limits::MAX_MESSAGES)?;
            parse_items(items)?
        }
        Some(_) => return Err(bad("input", "must be a string or an array of input items")),
    };
    if messages.is_empty() && previous_response_id.is_none() {
        return Err(bad("input", "is required and must contain at least one item"));
    }
    let instructions: Option<String> = take(&mut f, "instructions")?;

    let (tools, tools_echo) = match take::<Vec<Value>>(&mut f, "tools")? {
        None => (Vec::new(), Vec::new()),
        Some(list) => {
            limits::check("tools", list.len(), limits::MAX_TOOLS)?;
            let mut tools = Vec::with_capacity(list.len());
            let mut echo = Vec::with_capacity(list.len());
            for (i, t) in list.into_iter().enumerate() {
                let (tool, e) = parse_tool(t, &format!("tools[{i}]"))?;
                tools.push(tool);
                echo.push(e);
            }
            (tools, echo)
        }
    };
    let tool_choice = match f.remove("tool_choice") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_tool_choice(&v)?),
    };
    let parallel_tool_calls: Option<bool> = take(&mut f, "parallel_tool_calls")?;

    #[derive(Deserialize)]
    struct Text {
        #[serde(default)]
        format: Option<Value>,
        #[serde(default)]
        verbosity: Option<String>,
    }
    let text: Option<Text> = take(&mut f, "text")?;
    let (format, verbosity) = text.map(|t| (t.format, t.verbosity)).unwrap_or_default();
    let (response_format, format_echo) = match format {
        None | Some(Value::Null) => (None, EchoFormat::Text),
        Some(v) => parse_format(v)?,
    };

    #[derive(Deserialize)]
    struct Reasoning {
        #[serde(default)]
        effort: Option<ReasoningEffort>,
        #[serde(default)]
        summary: Option<String>,
        /// The deprecated spelling of `summary`.
        #[serde(default)]
        generate_summary: Option<String>,
    }
    let reasoning: Option<Reasoning> = take(&mut f, "reasoning")?;
    let (effort, summary) = reasoning.map(|r| (r.effort, r.summary.or(r.generate_summary))).unwrap_or_default();

    let max_output_tokens: Option<u32> = take(&mut f, "max_output_tokens")?;
    let temperature: Option<f64> = take(&mut f, "temperature")?;
    let top_p: Option<f64> = take(&mut f, "top_p")?;
    let user: Option<String> = take(&mut f, "user")?;
    let metadata: Option<Map<String, Value>> = take(&mut f, "metadata")?;
    if let Some(metadata) = &metadata {
        crate::tags::check_metadata(metadata)?;
    }
    let store = take::<bool>(&mut f, "store")?.unwrap_or(true);
    let stream = take::<bool>(&mut f, "stream")?.unwrap_or(false);
    let service_tier: Option<String> = take(&mut f, "service_tier")?;
    let prompt_cache_key: Option<String> = take(&mut f, "prompt_cache_key")?;
    let safety_identifier: Option<String> = take(&mut f, "safety_identifier")?;

    // Accepted and echoed, with no canonical meaning: fungible always returns reasoning's
    // encrypted content when the vendor gave one, never truncates, and returns no logprobs.
    let _include: Option<Vec<String>> = take(&mut f, "include")?;
    let _stream_options: Option<Value> = take(&mut f, "stream_options")?;
    let truncation: Option<String> = take(&mut f, "truncation")?;
    let top_logprobs: Option<u32> = take(&mut f, "top_logprobs")?;
    let max_tool_calls: Option<u64> = take(&mut f, "max_tool_calls")?;

    let echo = Echo {
        instructions: instructions.clone(),
        max_output_tokens,
        max_tool_calls,
        parallel_tool_calls: parallel_tool_calls.unwrap_or(true),
        previous_response_id: previous_response_id.clone(),
        prompt_cache_key: prompt_cache_key.clone(),
        reasoning_effort: effort.map(|e| e.as_str().to_owned()),
        reasoning_summary: summary,
        safety_identifier: safety_identifier.clone(),
        service_tier: service_tier.clone().unwrap_or_else(|| "default".to_owned()),
        store,
        temperature: temperature.unwrap_or(1.0),
        format: format_echo,
        verbosity: verbosity.clone().unwrap_or_else(|| "medium".to_owned()),
        tool_choice: tool_choice.clone(),
        tools: tools_echo,
        top_logprobs: top_logprobs.unwrap_or(0),
        top_p: top_p.unwrap_or(1.0),
        truncation: truncation.unwrap_or_else(|| "disabled".to_owned()),
        user: user.clone(),
        metadata: metadata.clone().unwrap_or_default(),
    };

    let chat = ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        params: SamplingParams { temperature, top_p, max_tokens: max_output_tokens, ..SamplingParams::default() },
        reasoning: effort.map(|effort| ReasoningConfig { effort: Some(effort), budget_tokens: None }),
        stream,
        // A Responses stream always ends with the usage.
        stream_include_usage: stream,
        user,
        metadata,
        openai: OpenAiOptions {
            service_tier,
            verbosity,
            prompt_cache_key,
            safety_identifier,
            ..OpenAiOptions::default()
        },
        extra_body: Map::new(),
        extra_body_vendor: None,
    };
    // An explicit `extra_body` object (some clients send it literally) is merged too.
    if let Some(Value::Object(extra)) = f.remove("extra_body") {
        f.extend(extra);
    }
    Ok(ResponsesRequest { chat, instructions, previous_response_id, store, echo, unknown: f })
}

/// The assistant turn being assembled from consecutive reasoning, assistant message and
/// function call items (Chat-style APIs hold them in one message).
#[derive(Default)]
struct AssistantTurn {
    message: Option<Message>,
}

impl AssistantTurn {
    fn get(&mut self) -> &mut Message {
        self.message.get_or_insert_with(|| Message::new(Role::Assistant, Vec::new()))
    }

    /// The turn so far, if it already has content or tool calls (so a new reasoning item or
    /// assistant message starts a new turn).
    fn has_output(&self) -> bool {
        self.message.as_ref().is_some_and(|m| !m.content.is_empty() || !m.tool_calls.is_empty())
    }

    fn flush(&mut self, out: &mut Vec<Message>) {
        if let Some(m) = self.message.take() {
            out.push(m);
        }
    }
}

fn parse_items(items: Vec<Value>) -> Result<Vec<Message>, ApiError> {
    let mut out = Vec::with_capacity(items.len());
    let mut turn = AssistantTurn::default();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("input[{i}]");
        let Value::Object(mut item) = item else {
            return Err(bad(path, "must be an object"));
        };
        let kind: Option<String> = take_at(&mut item, "type", &path)?;
        match kind.as_deref() {
            // An item with a role and no type is a message ("easy input message").
            None | Some("message") => {
                let role: String = required(take_at(&mut item, "role", &path)?, format!("{path}.role"))?;
                let role = match role.as_str() {
                    "user" => Role::User,
                    "system" => Role::System,
                    "developer" => Role::Developer,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(bad(
                            format!("{path}.role"),
                            format!("unknown role {other:?} (expected user, system, developer or assistant)"),
                        ));
                    }
                };
                let content_path = format!("{path}.content");
                let content = match item.remove("content") {
                    None | Some(Value::Null) => return Err(bad(content_path, "is required")),
                    Some(v) => parse_content(v, &content_path, role)?,
                };
                if role == Role::Assistant {
                    if turn.has_output() {
                        turn.flush(&mut out);
                    }
                    turn.get().content.extend(content);
                } else {
                    turn.flush(&mut out);
                    out.push(Message::new(role, content));
                }
            }
            Some("function_call") => {
                let id: String = required(take_at(&mut item, "call_id", &path)?, format!("{path}.call_id"))?;
                let name: String = required(take_at(&mut item, "name", &path)?, format!("{path}.name"))?;
                let arguments: String = take_at(&mut item, "arguments", &path)?.unwrap_or_default();
                turn.get().tool_calls.push(ToolCall { id, name, arguments });
            }
            Some("function_call_output") => {
                let call_id: String = required(take_at(&mut item, "call_id", &path)?, format!("{path}.call_id"))?;
                let output_path = format!("{path}.output");
                let content = match item.remove("output") {
                    None | Some(Value::Null) => return Err(bad(output_path, "is required")),
                    Some(Value::String(text)) => vec![ContentPart::Text { text }],
                    Some(Value::Array(parts)) => limits::check(&output_path, parts.len(), limits::MAX_PARTS)
                        .map(|()| parts)?
                        .into_iter()
                        .enumerate()
                        .map(|(k, p)| parse_part(p, &format!("{output_path}[{k}]"), Role::Tool))
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(_) => return Err(bad(output_path, "must be a string or an array of content parts")),
                };
                turn.flush(&mut out);
                let mut message = Message::new(Role::Tool, content);
                message.tool_call_id = Some(call_id);
                out.push(message);
            }
            Some("reasoning") => {
                if let Some(block) = parse_reasoning(item, &path)? {
                    if turn.has_output() {
                        turn.flush(&mut out);
                    }
                    turn.get().reasoning.push(block);
                }
            }
            Some("item_reference") => {
                return Err(bad(
                    format!("{path}.type"),
                    "item references are not supported; send the item itself, or continue with previous_response_id",
                ));
            }
            Some(other) => {
                return Err(bad(
                    format!("{path}.type"),
                    format!(
                        "input item type {other:?} is not supported (expected message, function_call, function_call_output or reasoning)"
                    ),
                ));
            }
        }
    }
    turn.flush(&mut out);
    Ok(out)
}

fn parse_content(value: Value, path: &str, role: Role) -> Result<Vec<ContentPart>, ApiError> {
    match value {
        Value::String(text) => Ok(vec![ContentPart::Text { text }]),
        Value::Array(parts) => {
            limits::check(path, parts.len(), limits::MAX_PARTS)?;
            parts.into_iter().enumerate().map(|(k, p)| parse_part(p, &format!("{path}[{k}]"), role)).collect()
        }
        _ => Err(bad(path, "must be a string or an array of content parts")),
    }
}

/// One content part of a message (or of a function call's output, `role` = tool).
fn parse_part(value: Value, path: &str, role: Role) -> Result<ContentPart, ApiError> {
    let Value::Object(mut p) = value else {
        return Err(bad(path, "must be an object"));
    };
    let kind: String = required(take_at(&mut p, "type", path)?, format!("{path}.type"))?;
    let images_allowed = matches!(role, Role::User | Role::Tool);
    match kind.as_str() {
        "input_text" | "output_text" => {
            let text: String = required(take_at(&mut p, "text", path)?, format!("{path}.text"))?;
            Ok(ContentPart::Text { text })
        }
        // A refusal the assistant gave earlier is part of the conversation as text.
        "refusal" if role == Role::Assistant => {
            let text: String = required(take_at(&mut p, "refusal", path)?, format!("{path}.refusal"))?;
            Ok(ContentPart::Text { text })
        }
        "input_image" if images_allowed => {
            if p.get("file_id").is_some_and(|v| !v.is_null()) {
                return Err(bad(
                    format!("{path}.file_id"),
                    "uploaded files are not supported; send the image as image_url (a URL or a base64 data URL)",
                ));
            }
            let url: String = required(take_at(&mut p, "image_url", path)?, format!("{path}.image_url"))?;
            let source = ImageSource::from_openai_url(&url).map_err(|e| bad(format!("{path}.image_url"), e))?;
            let detail: Option<String> = take_at(&mut p, "detail", path)?;
            Ok(ContentPart::Image { source, detail })
        }
        "input_image" => {
            Err(bad(format!("{path}.type"), "images are only allowed in user messages and function call outputs"))
        }
        "input_file" | "input_audio" => {
            Err(not_supported(&format!("{path}.type"), &format!("content part type {kind:?}")))
        }
        other => Err(bad(
            format!("{path}.type"),
            format!("content part type {other:?} is not supported (expected input_text, input_image or output_text)"),
        )),
    }
}

/// A reasoning item becomes one canonical reasoning block; one that carries nothing (no
/// text, no encrypted content) is dropped.
fn parse_reasoning(mut item: Fields, path: &str) -> Result<Option<ReasoningBlock>, ApiError> {
    #[derive(Deserialize)]
    struct Text {
        text: String,
    }
    let summary: Vec<Text> = take_at(&mut item, "summary", path)?.unwrap_or_default();
    let content: Vec<Text> = take_at(&mut item, "content", path)?.unwrap_or_default();
    let encrypted: Option<String> = take_at(&mut item, "encrypted_content", path)?;
    // The full reasoning text when there is one, else the summary.
    let parts = if content.is_empty() { summary } else { content };
    let text = parts.into_iter().map(|t| t.text).collect::<Vec<_>>().join("\n\n");
    Ok(match encrypted {
        Some(enc) => match enc.strip_prefix(REDACTED_PREFIX) {
            Some(data) => Some(ReasoningBlock::Redacted { data: data.to_owned() }),
            None => Some(ReasoningBlock::Thinking { text, signature: Some(enc) }),
        },
        None if text.is_empty() => None,
        None => Some(ReasoningBlock::Thinking { text, signature: None }),
    })
}

/// A function tool, and the tool as the response echoes it.
fn parse_tool(value: Value, path: &str) -> Result<(Tool, EchoTool), ApiError> {
    let Value::Object(mut t) = value else {
        return Err(bad(path, "must be an object"));
    };
    let kind: String = required(take_at(&mut t, "type", path)?, format!("{path}.type"))?;
    if kind != "function" {
        return Err(bad(
            format!("{path}.type"),
            format!("built-in tool {kind:?} is not supported: fungible runs no tools itself; declare a function tool"),
        ));
    }
    let name: String = required(take_at(&mut t, "name", path)?, format!("{path}.name"))?;
    if name.is_empty() {
        return Err(bad(format!("{path}.name"), "must not be empty"));
    }
    let description: Option<String> = take_at(&mut t, "description", path)?;
    let parameters: Option<Value> = take_at(&mut t, "parameters", path)?;
    let strict: Option<bool> = take_at(&mut t, "strict", path)?;
    let echo = EchoTool {
        kind: "function",
        description: description.clone(),
        name: name.clone(),
        parameters: parameters.clone(),
        strict,
    };
    // OpenAI treats a missing schema as "no arguments".
    let parameters = parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    let mut tool = Tool::new(name, description, parameters);
    tool.strict = strict;
    Ok((tool, echo))
}

fn parse_tool_choice(value: &Value) -> Result<ToolChoice, ApiError> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => {
                Err(bad("tool_choice", format!("unknown value {other:?} (expected auto, none, required or an object)")))
            }
        },
        Value::Object(o) => match (o.get("type").and_then(Value::as_str), o.get("name").and_then(Value::as_str)) {
            (Some("function"), Some(name)) => Ok(ToolChoice::Tool(name.to_owned())),
            (Some("function"), None) => Err(bad("tool_choice.name", "is required")),
            (Some(other), _) => Err(bad(
                "tool_choice.type",
                format!("tool choice {other:?} is not supported (expected {{\"type\": \"function\", \"name\": ...}})"),
            )),
            (None, _) => Err(bad("tool_choice.type", "is required")),
        },
        _ => Err(bad("tool_choice", "must be a string or an object")),
    }
}

/// `text.format`, and the format as the response echoes it.
fn parse_format(value: Value) -> Result<(Option<ResponseFormat>, EchoFormat), ApiError> {
    const PATH: &str = "text.format";
    let Value::Object(mut f) = value else {
        return Err(bad(PATH, "must be an object"));
    };
    let kind: String = required(take_at(&mut f, "type", PATH)?, "text.format.type")?;
    match kind.as_str() {
        "text" => Ok((Some(ResponseFormat::Text), EchoFormat::Text)),
        "json_object" => Ok((Some(ResponseFormat::JsonObject), EchoFormat::JsonObject)),
        "json_schema" => {
            let name: String = required(take_at(&mut f, "name", PATH)?, "text.format.name")?;
            let schema: Value = required(take_at(&mut f, "schema", PATH)?, "text.format.schema")?;
            let description: Option<String> = take_at(&mut f, "description", PATH)?;
            let strict: Option<bool> = take_at(&mut f, "strict", PATH)?;
            let echo = EchoFormat::JsonSchema {
                description: description.clone(),
                name: name.clone(),
                schema: schema.clone(),
                strict,
            };
            Ok((Some(ResponseFormat::JsonSchema(JsonSchemaFormat { name, description, schema, strict })), echo))
        }
        other => Err(bad(
            "text.format.type",
            format!("unknown format {other:?} (expected text, json_object or json_schema)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> ResponsesRequest {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {}", e.message))
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{", None),
            ("[]", None),
            (r#"{"input":"hi"}"#, Some("model")),
            (r#"{"model":"a/b"}"#, Some("input")),
            (r#"{"model":"a/b","input":[]}"#, Some("input")),
            (r#"{"model":"a/b","input":5}"#, Some("input")),
            (r#"{"model":"a/b","input":[{"role":"robot","content":"x"}]}"#, Some("input[0].role")),
            (r#"{"model":"a/b","input":[{"role":"user"}]}"#, Some("input[0].content")),
            (
                r#"{"model":"a/b","input":[{"role":"user","content":[{"type":"input_text"}]}]}"#,
                Some("input[0].content[0].text"),
            ),
            (
                r#"{"model":"a/b","input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]}"#,
                Some("input[0].content[0].file_id"),
            ),
            (
                r#"{"model":"a/b","input":[{"role":"user","content":[{"type":"input_image","image_url":"data:x"}]}]}"#,
                Some("input[0].content[0].image_url"),
            ),
            (
                r#"{"model":"a/b","input":[{"role":"assistant","content":[{"type":"input_image","image_url":"https://x/y.png"}]}]}"#,
                Some("input[0].content[0].type"),
            ),
            (
                r#"{"model":"a/b","input":[{"type":"function_call","name":"f","arguments":"{}"}]}"#,
                Some("input[0].call_id"),
            ),
            (r#"{"model":"a/b","input":[{"type":"function_call_output","call_id":"c"}]}"#, Some("input[0].output")),
            (r#"{"model":"a/b","input":[{"type":"item_reference","id":"msg_1"}]}"#, Some("input[0].type")),
            (r#"{"model":"a/b","input":[{"type":"web_search_call"}]}"#, Some("input[0].type")),
            (r#"{"model":"a/b","input":"x","tools":[{"type":"web_search"}]}"#, Some("tools[0].type")),
            (r#"{"model":"a/b","input":"x","tools":[{"type":"function"}]}"#, Some("tools[0].name")),
            (r#"{"model":"a/b","input":"x","tool_choice":"sometimes"}"#, Some("tool_choice")),
            (r#"{"model":"a/b","input":"x","tool_choice":{"type":"web_search"}}"#, Some("tool_choice.type")),
            (r#"{"model":"a/b","input":"x","text":{"format":{"type":"xml"}}}"#, Some("text.format.type")),
            (
                r#"{"model":"a/b","input":"x","text":{"format":{"type":"json_schema","schema":{}}}}"#,
                Some("text.format.name"),
            ),
            (r#"{"model":"a/b","input":"x","reasoning":{"effort":"max"}}"#, Some("reasoning.effort")),
            (r#"{"model":"a/b","input":"x","max_output_tokens":-1}"#, Some("max_output_tokens")),
            (r#"{"model":"a/b","input":"x","temperature":"hot"}"#, Some("temperature")),
            (r#"{"model":"a/b","input":"x","background":true}"#, Some("background")),
            (r#"{"model":"a/b","input":"x","conversation":"conv_1"}"#, Some("conversation")),
        ];
        for (body, param) in cases {
            let Err(e) = parse(body.as_bytes()) else { panic!("{body} parsed") };
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            if let Some(p) = param {
                assert!(e.message.starts_with(p), "{body}: {}", e.message);
            }
        }
    }

    #[test]
    fn a_string_input_is_one_user_message_and_instructions_stay_apart() {
        let r = ok(r#"{"model":"a/b","input":"Say hello.","instructions":"Be terse.","max_output_tokens":50}"#);
        assert_eq!(r.chat.messages, vec![Message::text(Role::User, "Say hello.")]);
        assert_eq!(r.instructions.as_deref(), Some("Be terse."));
        assert_eq!(r.chat.params.max_tokens, Some(50));
        assert!(r.store, "store defaults to true");
        assert_eq!(r.echo.tool_choice, None);
        assert!(r.echo.parallel_tool_calls);
    }

    #[test]
    fn reasoning_message_and_calls_of_one_turn_make_one_assistant_message() {
        let r = ok(r#"{"model":"a/b","input":[
            {"role":"user","content":"weather?"},
            {"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"think"}],"encrypted_content":"sig"},
            {"type":"message","id":"msg_1","role":"assistant","status":"completed","content":[{"type":"output_text","text":"Let me check.","annotations":[]}]},
            {"type":"function_call","id":"fc_1","call_id":"c1","name":"w","arguments":"{}","status":"completed"},
            {"type":"function_call","id":"fc_2","call_id":"c2","name":"w","arguments":"{\"a\":1}"},
            {"type":"function_call_output","call_id":"c1","output":"sunny"},
            {"type":"function_call_output","call_id":"c2","output":[{"type":"input_text","text":"rain"}]},
            {"type":"reasoning","id":"rs_2","summary":[],"encrypted_content":"redacted:abc"},
            {"type":"reasoning","id":"rs_3","summary":[]}
        ]}"#);
        let m = &r.chat.messages;
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[1].role, Role::Assistant);
        assert_eq!(
            m[1].reasoning,
            vec![ReasoningBlock::Thinking { text: "think".into(), signature: Some("sig".into()) }]
        );
        assert_eq!(m[1].joined_text(), "Let me check.");
        assert_eq!(m[1].tool_calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
        assert_eq!(
            (m[2].role, m[2].tool_call_id.as_deref(), m[2].joined_text().as_str()),
            (Role::Tool, Some("c1"), "sunny")
        );
        assert_eq!(m[3].joined_text(), "rain");
        assert_eq!(m[4].reasoning, vec![ReasoningBlock::Redacted { data: "abc".into() }]);
    }

    #[test]
    fn formats_tools_and_choices_parse_and_echo() {
        let r = ok(r#"{"model":"a/b","input":"x",
            "tools":[{"type":"function","name":"f","parameters":{"type":"object"},"strict":true}],
            "tool_choice":{"type":"function","name":"f"},
            "text":{"format":{"type":"json_schema","name":"p","schema":{"type":"object"},"strict":true},"verbosity":"low"},
            "reasoning":{"effort":"low","summary":"auto"}}"#);
        assert_eq!(r.chat.tool_choice, Some(ToolChoice::Tool("f".into())));
        assert_eq!(r.chat.tools[0].strict, Some(true));
        assert!(
            matches!(&r.chat.response_format, Some(ResponseFormat::JsonSchema(s)) if s.name == "p" && s.strict == Some(true))
        );
        assert_eq!(r.chat.reasoning.as_ref().and_then(|c| c.effort), Some(ReasoningEffort::Low));
        assert_eq!(r.chat.openai.verbosity.as_deref(), Some("low"));
        assert!(matches!(&r.echo.format, EchoFormat::JsonSchema { name, .. } if name == "p"));
        assert_eq!(r.echo.tools[0].strict, Some(true));
        assert_eq!(r.echo.reasoning_summary.as_deref(), Some("auto"));
    }

    #[test]
    fn unknown_fields_are_returned_apart_and_responses_only_fields_are_consumed() {
        let r = ok(
            r#"{"model":"a/b","input":"x","top_k":3,"include":["reasoning.encrypted_content"],"truncation":"auto","store":false,"extra_body":{"safe_prompt":true}}"#,
        );
        assert_eq!(r.unknown.keys().collect::<Vec<_>>(), ["safe_prompt", "top_k"]);
        assert!(!r.store);
        assert_eq!(r.echo.truncation, "auto");
    }

    #[test]
    fn previous_response_id_allows_an_empty_input() {
        let r = ok(r#"{"model":"a/b","previous_response_id":"resp_1"}"#);
        assert!(r.chat.messages.is_empty());
        assert_eq!(r.previous_response_id.as_deref(), Some("resp_1"));
    }
}
