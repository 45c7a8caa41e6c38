//! Parses an Anthropic Messages request body (`POST /v1/messages` and
//! `/v1/messages/count_tokens`) into a canonical [`ChatRequest`].
//!
//! As in the OpenAI front end, the body is read as a JSON object and each known field is
//! taken out and checked on its own, so an error names the exact field
//! (`messages[1].content[0].source.media_type`). Top-level fields left over go to
//! `extra_body`; the handler keeps them only when the model resolves to an Anthropic provider.
//!
//! What the mapping has to bridge: `system` is a top-level string or list of text blocks (one
//! canonical system message per block, so each block's cache breakpoint survives); a user turn
//! mixes `tool_result` blocks (canonical tool messages) with text and images; an assistant turn
//! carries thinking blocks, text and `tool_use` blocks (canonical reasoning, content and tool
//! calls); `cache_control` on a block marks the canonical message the block lands in.

use fungible_types::{
    CacheControl, ChatRequest, ContentPart, ImageSource, JsonSchemaFormat, Message, ReasoningBlock, ReasoningConfig,
    ReasoningEffort, ResponseFormat, Role, SamplingParams, Tool, ToolCall, ToolChoice,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::fields::{Fields, bad, join, object, take, take_at};
use crate::limits;

/// Which endpoint the body came to: `count_tokens` takes no `max_tokens` and no sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Messages,
    CountTokens,
}

fn required(path: &str) -> ApiError {
    bad(path, "Field required")
}

pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<ChatRequest, ApiError> {
    limits::precheck(
        body,
        &[("messages", limits::MAX_MESSAGES), ("system", limits::MAX_PARTS), ("tools", limits::MAX_TOOLS)],
    )?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(None, format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut f) = value else {
        return Err(ApiError::invalid_request(None, "request body must be a JSON object"));
    };

    let model: String = take(&mut f, "model")?.ok_or_else(|| required("model"))?;
    if model.is_empty() {
        return Err(bad("model", "must not be empty"));
    }
    let max_tokens: Option<u32> = take(&mut f, "max_tokens")?;
    if endpoint == Endpoint::Messages {
        match max_tokens {
            None => return Err(required("max_tokens")),
            Some(0) => return Err(bad("max_tokens", "must be at least 1")),
            Some(_) => {}
        }
    }

    let mut messages = match f.remove("system") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_system(v)?,
    };
    let raw_messages: Vec<Value> = take(&mut f, "messages")?.ok_or_else(|| required("messages"))?;
    if raw_messages.is_empty() {
        return Err(bad("messages", "must contain at least one message"));
    }
    limits::check("messages", raw_messages.len(), limits::MAX_MESSAGES)?;
    for (i, m) in raw_messages.into_iter().enumerate() {
        parse_message(m, &format!("messages[{i}]"), &mut messages)?;
    }

    let tools = match take::<Vec<Value>>(&mut f, "tools")? {
        None => Vec::new(),
        Some(tools) => limits::check("tools", tools.len(), limits::MAX_TOOLS).map(|()| tools)?
            .into_iter()
            .enumerate()
            .map(|(i, t)| parse_tool(t, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let (tool_choice, parallel_tool_calls) = match f.remove("tool_choice") {
        None | Some(Value::Null) => (None, None),
        Some(v) => parse_tool_choice(v)?,
    };

    let mut extra = Map::new();
    let mut response_format = match f.remove("output_format") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_format(v, "output_format")?),
    };
    if let Some(v) = f.remove("output_config").filter(|v| !v.is_null()) {
        let mut config = object(v, "output_config")?;
        if let Some(format) = config.remove("format").filter(|v| !v.is_null()) {
            response_format = Some(parse_format(format, "output_config.format")?);
        }
        // Other settings (`effort`, ...) have no canonical name: Anthropic-only extras.
        if !config.is_empty() {
            extra.insert("output_config".to_owned(), Value::Object(config));
        }
    }

    let reasoning = match f.remove("thinking") {
        None | Some(Value::Null) => None,
        Some(v) => parse_thinking(v, &mut extra)?,
    };

    let user = match f.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let mut metadata = object(v, "metadata")?;
            take_at::<String>(&mut metadata, "user_id", "metadata")?
        }
    };

    let params = SamplingParams {
        temperature: take(&mut f, "temperature")?,
        top_p: take(&mut f, "top_p")?,
        top_k: take(&mut f, "top_k")?,
        max_tokens: if endpoint == Endpoint::Messages { max_tokens } else { None },
        stop: take(&mut f, "stop_sequences")?.unwrap_or_default(),
        ..SamplingParams::default()
    };
    let stream = take::<bool>(&mut f, "stream")?.unwrap_or(false);

    // Anything else is a vendor field fungible has no name for (`service_tier`,
    // `context_management`, `mcp_servers`, ...).
    f.extend(extra);
    Ok(ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        params,
        reasoning,
        stream: stream && endpoint == Endpoint::Messages,
        // Anthropic streams always end with usage.
        stream_include_usage: true,
        user,
        extra_body: f,
        ..ChatRequest::default()
    })
}

/// `system`: a string, or text blocks each of which becomes its own system message (so a
/// block's cache breakpoint stays where the client put it).
fn parse_system(value: Value) -> Result<Vec<Message>, ApiError> {
    match value {
        Value::String(text) => Ok(vec![Message::text(Role::System, text)]),
        Value::Array(blocks) => limits::check("system", blocks.len(), limits::MAX_PARTS).map(|()| blocks)?
            .into_iter()
            .enumerate()
            .map(|(i, block)| {
                let path = format!("system[{i}]");
                let mut b = object(block, &path)?;
                let kind: String = take_at(&mut b, "type", &path)?.ok_or_else(|| required(&join(&path, "type")))?;
                if kind != "text" {
                    return Err(bad(join(&path, "type"), format!("system blocks must be text blocks, got {kind:?}")));
                }
                let text: String = take_at(&mut b, "text", &path)?.ok_or_else(|| required(&join(&path, "text")))?;
                let mut message = Message::text(Role::System, text);
                message.cache_control = cache_control(&mut b, &path)?;
                Ok(message)
            })
            .collect(),
        _ => Err(bad("system", "must be a string or an array of text blocks")),
    }
}

/// A block's `cache_control`, if any: `{"type": "ephemeral", "ttl"?: "5m" | "1h"}`.
fn cache_control(block: &mut Fields, path: &str) -> Result<Option<CacheControl>, ApiError> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        ttl: Option<String>,
    }
    let Some(wire) = take_at::<Wire>(block, "cache_control", path)? else {
        return Ok(None);
    };
    if wire.kind != "ephemeral" {
        return Err(bad(
            format!("{path}.cache_control.type"),
            format!("unknown cache type {:?} (expected ephemeral)", wire.kind),
        ));
    }
    Ok(Some(CacheControl { ttl: wire.ttl }))
}

/// One message of `messages`, appended to `out` as one or more canonical messages.
fn parse_message(value: Value, path: &str, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let mut m = object(value, path)?;
    let role: String = take_at(&mut m, "role", path)?.ok_or_else(|| required(&join(path, "role")))?;
    let content = m.remove("content").filter(|v| !v.is_null()).ok_or_else(|| required(&join(path, "content")))?;
    let content_path = join(path, "content");
    let blocks = match content {
        Value::String(text) => {
            let role = match role.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => return Err(unknown_role(path, other)),
            };
            out.push(Message::text(role, text));
            return Ok(());
        }
        Value::Array(blocks) => {
            limits::check(&content_path, blocks.len(), limits::MAX_PARTS)?;
            blocks
        }
        _ => return Err(bad(content_path, "must be a string or an array of content blocks")),
    };
    match role.as_str() {
        "user" => user_blocks(blocks, &content_path, out),
        "assistant" => {
            out.push(assistant_message(blocks, &content_path)?);
            Ok(())
        }
        other => Err(unknown_role(path, other)),
    }
}

fn unknown_role(path: &str, role: &str) -> ApiError {
    bad(join(path, "role"), format!("unknown role {role:?} (expected user or assistant; system prompts go in the top-level system field)"))
}

/// A user turn: each `tool_result` block becomes a tool message, the text and images around
/// them user messages, in order.
fn user_blocks(blocks: Vec<Value>, path: &str, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let mut pending: Option<Message> = None;
    for (k, block) in blocks.into_iter().enumerate() {
        let path = format!("{path}[{k}]");
        let mut b = object(block, &path)?;
        let kind: String = take_at(&mut b, "type", &path)?.ok_or_else(|| required(&join(&path, "type")))?;
        let cache = cache_control(&mut b, &path)?;
        if kind == "tool_result" {
            out.extend(pending.take());
            let mut message = tool_result(&mut b, &path)?;
            if cache.is_some() {
                message.cache_control = cache;
            }
            out.push(message);
            continue;
        }
        let part = match kind.as_str() {
            "text" => text_part(&mut b, &path)?,
            "image" => image_part(&mut b, &path)?,
            other => return Err(unsupported_block(&path, other)),
        };
        let message = pending.get_or_insert_with(|| Message::new(Role::User, Vec::new()));
        message.content.push(part);
        if cache.is_some() {
            message.cache_control = cache;
        }
    }
    out.extend(pending);
    Ok(())
}

fn unsupported_block(path: &str, kind: &str) -> ApiError {
    let what = match kind {
        "document" | "search_result" | "container_upload" => "is not supported yet",
        "tool_use" | "thinking" | "redacted_thinking" => "is only allowed in assistant messages",
        "tool_result" => "is only allowed in user messages",
        "server_tool_use" | "web_search_tool_result" | "web_fetch_tool_result" | "code_execution_tool_result"
        | "mcp_tool_use" | "mcp_tool_result" => "(a server tool block) is not supported yet",
        _ => "is not a known content block type",
    };
    bad(format!("{path}.type"), format!("content block type {kind:?} {what}"))
}

fn text_part(b: &mut Fields, path: &str) -> Result<ContentPart, ApiError> {
    let text: String = take_at(b, "text", path)?.ok_or_else(|| required(&join(path, "text")))?;
    Ok(ContentPart::Text { text })
}

fn image_part(b: &mut Fields, path: &str) -> Result<ContentPart, ApiError> {
    let source_path = join(path, "source");
    let mut source = object(b.remove("source").ok_or_else(|| required(&source_path))?, &source_path)?;
    let kind: String =
        take_at(&mut source, "type", &source_path)?.ok_or_else(|| required(&join(&source_path, "type")))?;
    let source = match kind.as_str() {
        "base64" => {
            let media_type: String = take_at(&mut source, "media_type", &source_path)?
                .ok_or_else(|| required(&join(&source_path, "media_type")))?;
            let data: String =
                take_at(&mut source, "data", &source_path)?.ok_or_else(|| required(&join(&source_path, "data")))?;
            if media_type.is_empty() {
                return Err(bad(join(&source_path, "media_type"), "must not be empty"));
            }
            ImageSource::Base64 { media_type, data }
        }
        "url" => {
            let url: String =
                take_at(&mut source, "url", &source_path)?.ok_or_else(|| required(&join(&source_path, "url")))?;
            ImageSource::Url(url)
        }
        other => {
            return Err(bad(
                join(&source_path, "type"),
                format!("image source type {other:?} is not supported (expected base64 or url)"),
            ));
        }
    };
    Ok(ContentPart::Image { source, detail: None })
}

/// A `tool_result` block as a canonical tool message.
fn tool_result(b: &mut Fields, path: &str) -> Result<Message, ApiError> {
    let id: String = take_at(b, "tool_use_id", path)?.ok_or_else(|| required(&join(path, "tool_use_id")))?;
    let content_path = join(path, "content");
    let mut inner_cache = None;
    let content = match b.remove("content") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![ContentPart::Text { text }],
        Some(Value::Array(blocks)) => {
            limits::check(&content_path, blocks.len(), limits::MAX_PARTS)?;
            let mut parts = Vec::new();
            for (k, block) in blocks.into_iter().enumerate() {
                let path = format!("{content_path}[{k}]");
                let mut inner = object(block, &path)?;
                let kind: String =
                    take_at(&mut inner, "type", &path)?.ok_or_else(|| required(&join(&path, "type")))?;
                // A breakpoint inside a result marks the result itself.
                if let Some(cache) = cache_control(&mut inner, &path)? {
                    inner_cache = Some(cache);
                }
                parts.push(match kind.as_str() {
                    "text" => text_part(&mut inner, &path)?,
                    "image" => image_part(&mut inner, &path)?,
                    other => return Err(unsupported_block(&path, other)),
                });
            }
            parts
        }
        Some(_) => return Err(bad(content_path, "must be a string or an array of content blocks")),
    };
    let mut message = Message::new(Role::Tool, content);
    message.tool_call_id = Some(id);
    message.is_error = take_at::<bool>(b, "is_error", path)?.unwrap_or(false);
    message.cache_control = inner_cache;
    Ok(message)
}

/// An assistant turn: thinking blocks become reasoning, text the content, `tool_use` blocks
/// tool calls; a breakpoint on any block marks the message.
fn assistant_message(blocks: Vec<Value>, path: &str) -> Result<Message, ApiError> {
    let mut message = Message::new(Role::Assistant, Vec::new());
    for (k, block) in blocks.into_iter().enumerate() {
        let path = format!("{path}[{k}]");
        let mut b = object(block, &path)?;
        let kind: String = take_at(&mut b, "type", &path)?.ok_or_else(|| required(&join(&path, "type")))?;
        if let Some(cache) = cache_control(&mut b, &path)? {
            message.cache_control = Some(cache);
        }
        match kind.as_str() {
            "text" => message.content.push(text_part(&mut b, &path)?),
            "tool_use" => {
                let id: String = take_at(&mut b, "id", &path)?.ok_or_else(|| required(&join(&path, "id")))?;
                let name: String = take_at(&mut b, "name", &path)?.ok_or_else(|| required(&join(&path, "name")))?;
                let arguments = match b.remove("input") {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(input @ Value::Object(_)) => input.to_string(),
                    Some(_) => return Err(bad(join(&path, "input"), "must be an object")),
                };
                message.tool_calls.push(ToolCall { id, name, arguments });
            }
            "thinking" => {
                let text: String =
                    take_at(&mut b, "thinking", &path)?.ok_or_else(|| required(&join(&path, "thinking")))?;
                let signature: Option<String> = take_at(&mut b, "signature", &path)?;
                message.reasoning.push(ReasoningBlock::Thinking { text, signature });
            }
            "redacted_thinking" => {
                let data: String = take_at(&mut b, "data", &path)?.ok_or_else(|| required(&join(&path, "data")))?;
                message.reasoning.push(ReasoningBlock::Redacted { data });
            }
            other => return Err(unsupported_block(&path, other)),
        }
    }
    Ok(message)
}

fn parse_tool(value: Value, path: &str) -> Result<Tool, ApiError> {
    let mut t = object(value, path)?;
    if let Some(kind) = take_at::<String>(&mut t, "type", path)?.filter(|k| k != "custom") {
        return Err(bad(
            join(path, "type"),
            format!("tool type {kind:?} (an Anthropic server tool) is not supported yet; define a custom tool with input_schema"),
        ));
    }
    let name: String = take_at(&mut t, "name", path)?.ok_or_else(|| required(&join(path, "name")))?;
    if name.is_empty() {
        return Err(bad(join(path, "name"), "must not be empty"));
    }
    let parameters: Value =
        take_at(&mut t, "input_schema", path)?.ok_or_else(|| required(&join(path, "input_schema")))?;
    if !parameters.is_object() {
        return Err(bad(join(path, "input_schema"), "must be a JSON Schema object"));
    }
    let mut tool = Tool::new(name, take_at(&mut t, "description", path)?, parameters);
    tool.strict = take_at(&mut t, "strict", path)?;
    tool.cache_control = cache_control(&mut t, path)?;
    Ok(tool)
}

/// `tool_choice` and the parallel-calls switch folded into it.
fn parse_tool_choice(value: Value) -> Result<(Option<ToolChoice>, Option<bool>), ApiError> {
    let mut c = object(value, "tool_choice")?;
    let kind: String = take_at(&mut c, "type", "tool_choice")?.ok_or_else(|| required("tool_choice.type"))?;
    let choice = match kind.as_str() {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Tool(take_at(&mut c, "name", "tool_choice")?.ok_or_else(|| required("tool_choice.name"))?),
        other => {
            return Err(bad("tool_choice.type", format!("unknown tool choice {other:?} (expected auto, any, tool or none)")));
        }
    };
    let disable_parallel: Option<bool> = take_at(&mut c, "disable_parallel_tool_use", "tool_choice")?;
    Ok((Some(choice), disable_parallel.map(|disable| !disable)))
}

/// `output_format` / `output_config.format`: `{"type": "json_schema", "schema": {...}}`.
/// Anthropic's structured outputs are always strict, so the canonical format is too.
fn parse_format(value: Value, path: &str) -> Result<ResponseFormat, ApiError> {
    let mut f = object(value, path)?;
    let kind: String = take_at(&mut f, "type", path)?.ok_or_else(|| required(&join(path, "type")))?;
    if kind != "json_schema" {
        return Err(bad(join(path, "type"), format!("unknown format {kind:?} (expected json_schema)")));
    }
    let schema: Value = take_at(&mut f, "schema", path)?.ok_or_else(|| required(&join(path, "schema")))?;
    Ok(ResponseFormat::JsonSchema(JsonSchemaFormat {
        name: "response".to_owned(),
        description: None,
        schema,
        strict: Some(true),
    }))
}

/// `thinking`: `enabled` with a budget becomes a canonical budget (and the nearest effort
/// level, for vendors that take a level); `disabled` is no reasoning; other kinds
/// (`adaptive`, ...) have no canonical form and pass through to Anthropic as they are.
fn parse_thinking(value: Value, extra: &mut Fields) -> Result<Option<ReasoningConfig>, ApiError> {
    let mut t = object(value.clone(), "thinking")?;
    let kind: String = take_at(&mut t, "type", "thinking")?.ok_or_else(|| required("thinking.type"))?;
    match kind.as_str() {
        "enabled" => {
            let budget: u32 =
                take_at(&mut t, "budget_tokens", "thinking")?.ok_or_else(|| required("thinking.budget_tokens"))?;
            Ok(Some(ReasoningConfig { effort: Some(effort_for_budget(budget)), budget_tokens: Some(budget) }))
        }
        "disabled" => Ok(None),
        _ => {
            extra.insert("thinking".to_owned(), value);
            Ok(None)
        }
    }
}

/// The effort level whose budget is nearest below `budget` (see `ReasoningEffort::budget_tokens`).
fn effort_for_budget(budget: u32) -> ReasoningEffort {
    match budget {
        0..4096 => ReasoningEffort::Low,
        4096..16384 => ReasoningEffort::Medium,
        _ => ReasoningEffort::High,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(body: &str) -> ChatRequest {
        parse(body.as_bytes(), Endpoint::Messages).unwrap_or_else(|e| panic!("{body}: {}", e.message))
    }

    #[test]
    fn errors_name_the_field() {
        let m = r#""model":"a/b","max_tokens":10"#;
        let cases = [
            ("{".to_owned(), None),
            ("[]".to_owned(), None),
            (r#"{"max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#.to_owned(), Some("model")),
            (r#"{"model":"a/b","messages":[{"role":"user","content":"hi"}]}"#.to_owned(), Some("max_tokens")),
            (format!(r#"{{{m}}}"#), Some("messages")),
            (format!(r#"{{{m},"messages":[]}}"#), Some("messages")),
            (format!(r#"{{{m},"messages":[{{"role":"system","content":"x"}}]}}"#), Some("messages[0].role")),
            (format!(r#"{{{m},"messages":[{{"role":"user"}}]}}"#), Some("messages[0].content")),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":5}}]}}"#), Some("messages[0].content")),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":[{{"type":"text"}}]}}]}}"#), Some("messages[0].content[0].text")),
            (
                format!(r#"{{{m},"messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","data":"x"}}}}]}}]}}"#),
                Some("messages[0].content[0].source.media_type"),
            ),
            (
                format!(r#"{{{m},"messages":[{{"role":"user","content":[{{"type":"document","source":{{}}}}]}}]}}"#),
                Some("messages[0].content[0].type"),
            ),
            (
                format!(r#"{{{m},"messages":[{{"role":"user","content":[{{"type":"tool_result"}}]}}]}}"#),
                Some("messages[0].content[0].tool_use_id"),
            ),
            (
                format!(r#"{{{m},"messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"t","name":"f","input":[1]}}]}}]}}"#),
                Some("messages[0].content[0].input"),
            ),
            (
                format!(r#"{{{m},"messages":[{{"role":"user","content":[{{"type":"text","text":"x","cache_control":{{"type":"forever"}}}}]}}]}}"#),
                Some("messages[0].content[0].cache_control.type"),
            ),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"system":[{{"type":"image"}}]}}"#), Some("system[0].type")),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"temperature":"hot"}}"#), Some("temperature")),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"tools":[{{"name":"f"}}]}}"#), Some("tools[0].input_schema")),
            (
                format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"tools":[{{"type":"web_search_20250305","name":"web_search"}}]}}"#),
                Some("tools[0].type"),
            ),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"tool_choice":{{"type":"tool"}}}}"#), Some("tool_choice.name")),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"thinking":{{"type":"enabled"}}}}"#), Some("thinking.budget_tokens")),
            (
                format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"output_config":{{"format":{{"type":"xml"}}}}}}"#),
                Some("output_config.format.type"),
            ),
            (format!(r#"{{{m},"messages":[{{"role":"user","content":"x"}}],"metadata":{{"user_id":5}}}}"#), Some("metadata.user_id")),
        ];
        for (body, param) in cases {
            let e = parse(body.as_bytes(), Endpoint::Messages).expect_err(&body);
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            if let Some(p) = param {
                assert!(e.message.starts_with(p), "{body}: {}", e.message);
            }
        }
    }

    #[test]
    fn count_tokens_needs_no_max_tokens() {
        let req = parse(br#"{"model":"a/b","messages":[{"role":"user","content":"hi"}]}"#, Endpoint::CountTokens)
            .expect("parses");
        assert_eq!(req.params.max_tokens, None);
        assert!(!req.stream);
    }

    #[test]
    fn system_blocks_user_tool_results_and_assistant_turns() {
        let req = parse_ok(
            r#"{"model":"a/b","max_tokens":10,
            "system":[{"type":"text","text":"one"},{"type":"text","text":"two","cache_control":{"type":"ephemeral","ttl":"1h"}}],
            "messages":[
              {"role":"user","content":"go"},
              {"role":"assistant","content":[
                {"type":"thinking","thinking":"hm","signature":"sig"},
                {"type":"redacted_thinking","data":"opaque"},
                {"type":"text","text":"Checking."},
                {"type":"tool_use","id":"t1","name":"f","input":{"x":1}},
                {"type":"tool_use","id":"t2","name":"g","input":{}}]},
              {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"t1","content":"one"},
                {"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[{"type":"text","text":"bad"}],"cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"and?"},
                {"type":"text","text":"now","cache_control":{"type":"ephemeral"}}]}
            ]}"#,
        );
        let m = &req.messages;
        assert_eq!(m.len(), 7, "{m:#?}");
        assert_eq!((m[0].role, m[0].joined_text().as_str(), m[0].cache_control.is_none()), (Role::System, "one", true));
        assert_eq!(m[1].cache_control, Some(CacheControl { ttl: Some("1h".into()) }));
        assert_eq!(m[2].role, Role::User);
        let a = &m[3];
        assert_eq!(a.role, Role::Assistant);
        assert_eq!(a.joined_text(), "Checking.");
        assert_eq!(
            a.reasoning,
            [
                ReasoningBlock::Thinking { text: "hm".into(), signature: Some("sig".into()) },
                ReasoningBlock::Redacted { data: "opaque".into() }
            ]
        );
        assert_eq!(a.tool_calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(a.tool_calls[1].arguments, "{}");
        assert_eq!((m[4].role, m[4].tool_call_id.as_deref(), m[4].is_error), (Role::Tool, Some("t1"), false));
        assert_eq!((m[5].tool_call_id.as_deref(), m[5].is_error, m[5].joined_text().as_str()), (Some("t2"), true, "bad"));
        assert!(m[5].cache_control.is_some());
        assert_eq!((m[6].role, m[6].content.len()), (Role::User, 2));
        assert!(m[6].cache_control.is_some());
    }

    #[test]
    fn sampling_tools_thinking_and_formats() {
        let req = parse_ok(
            r#"{"model":"a/b","max_tokens":100,"messages":[{"role":"user","content":"x"}],
            "temperature":0.5,"top_p":0.9,"top_k":40,"stop_sequences":["END"],"metadata":{"user_id":"u-1"},
            "tools":[{"name":"f","description":"d","input_schema":{"type":"object"},"cache_control":{"type":"ephemeral"}}],
            "tool_choice":{"type":"any","disable_parallel_tool_use":true},
            "thinking":{"type":"enabled","budget_tokens":2048},
            "output_config":{"format":{"type":"json_schema","schema":{"type":"object"}},"effort":"high"},
            "service_tier":"auto","stream":true}"#,
        );
        assert_eq!(req.params.temperature, Some(0.5));
        assert_eq!(req.params.top_k, Some(40));
        assert_eq!(req.params.max_tokens, Some(100));
        assert_eq!(req.params.stop, ["END"]);
        assert_eq!(req.user.as_deref(), Some("u-1"));
        assert_eq!(req.tools[0].cache_control, Some(CacheControl::default()));
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert_eq!(req.parallel_tool_calls, Some(false));
        assert_eq!(req.reasoning, Some(ReasoningConfig { effort: Some(ReasoningEffort::Low), budget_tokens: Some(2048) }));
        let Some(ResponseFormat::JsonSchema(format)) = &req.response_format else { panic!("{:?}", req.response_format) };
        assert_eq!((format.name.as_str(), format.strict), ("response", Some(true)));
        assert!(req.stream);
        assert_eq!(req.extra_body["service_tier"], "auto");
        assert_eq!(req.extra_body["output_config"], serde_json::json!({"effort": "high"}));

        let off = parse_ok(r#"{"model":"a/b","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"disabled"}}"#);
        assert_eq!(off.reasoning, None);
        assert!(off.extra_body.is_empty());
        let adaptive =
            parse_ok(r#"{"model":"a/b","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"adaptive"}}"#);
        assert_eq!(adaptive.extra_body["thinking"], serde_json::json!({"type": "adaptive"}));
        let legacy = parse_ok(
            r#"{"model":"a/b","max_tokens":1,"messages":[{"role":"user","content":"x"}],"output_format":{"type":"json_schema","schema":{"type":"object"}}}"#,
        );
        assert!(matches!(legacy.response_format, Some(ResponseFormat::JsonSchema(_))));
    }
}
