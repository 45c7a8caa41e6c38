//! Parses a Gemini `GenerateContentRequest` body into a canonical [`ChatRequest`].
//!
//! Every field is accepted in both spellings the Google SDKs send, `lowerCamelCase` and
//! `snake_case` (the camelCase one wins when a body has both), and errors name the field as the
//! client spelled it (`contents[1].parts[0].inlineData.data`). Gemini-only fields
//! (`safetySettings`, `cachedContent`, non-function tools, ...) become `extra_body` when the model
//! resolves to a Gemini provider and are dropped otherwise: a vendor field must not reach
//! another vendor.

use fungible_types::{
    ChatRequest, ContentPart, ImageSource, JsonSchemaFormat, Message, ReasoningBlock, ReasoningConfig,
    ReasoningEffort, ResponseFormat, Role, SamplingParams, Tool, ToolCall, ToolChoice,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::fields::{Fields, bad, from_value, join, object};
use crate::limits;

/// A parsed request and the rendering choices that come with it.
#[derive(Debug)]
pub struct Parsed {
    pub request: ChatRequest,
    /// `generationConfig.thinkingConfig.includeThoughts`: render reasoning as thought parts.
    pub include_thoughts: bool,
}

/// `systemInstruction` -> `system_instruction`.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `safety_settings` -> `safetySettings`; camelCase keys come back unchanged.
fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes `key` (camelCase) and its snake_case spelling; returns the value (camelCase wins)
/// and the spelling it came under. `null` counts as absent.
fn take_raw(f: &mut Fields, key: &str) -> Option<(String, Value)> {
    let snake = snake_case(key);
    let camel = f.remove(key).filter(|v| !v.is_null()).map(|v| (key.to_owned(), v));
    let snake = if snake == key { None } else { f.remove(&snake).filter(|v| !v.is_null()).map(|v| (snake, v)) };
    camel.or(snake)
}

/// [`take_raw`], deserialized; errors name `path.key` as the client spelled it.
fn take<T: DeserializeOwned>(f: &mut Fields, key: &str, path: &str) -> Result<Option<T>, ApiError> {
    match take_raw(f, key) {
        None => Ok(None),
        Some((name, value)) => from_value(value, &join(path, &name)).map(Some),
    }
}

/// Where the fields fungible has no canonical name for go.
struct Extra {
    /// The model resolves to a Gemini provider: Gemini-only fields are passed on.
    gemini: bool,
    body: Fields,
}

impl Extra {
    /// Keeps `value` as `key` inside the nested objects `sections` (top level when empty) for
    /// a Gemini upstream, with keys in camelCase so they merge with what the provider writes;
    /// drops it otherwise.
    fn keep(&mut self, sections: &[&str], key: &str, value: Value) {
        let key = camel_case(key);
        if !self.gemini {
            let field = sections.iter().copied().chain([key.as_str()]).collect::<Vec<_>>().join(".");
            tracing::debug!(%field, "dropping a Gemini-only field: the model is not served by Gemini");
            return;
        }
        let mut map = &mut self.body;
        for section in sections {
            let entry = map.entry((*section).to_owned()).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(inner) = entry else { return };
            map = inner;
        }
        map.insert(key, value);
    }
}

/// Parses `body` for `model` (already taken from the URL). `gemini_upstream` says whether
/// the model resolves to a Gemini provider, which decides what happens to Gemini-only fields.
pub fn parse(body: &[u8], model: &str, stream: bool, gemini_upstream: bool) -> Result<Parsed, ApiError> {
    limits::precheck(body, &[("contents", limits::MAX_MESSAGES), ("tools", limits::MAX_TOOLS)])?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(None, format!("request body is not valid JSON: {e}")))?;
    let Value::Object(f) = value else {
        return Err(ApiError::invalid_request(None, "request body must be a JSON object"));
    };
    parse_fields(f, model, stream, gemini_upstream)
}

/// `countTokens` takes either `contents` alone or a whole request as `generateContentRequest`.
pub fn parse_count_tokens(body: &[u8], model: &str, gemini_upstream: bool) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(None, format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut f) = value else {
        return Err(ApiError::invalid_request(None, "request body must be a JSON object"));
    };
    match take_raw(&mut f, "generateContentRequest") {
        Some((name, inner)) => {
            let inner = object(inner, &name)?;
            parse_fields(inner, model, false, gemini_upstream).map_err(|mut e| {
                if let Some(param) = &e.param {
                    let qualified = format!("{name}.{param}");
                    e.message = e.message.replacen(param.as_str(), &qualified, 1);
                    e.param = Some(qualified);
                }
                e
            })
        }
        None => parse_fields(f, model, false, gemini_upstream),
    }
}

fn parse_fields(mut f: Fields, model: &str, stream: bool, gemini_upstream: bool) -> Result<Parsed, ApiError> {
    // The URL names the model; `countTokens`' inner request repeats it.
    f.remove("model");
    let mut extra = Extra { gemini: gemini_upstream, body: Map::new() };

    let mut messages = Vec::new();
    if let Some((name, value)) = take_raw(&mut f, "systemInstruction")
        && let Some(system) = parse_system(value, &name)?
    {
        messages.push(system);
    }
    let (name, contents) = take_raw(&mut f, "contents").ok_or_else(|| bad("contents", "is required"))?;
    let Value::Array(contents) = contents else {
        return Err(bad(name, "must be an array of contents"));
    };
    if contents.is_empty() {
        return Err(bad(name, "must contain at least one content"));
    }
    limits::check(&name, contents.len(), limits::MAX_MESSAGES)?;
    parse_contents(contents, &name, &mut messages)?;

    let mut tools = match take_raw(&mut f, "tools") {
        None => Vec::new(),
        Some((name, value)) => parse_tools(value, &name, &mut extra)?,
    };
    let tool_choice = match take_raw(&mut f, "toolConfig") {
        None => None,
        Some((name, value)) => parse_tool_config(value, &name, &mut tools, &mut extra)?,
    };

    let mut generation = Generation::default();
    if let Some((name, value)) = take_raw(&mut f, "generationConfig") {
        generation = parse_generation_config(value, &name, &mut extra)?;
    }

    for (key, value) in f {
        extra.keep(&[], &key, value);
    }

    let request = ChatRequest {
        model: model.to_owned(),
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: None,
        response_format: generation.response_format,
        params: generation.params,
        reasoning: generation.reasoning,
        stream,
        // Gemini reports usage on every stream.
        stream_include_usage: stream,
        extra_body_vendor: (!extra.body.is_empty()).then_some(fungible_types::VendorFamily::Gemini),
        extra_body: extra.body,
        ..ChatRequest::default()
    };
    Ok(Parsed { request, include_thoughts: generation.include_thoughts })
}

// ---- contents ----

fn parse_system(value: Value, path: &str) -> Result<Option<Message>, ApiError> {
    let parts = match value {
        Value::String(text) => vec![Value::Object(Map::from_iter([("text".to_owned(), Value::String(text))]))],
        Value::Array(parts) => parts,
        Value::Object(mut content) => match take_raw(&mut content, "parts") {
            Some((_, Value::Array(parts))) => parts,
            Some((name, _)) => return Err(bad(format!("{path}.{name}"), "must be an array of parts")),
            None => Vec::new(),
        },
        _ => return Err(bad(path, "must be a content, a string or an array of parts")),
    };
    let parts_path = format!("{path}.parts");
    limits::check(&parts_path, parts.len(), limits::MAX_PARTS)?;
    let mut content = Vec::new();
    for (k, part) in parts.into_iter().enumerate() {
        let part_path = format!("{parts_path}[{k}]");
        let mut part = object(part, &part_path)?;
        match take::<String>(&mut part, "text", &part_path)? {
            Some(text) if !text.is_empty() => content.push(ContentPart::Text { text }),
            Some(_) => {}
            None => return Err(bad(part_path, "only text parts are supported in a system instruction")),
        }
    }
    Ok((!content.is_empty()).then(|| Message::new(Role::System, content)))
}

/// A tool call seen in an earlier model turn, for matching function responses to it.
struct SeenCall {
    id: String,
    name: String,
    answered: bool,
}

fn parse_contents(contents: Vec<Value>, path: &str, messages: &mut Vec<Message>) -> Result<(), ApiError> {
    let mut calls: Vec<SeenCall> = Vec::new();
    // Consecutive model contents are one turn: a streamed answer comes back from the SDKs as
    // one content per chunk. (first content index, parts with their paths)
    let mut model_turn: Option<(usize, Vec<(String, Value)>)> = None;
    for (i, content) in contents.into_iter().enumerate() {
        let content_path = format!("{path}[{i}]");
        let mut content = object(content, &content_path)?;
        let role: Option<String> = take(&mut content, "role", &content_path)?;
        let (parts_name, parts) = take_raw(&mut content, "parts").ok_or_else(|| bad(format!("{content_path}.parts"), "is required"))?;
        let parts_path = format!("{content_path}.{parts_name}");
        let Value::Array(parts) = parts else {
            return Err(bad(parts_path, "must be an array of parts"));
        };
        limits::check(&parts_path, parts.len(), limits::MAX_PARTS)?;
        match role.as_deref() {
            // `function` is the older name for the turn that carries function responses.
            None | Some("user" | "function") => {
                if let Some((turn, parts)) = model_turn.take() {
                    messages.extend(parse_model_turn(parts, turn, &mut calls)?);
                }
                parse_user_turn(parts, &parts_path, &mut calls, messages)?;
            }
            Some("model") => {
                let (_, turn_parts) = model_turn.get_or_insert_with(|| (i, Vec::new()));
                turn_parts.extend(parts.into_iter().enumerate().map(|(k, part)| (format!("{parts_path}[{k}]"), part)));
            }
            Some(other) => {
                return Err(bad(format!("{content_path}.role"), format!("unknown role {other:?} (expected user or model)")));
            }
        }
    }
    if let Some((turn, parts)) = model_turn {
        messages.extend(parse_model_turn(parts, turn, &mut calls)?);
    }
    Ok(())
}

/// A part's fields, and which data field it holds.
struct RawPart {
    fields: Fields,
    path: String,
    thought: bool,
    signature: Option<String>,
}

fn raw_part(value: Value, path: String) -> Result<RawPart, ApiError> {
    let mut fields = object(value, &path)?;
    let thought = take::<bool>(&mut fields, "thought", &path)?.unwrap_or(false);
    let signature = take::<String>(&mut fields, "thoughtSignature", &path)?.filter(|s| !s.is_empty());
    for meta in ["videoMetadata", "partMetadata", "mediaResolution"] {
        if take_raw(&mut fields, meta).is_some() {
            tracing::debug!(field = meta, "dropping part metadata fungible does not translate");
        }
    }
    Ok(RawPart { fields, path, thought, signature })
}

fn unsupported_part(path: &str) -> ApiError {
    bad(path, "unsupported part (expected text, inlineData, fileData, functionCall or functionResponse)")
}

fn parse_user_turn(
    parts: Vec<Value>,
    path: &str,
    calls: &mut [SeenCall],
    messages: &mut Vec<Message>,
) -> Result<(), ApiError> {
    let mut pending: Vec<ContentPart> = Vec::new();
    for (k, part) in parts.into_iter().enumerate() {
        let mut part = raw_part(part, format!("{path}[{k}]"))?;
        if let Some(text) = take::<String>(&mut part.fields, "text", &part.path)? {
            if !text.is_empty() {
                pending.push(ContentPart::Text { text });
            }
        } else if let Some(image) = media_part(&mut part)? {
            pending.push(image);
        } else if let Some((name, response)) = take_raw(&mut part.fields, "functionResponse") {
            if !pending.is_empty() {
                messages.push(Message::new(Role::User, std::mem::take(&mut pending)));
            }
            messages.push(function_response(response, &format!("{}.{name}", part.path), calls)?);
        } else if take_raw(&mut part.fields, "functionCall").is_some() {
            return Err(bad(format!("{}.functionCall", part.path), "function calls belong in model turns"));
        } else {
            return Err(unsupported_part(&part.path));
        }
    }
    if !pending.is_empty() {
        messages.push(Message::new(Role::User, pending));
    }
    Ok(())
}

/// An `inlineData` or `fileData` part as an image.
fn media_part(part: &mut RawPart) -> Result<Option<ContentPart>, ApiError> {
    if let Some((name, blob)) = take_raw(&mut part.fields, "inlineData") {
        let path = format!("{}.{name}", part.path);
        let mut blob = object(blob, &path)?;
        let mime: String = take(&mut blob, "mimeType", &path)?.ok_or_else(|| bad(format!("{path}.mimeType"), "is required"))?;
        check_image_mime(&mime, &format!("{path}.mimeType"))?;
        let data: String = take(&mut blob, "data", &path)?.ok_or_else(|| bad(format!("{path}.data"), "is required"))?;
        let data = standard_base64(&data).map_err(|why| bad(format!("{path}.data"), why))?;
        let source = ImageSource::Base64 { media_type: mime, data };
        return Ok(Some(ContentPart::Image { source, detail: None }));
    }
    if let Some((name, file)) = take_raw(&mut part.fields, "fileData") {
        let path = format!("{}.{name}", part.path);
        let mut file = object(file, &path)?;
        if let Some(mime) = take::<String>(&mut file, "mimeType", &path)? {
            check_image_mime(&mime, &format!("{path}.mimeType"))?;
        }
        let uri: String = take(&mut file, "fileUri", &path)?.ok_or_else(|| bad(format!("{path}.fileUri"), "is required"))?;
        if uri.is_empty() {
            return Err(bad(format!("{path}.fileUri"), "must not be empty"));
        }
        return Ok(Some(ContentPart::Image { source: ImageSource::Url(uri), detail: None }));
    }
    Ok(None)
}

fn check_image_mime(mime: &str, path: &str) -> Result<(), ApiError> {
    if mime.starts_with("image/") {
        Ok(())
    } else {
        Err(bad(path, format!("only images are supported, got {mime:?}")))
    }
}

/// Base64 in the standard alphabet with padding, from standard or URL-safe base64 (with or
/// without padding; whitespace is skipped).
fn standard_base64(data: &str) -> Result<String, String> {
    let mut out = String::with_capacity(data.len() + 2);
    let mut padding = 0usize;
    for c in data.chars() {
        let c = match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '+' | '/' => c,
            '-' => '+',
            '_' => '/',
            '=' => {
                padding += 1;
                continue;
            }
            c if c.is_ascii_whitespace() => continue,
            c => return Err(format!("is not base64: unexpected character {c:?}")),
        };
        if padding > 0 {
            return Err("is not base64: '=' padding in the middle".to_owned());
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err("must not be empty".to_owned());
    }
    match out.len() % 4 {
        0 if padding == 0 => {}
        2 if padding == 0 || padding == 2 => out.push_str("=="),
        3 if padding == 0 || padding == 1 => out.push('='),
        _ => return Err("is not valid base64: wrong length or padding".to_owned()),
    }
    Ok(out)
}

/// A `functionResponse` as a canonical tool message. It answers the call with its `id` when
/// it has one, else the earliest unanswered call of the same name.
fn function_response(value: Value, path: &str, calls: &mut [SeenCall]) -> Result<Message, ApiError> {
    let mut fr = object(value, path)?;
    let id: Option<String> = take::<String>(&mut fr, "id", path)?.filter(|id| !id.is_empty());
    let name: Option<String> = take(&mut fr, "name", path)?;
    let response: Value = take(&mut fr, "response", path)?.unwrap_or_else(|| json!({}));
    if take_raw(&mut fr, "parts").is_some() {
        tracing::debug!("dropping the parts of a function response: only its response object is translated");
    }
    let call = match (&id, &name) {
        (Some(id), _) => calls.iter_mut().find(|c| &c.id == id),
        (None, Some(name)) => calls.iter_mut().find(|c| !c.answered && &c.name == name),
        (None, None) => return Err(bad(format!("{path}.name"), "is required")),
    };
    let mut message = Message::new(Role::Tool, vec![ContentPart::Text { text: response.to_string() }]);
    // Google's convention: `error` holds a failure, `output` a result.
    message.is_error = response.get("error").is_some() && response.get("output").is_none();
    match call {
        Some(call) => {
            call.answered = true;
            message.tool_call_id = Some(call.id.clone());
        }
        None => {
            message.tool_call_id = id;
            message.name = name;
        }
    }
    Ok(message)
}

/// One model turn (the parts of one or more consecutive model contents, the first of which is
/// `contents[turn]`) as an assistant message; `None` when nothing is left of it.
fn parse_model_turn(parts: Vec<(String, Value)>, turn: usize, calls: &mut Vec<SeenCall>) -> Result<Option<Message>, ApiError> {
    let mut content: Vec<ContentPart> = Vec::new();
    let mut tool_calls = Vec::new();
    let mut reasoning: Vec<ReasoningBlock> = Vec::new();
    // The last reasoning block is thought text still waiting for its signature.
    let mut open_thought = false;
    for (path, part) in parts {
        let mut part = raw_part(part, path)?;
        if part.thought {
            let text: String = take(&mut part.fields, "text", &part.path)?.unwrap_or_default();
            match reasoning.last_mut() {
                Some(ReasoningBlock::Thinking { text: open, signature: None }) if open_thought => open.push_str(&text),
                _ => reasoning.push(ReasoningBlock::Thinking { text, signature: None }),
            }
            open_thought = true;
            if let Some(signature) = part.signature {
                close_thought(&mut reasoning, &mut open_thought, signature);
            }
            continue;
        }
        // A signature on an ordinary part stands for the thinking before it.
        if let Some(signature) = part.signature.take() {
            close_thought(&mut reasoning, &mut open_thought, signature);
        }
        open_thought = false;
        if let Some(text) = take::<String>(&mut part.fields, "text", &part.path)? {
            // Adjacent text parts of a model turn are one text, as Google's `.text` reads them
            // (and a streamed answer arrives in pieces).
            match content.last_mut() {
                Some(ContentPart::Text { text: previous }) => previous.push_str(&text),
                _ if text.is_empty() => {}
                _ => content.push(ContentPart::Text { text }),
            }
        } else if let Some((name, call)) = take_raw(&mut part.fields, "functionCall") {
            let call_path = format!("{}.{name}", part.path);
            let mut call = object(call, &call_path)?;
            let id: Option<String> = take::<String>(&mut call, "id", &call_path)?.filter(|id| !id.is_empty());
            let name: String = take(&mut call, "name", &call_path)?.ok_or_else(|| bad(format!("{call_path}.name"), "is required"))?;
            let arguments = match take_raw(&mut call, "args") {
                None => "{}".to_owned(),
                Some((_, args @ Value::Object(_))) => args.to_string(),
                Some((args_name, _)) => return Err(bad(format!("{call_path}.{args_name}"), "must be an object")),
            };
            // Gemini may leave ids out; these are stable across turns of one conversation.
            let id = id.unwrap_or_else(|| format!("call_{turn}_{}", tool_calls.len()));
            calls.push(SeenCall { id: id.clone(), name: name.clone(), answered: false });
            tool_calls.push(ToolCall { id, name, arguments });
        } else if media_part(&mut part)?.is_some() {
            return Err(bad(&part.path, "images are only allowed in user turns"));
        } else if take_raw(&mut part.fields, "functionResponse").is_some() {
            return Err(bad(format!("{}.functionResponse", part.path), "function responses belong in user turns"));
        } else {
            return Err(unsupported_part(&part.path));
        }
    }
    if content.is_empty() && tool_calls.is_empty() && reasoning.is_empty() {
        return Ok(None);
    }
    let mut message = Message::new(Role::Assistant, content);
    message.tool_calls = tool_calls;
    message.reasoning = reasoning;
    Ok(Some(message))
}

/// Gives `signature` to the open thought block, or to a block of its own.
fn close_thought(reasoning: &mut Vec<ReasoningBlock>, open_thought: &mut bool, signature: String) {
    match reasoning.last_mut() {
        Some(ReasoningBlock::Thinking { signature: slot @ None, .. }) if *open_thought => *slot = Some(signature),
        _ => reasoning.push(ReasoningBlock::Thinking { text: String::new(), signature: Some(signature) }),
    }
    *open_thought = false;
}

// ---- tools ----

fn parse_tools(value: Value, path: &str, extra: &mut Extra) -> Result<Vec<Tool>, ApiError> {
    let Value::Array(entries) = value else {
        return Err(bad(path, "must be an array of tools"));
    };
    limits::check(path, entries.len(), limits::MAX_TOOLS)?;
    let original = entries.clone();
    let mut tools = Vec::new();
    let mut other_tools = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let mut entry = object(entry, &entry_path)?;
        if let Some((name, declarations)) = take_raw(&mut entry, "functionDeclarations") {
            let decl_path = format!("{entry_path}.{name}");
            let Value::Array(declarations) = declarations else {
                return Err(bad(decl_path, "must be an array of function declarations"));
            };
            // The declarations of all the entries count together: each is one tool.
            limits::check(&decl_path, tools.len() + declarations.len(), limits::MAX_TOOLS)?;
            for (j, declaration) in declarations.into_iter().enumerate() {
                tools.push(function_declaration(declaration, &format!("{decl_path}[{j}]"))?);
            }
        }
        other_tools.extend(entry.into_iter().map(|(key, _)| key));
    }
    if !other_tools.is_empty() {
        if extra.gemini {
            // Google Search, code execution and the like only Gemini runs: the client's own
            // tools list goes upstream as it is, in place of the one built from the
            // declarations.
            extra.body.insert("tools".to_owned(), Value::Array(original));
        } else {
            tracing::debug!(tools = ?other_tools, "dropping Gemini-only tools: the model is not served by Gemini");
        }
    }
    Ok(tools)
}

fn function_declaration(value: Value, path: &str) -> Result<Tool, ApiError> {
    let mut d = object(value, path)?;
    let name: String = take(&mut d, "name", path)?.ok_or_else(|| bad(format!("{path}.name"), "is required"))?;
    if name.is_empty() {
        return Err(bad(format!("{path}.name"), "must not be empty"));
    }
    let description: Option<String> = take(&mut d, "description", path)?;
    let json_schema = take_raw(&mut d, "parametersJsonSchema");
    let openapi = take_raw(&mut d, "parameters");
    let parameters = match (json_schema, openapi) {
        (Some((_, schema)), _) => schema,
        (None, Some((key, schema))) => openapi_to_json_schema(schema, &format!("{path}.{key}"))?,
        (None, None) => json!({"type": "object", "properties": {}}),
    };
    Ok(Tool::new(name, description, parameters))
}

/// Gemini's OpenAPI-subset `Schema` as JSON Schema: type names in lowercase, `nullable` as a
/// `"null"` type, snake_case keywords in camelCase, int64 limits sent as strings as numbers.
fn openapi_to_json_schema(value: Value, path: &str) -> Result<Value, ApiError> {
    let Value::Object(fields) = value else {
        return Err(bad(path, "must be a schema object"));
    };
    let mut out = Map::new();
    let mut nullable = false;
    for (key, value) in fields {
        let key = camel_case(&key);
        let here = format!("{path}.{key}");
        match key.as_str() {
            "type" => match value {
                Value::String(t) if t.eq_ignore_ascii_case("TYPE_UNSPECIFIED") => {}
                Value::String(t) => {
                    out.insert(key, Value::String(t.to_ascii_lowercase()));
                }
                _ => return Err(bad(here, "must be a string")),
            },
            "nullable" => nullable = value.as_bool().ok_or_else(|| bad(&here, "must be a boolean"))?,
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(bad(here, "must be an object"));
                };
                let mut converted = Map::new();
                for (name, schema) in props {
                    let schema = openapi_to_json_schema(schema, &format!("{here}.{name}"))?;
                    converted.insert(name, schema);
                }
                out.insert(key, Value::Object(converted));
            }
            "items" => {
                out.insert(key, openapi_to_json_schema(value, &here)?);
            }
            "anyOf" => {
                let Value::Array(options) = value else {
                    return Err(bad(here, "must be an array"));
                };
                let options = options
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| openapi_to_json_schema(s, &format!("{here}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert(key, Value::Array(options));
            }
            // Gemini's output-ordering hint; not JSON Schema.
            "propertyOrdering" => {}
            "example" => {
                out.insert("examples".to_owned(), Value::Array(vec![value]));
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties" | "maxProperties" => {
                let number = match &value {
                    Value::String(s) => s.parse::<u64>().map(Value::from).map_err(|_| bad(&here, "must be a non-negative integer"))?,
                    _ => value,
                };
                out.insert(key, number);
            }
            _ => {
                out.insert(key, value);
            }
        }
    }
    if nullable {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".to_owned(), json!([t, "null"]));
        }
        if let Some(Value::Array(options)) = out.get_mut("enum")
            && !options.contains(&Value::Null)
        {
            options.push(Value::Null);
        }
    }
    Ok(Value::Object(out))
}

fn parse_tool_config(
    value: Value,
    path: &str,
    tools: &mut Vec<Tool>,
    extra: &mut Extra,
) -> Result<Option<ToolChoice>, ApiError> {
    let mut config = object(value, path)?;
    let choice = match take_raw(&mut config, "functionCallingConfig") {
        None => None,
        Some((name, fcc)) => {
            let fcc_path = format!("{path}.{name}");
            let mut fcc = object(fcc, &fcc_path)?;
            let mode: Option<String> = take(&mut fcc, "mode", &fcc_path)?;
            let allowed: Vec<String> = take(&mut fcc, "allowedFunctionNames", &fcc_path)?.unwrap_or_default();
            for (i, name) in allowed.iter().enumerate() {
                if !tools.iter().any(|t| &t.name == name) {
                    return Err(bad(
                        format!("{fcc_path}.allowedFunctionNames[{i}]"),
                        format!("{name:?} is not a declared function"),
                    ));
                }
            }
            match mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
                None | Some("MODE_UNSPECIFIED") => None,
                Some("AUTO") => Some(ToolChoice::Auto),
                Some("NONE") => Some(ToolChoice::None),
                // VALIDATED: the model may call a function or answer, its calls checked
                // against the schema; the nearest canonical choice is auto.
                Some("VALIDATED") => Some(ToolChoice::Auto),
                Some("ANY") => match allowed.as_slice() {
                    [] => Some(ToolChoice::Required),
                    [one] => Some(ToolChoice::Tool(one.clone())),
                    several => {
                        // Must call one of these: offer only these.
                        tools.retain(|t| several.contains(&t.name));
                        Some(ToolChoice::Required)
                    }
                },
                Some(_) => {
                    return Err(bad(
                        format!("{fcc_path}.mode"),
                        format!("unknown mode {:?} (expected AUTO, ANY, NONE or VALIDATED)", mode.unwrap_or_default()),
                    ));
                }
            }
        }
    };
    for (key, value) in config {
        extra.keep(&["toolConfig"], &key, value);
    }
    Ok(choice)
}

// ---- generationConfig ----

#[derive(Default)]
struct Generation {
    params: SamplingParams,
    response_format: Option<ResponseFormat>,
    reasoning: Option<ReasoningConfig>,
    include_thoughts: bool,
}

fn parse_generation_config(value: Value, path: &str, extra: &mut Extra) -> Result<Generation, ApiError> {
    let mut g = object(value, path)?;
    let params = SamplingParams {
        temperature: take(&mut g, "temperature", path)?,
        top_p: take(&mut g, "topP", path)?,
        top_k: take(&mut g, "topK", path)?,
        max_tokens: take(&mut g, "maxOutputTokens", path)?,
        stop: take(&mut g, "stopSequences", path)?.unwrap_or_default(),
        seed: take(&mut g, "seed", path)?,
        presence_penalty: take(&mut g, "presencePenalty", path)?,
        frequency_penalty: take(&mut g, "frequencyPenalty", path)?,
    };
    if let Some((name, n)) = take_raw(&mut g, "candidateCount") {
        let n: u32 = from_value(n, &format!("{path}.{name}"))?;
        if n > 1 {
            return Err(bad(format!("{path}.{name}"), format!("only one candidate is supported, got {n}")));
        }
    }

    let mime: Option<String> = take(&mut g, "responseMimeType", path)?;
    let json_schema = take_raw(&mut g, "responseJsonSchema");
    let openapi_schema = take_raw(&mut g, "responseSchema");
    let schema = match (json_schema, openapi_schema) {
        (Some((_, schema)), _) => Some(schema),
        (None, Some((name, schema))) => Some(openapi_to_json_schema(schema, &format!("{path}.{name}"))?),
        (None, None) => None,
    };
    let response_format = match (mime.as_deref(), schema) {
        (_, Some(schema)) => {
            if let Some(mime) = mime.as_deref().filter(|m| *m != "application/json") {
                return Err(bad(
                    format!("{path}.responseMimeType"),
                    format!("a response schema needs application/json, got {mime:?}"),
                ));
            }
            Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
                name: "response".to_owned(),
                description: None,
                schema,
                strict: None,
            }))
        }
        (Some("application/json"), None) => Some(ResponseFormat::JsonObject),
        (Some("text/plain") | None, None) => None,
        (Some(other), None) => {
            return Err(bad(
                format!("{path}.responseMimeType"),
                format!("{other:?} is not supported (expected text/plain or application/json)"),
            ));
        }
    };

    let mut reasoning = None;
    let mut include_thoughts = false;
    if let Some((name, thinking)) = take_raw(&mut g, "thinkingConfig") {
        let thinking_path = format!("{path}.{name}");
        let mut thinking = object(thinking, &thinking_path)?;
        let include: Option<bool> = take(&mut thinking, "includeThoughts", &thinking_path)?;
        include_thoughts = include.unwrap_or(false);
        if let Some(flag) = include.filter(|_| extra.gemini) {
            // Gemini takes the client's own choice; a budget alone would turn summaries on.
            extra.keep(&["generationConfig", "thinkingConfig"], "includeThoughts", Value::Bool(flag));
        }
        let budget: Option<i64> = take(&mut thinking, "thinkingBudget", &thinking_path)?;
        let level: Option<String> = take(&mut thinking, "thinkingLevel", &thinking_path)?;
        let effort = match level.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("THINKING_LEVEL_UNSPECIFIED") => None,
            Some("MINIMAL") => Some(ReasoningEffort::Minimal),
            Some("LOW") => Some(ReasoningEffort::Low),
            Some("MEDIUM") => Some(ReasoningEffort::Medium),
            Some("HIGH") => Some(ReasoningEffort::High),
            Some(_) => {
                return Err(bad(
                    format!("{thinking_path}.thinkingLevel"),
                    format!("unknown level {:?} (expected MINIMAL, LOW, MEDIUM or HIGH)", level.unwrap_or_default()),
                ));
            }
        };
        reasoning = match budget {
            // -1 asks for dynamic thinking, which is what no setting means.
            Some(-1) | None => effort.map(|e| ReasoningConfig { effort: Some(e), budget_tokens: None }),
            // 0 turns thinking off where a vendor takes a budget; no level is sent to vendors
            // that take levels, as not every model accepts "none".
            Some(0) => Some(ReasoningConfig { effort, budget_tokens: Some(0) }),
            Some(b) => {
                let b = u32::try_from(b).map_err(|_| {
                    bad(format!("{thinking_path}.thinkingBudget"), "must be -1 (dynamic), 0 (off) or a positive token count")
                })?;
                let effort = effort.unwrap_or(match b {
                    0..=2048 => ReasoningEffort::Low,
                    2049..=8192 => ReasoningEffort::Medium,
                    _ => ReasoningEffort::High,
                });
                Some(ReasoningConfig { effort: Some(effort), budget_tokens: Some(b) })
            }
        };
        for key in thinking.keys() {
            tracing::debug!(field = %key, "dropping an unknown thinkingConfig field");
        }
    }

    for (key, value) in g {
        extra.keep(&["generationConfig"], &key, value);
    }
    Ok(Generation { params, response_format, reasoning, include_thoughts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> ChatRequest {
        parse(body.as_bytes(), "p/m", false, false).unwrap().request
    }

    fn err(body: &str) -> ApiError {
        parse(body.as_bytes(), "p/m", false, false).unwrap_err()
    }

    #[test]
    fn errors_name_the_field_as_spelled() {
        let cases = [
            (r#"{}"#, "contents"),
            (r#"{"contents":[]}"#, "contents"),
            (r#"{"contents":[{"role":"robot","parts":[{"text":"x"}]}]}"#, "contents[0].role"),
            (r#"{"contents":[{"role":"user"}]}"#, "contents[0].parts"),
            (r#"{"contents":[{"parts":[{"inline_data":{"mime_type":"image/png","data":"a$b"}}]}]}"#, "contents[0].parts[0].inline_data.data"),
            (r#"{"contents":[{"parts":[{"inlineData":{"mimeType":"application/pdf","data":"AAAA"}}]}]}"#, "contents[0].parts[0].inlineData.mimeType"),
            (r#"{"contents":[{"parts":[{"executableCode":{}}]}]}"#, "contents[0].parts[0]"),
            (r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"temperature":"hot"}}"#, "generationConfig.temperature"),
            (r#"{"contents":[{"parts":[{"text":"x"}]}],"generation_config":{"candidate_count":2}}"#, "generation_config.candidate_count"),
            (r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"responseMimeType":"text/x.enum"}}"#, "generationConfig.responseMimeType"),
            (
                r#"{"contents":[{"parts":[{"text":"x"}]}],"tools":[{"functionDeclarations":[{"description":"d"}]}]}"#,
                "tools[0].functionDeclarations[0].name",
            ),
            (
                r#"{"contents":[{"parts":[{"text":"x"}]}],"tools":[{"functionDeclarations":[{"name":"f"}]}],"toolConfig":{"functionCallingConfig":{"mode":"SOMETIMES"}}}"#,
                "toolConfig.functionCallingConfig.mode",
            ),
            (r#"{"contents":[{"role":"model","parts":[{"functionCall":{"name":"f","args":[1]}}]}]}"#, "contents[0].parts[0].functionCall.args"),
        ];
        for (body, param) in cases {
            let e = err(body);
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn snake_case_fields_parse_like_camel_case() {
        let camel = ok(r#"{"contents":[{"role":"user","parts":[{"text":"hi"},{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]}],
            "systemInstruction":{"parts":[{"text":"be brief"}]},
            "generationConfig":{"maxOutputTokens":5,"topP":0.5,"topK":3,"stopSequences":["x"],"responseMimeType":"application/json"},
            "toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["f"]}},
            "tools":[{"functionDeclarations":[{"name":"f","parametersJsonSchema":{"type":"object"}}]}]}"#);
        let snake = ok(r#"{"contents":[{"role":"user","parts":[{"text":"hi"},{"inline_data":{"mime_type":"image/png","data":"AAAA"}}]}],
            "system_instruction":{"parts":[{"text":"be brief"}]},
            "generation_config":{"max_output_tokens":5,"top_p":0.5,"top_k":3,"stop_sequences":["x"],"response_mime_type":"application/json"},
            "tool_config":{"function_calling_config":{"mode":"ANY","allowed_function_names":["f"]}},
            "tools":[{"function_declarations":[{"name":"f","parameters_json_schema":{"type":"object"}}]}]}"#);
        assert_eq!(camel, snake);
        assert_eq!(camel.messages[0].role, Role::System);
        assert_eq!(camel.params.max_tokens, Some(5));
        assert_eq!(camel.tool_choice, Some(ToolChoice::Tool("f".into())));
        assert_eq!(camel.response_format, Some(ResponseFormat::JsonObject));
    }

    #[test]
    fn url_safe_base64_becomes_standard_and_padded() {
        assert_eq!(standard_base64("-_8").unwrap(), "+/8=");
        assert_eq!(standard_base64("ab+/").unwrap(), "ab+/");
        assert_eq!(standard_base64("YQ").unwrap(), "YQ==");
        assert_eq!(standard_base64("YQ==").unwrap(), "YQ==");
        assert_eq!(standard_base64("YW\nJj").unwrap(), "YWJj");
        assert!(standard_base64("Y").is_err());
        assert!(standard_base64("YQ=a").is_err());
        assert!(standard_base64("").is_err());
    }

    #[test]
    fn openapi_schema_becomes_json_schema() {
        let schema = json!({"type": "OBJECT", "properties": {
            "name": {"type": "STRING", "nullable": true},
            "tags": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["a"], "nullable": true}, "max_items": "3"},
            "any_of": {"any_of": [{"type": "INTEGER"}]}
        }, "required": ["name"], "propertyOrdering": ["name", "tags"]});
        let converted = openapi_to_json_schema(schema, "s").unwrap();
        assert_eq!(
            converted,
            json!({"type": "object", "properties": {
                "name": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"type": ["string", "null"], "enum": ["a", null]}, "maxItems": 3},
                "any_of": {"anyOf": [{"type": "integer"}]}
            }, "required": ["name"]})
        );
    }

    #[test]
    fn function_calls_get_ids_and_responses_match_by_id_then_name() {
        let req = ok(r#"{"contents":[
            {"role":"user","parts":[{"text":"weather?"}]},
            {"role":"model","parts":[{"functionCall":{"name":"w","args":{"c":"P"}}},{"functionCall":{"name":"w","args":{"c":"T"}}},{"functionCall":{"id":"x9","name":"t","args":{}}}]},
            {"role":"user","parts":[{"functionResponse":{"id":"x9","name":"t","response":{"ok":1}}},{"functionResponse":{"name":"w","response":{"t":1}}},{"functionResponse":{"name":"w","response":{"error":"down"}}}]}
        ]}"#);
        let calls = &req.messages[1].tool_calls;
        assert_eq!(calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["call_1_0", "call_1_1", "x9"]);
        assert_eq!(calls[0].arguments, r#"{"c":"P"}"#);
        let answers: Vec<_> = req.messages[2..].iter().map(|m| (m.tool_call_id.clone().unwrap(), m.joined_text(), m.is_error)).collect();
        assert_eq!(
            answers,
            [
                ("x9".to_owned(), r#"{"ok":1}"#.to_owned(), false),
                ("call_1_0".to_owned(), r#"{"t":1}"#.to_owned(), false),
                ("call_1_1".to_owned(), r#"{"error":"down"}"#.to_owned(), true),
            ]
        );
    }

    #[test]
    fn thoughts_and_signatures_become_reasoning_blocks() {
        let req = ok(r#"{"contents":[{"role":"user","parts":[{"text":"q"}]},{"role":"model","parts":[
            {"text":"let me ","thought":true},{"text":"think","thought":true},
            {"text":"answer","thoughtSignature":"sig1"},
            {"functionCall":{"name":"f"},"thoughtSignature":"sig2"},
            {"text":""}
        ]}]}"#);
        let m = &req.messages[1];
        assert_eq!(
            m.reasoning,
            [
                ReasoningBlock::Thinking { text: "let me think".into(), signature: Some("sig1".into()) },
                ReasoningBlock::Thinking { text: String::new(), signature: Some("sig2".into()) },
            ]
        );
        assert_eq!(m.content, [ContentPart::Text { text: "answer".into() }]);
        assert_eq!(m.tool_calls[0].arguments, "{}");
    }

    #[test]
    fn a_streamed_answer_sent_back_as_one_content_per_chunk_is_one_turn() {
        let req = ok(r#"{"contents":[{"role":"user","parts":[{"text":"q"}]},
            {"role":"model","parts":[{"text":"think ","thought":true}]},{"role":"model","parts":[{"text":"more","thought":true}]},
            {"role":"model","parts":[{"text":"Hel","thoughtSignature":"s"}]},{"role":"model","parts":[{"text":"lo"}]},
            {"role":"model","parts":[{"functionCall":{"name":"f","args":{}}}]},{"role":"model","parts":[{"text":""}]},
            {"role":"user","parts":[{"functionResponse":{"name":"f","response":{}}}]}]}"#);
        assert_eq!(req.messages.len(), 3);
        let m = &req.messages[1];
        assert_eq!(m.content, [ContentPart::Text { text: "Hello".into() }]);
        assert_eq!(m.reasoning, [ReasoningBlock::Thinking { text: "think more".into(), signature: Some("s".into()) }]);
        assert_eq!(m.tool_calls[0].id, "call_1_0");
        assert_eq!(req.messages[2].tool_call_id.as_deref(), Some("call_1_0"));
    }

    #[test]
    fn gemini_only_fields_reach_gemini_only() {
        let body = r#"{"contents":[{"parts":[{"text":"x"}]}],"safety_settings":[{"category":"HARM_CATEGORY_HATE_SPEECH","threshold":"BLOCK_NONE"}],
            "cachedContent":"cachedContents/1","generationConfig":{"responseModalities":["TEXT"],"temperature":1},
            "tools":[{"googleSearch":{}},{"functionDeclarations":[{"name":"f"}]}],"toolConfig":{"retrievalConfig":{"languageCode":"en"}}}"#;
        let gemini = parse(body.as_bytes(), "gemini/x", false, true).unwrap().request;
        assert_eq!(gemini.extra_body["safetySettings"][0]["threshold"], "BLOCK_NONE");
        assert_eq!(gemini.extra_body["cachedContent"], "cachedContents/1");
        assert_eq!(gemini.extra_body["generationConfig"], json!({"responseModalities": ["TEXT"]}));
        let thoughts = r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"thinkingConfig":{"thinkingBudget":1024,"includeThoughts":false}}}"#;
        let gemini_thoughts = parse(thoughts.as_bytes(), "gemini/x", false, true).unwrap().request;
        assert_eq!(gemini_thoughts.extra_body["generationConfig"], json!({"thinkingConfig": {"includeThoughts": false}}));
        assert!(parse(thoughts.as_bytes(), "openai/x", false, false).unwrap().request.extra_body.is_empty());
        assert_eq!(gemini.extra_body["tools"][0], json!({"googleSearch": {}}));
        assert_eq!(gemini.extra_body["toolConfig"], json!({"retrievalConfig": {"languageCode": "en"}}));
        assert_eq!(gemini.tools.len(), 1);
        let other = parse(body.as_bytes(), "openai/x", false, false).unwrap().request;
        assert!(other.extra_body.is_empty(), "{:?}", other.extra_body);
        assert_eq!(other.tools.len(), 1);
        assert_eq!(other.params.temperature, Some(1.0));
    }

    #[test]
    fn thinking_config_maps_to_reasoning() {
        let with = |thinking: &str| {
            parse(
                format!(r#"{{"contents":[{{"parts":[{{"text":"x"}}]}}],"generationConfig":{{"thinkingConfig":{thinking}}}}}"#).as_bytes(),
                "p/m",
                false,
                false,
            )
            .unwrap()
        };
        let p = with(r#"{"thinkingBudget":4096,"includeThoughts":true}"#);
        assert!(p.include_thoughts);
        assert_eq!(p.request.reasoning, Some(ReasoningConfig { effort: Some(ReasoningEffort::Medium), budget_tokens: Some(4096) }));
        assert_eq!(with(r#"{"thinking_budget":-1}"#).request.reasoning, None);
        assert_eq!(with(r#"{"thinkingBudget":0}"#).request.reasoning, Some(ReasoningConfig { effort: None, budget_tokens: Some(0) }));
        assert_eq!(
            with(r#"{"thinkingLevel":"HIGH"}"#).request.reasoning,
            Some(ReasoningConfig { effort: Some(ReasoningEffort::High), budget_tokens: None })
        );
    }

    #[test]
    fn count_tokens_accepts_a_whole_request() {
        let p = parse_count_tokens(
            br#"{"generateContentRequest":{"model":"models/x","contents":[{"parts":[{"text":"hi"}]}],"systemInstruction":"s"}}"#,
            "p/m",
            false,
        )
        .unwrap();
        assert_eq!(p.request.messages.len(), 2);
        let e = parse_count_tokens(br#"{"generateContentRequest":{"contents":[]}}"#, "p/m", false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("generateContentRequest.contents"));
        assert!(e.message.starts_with("generateContentRequest.contents"), "{}", e.message);
    }
}
