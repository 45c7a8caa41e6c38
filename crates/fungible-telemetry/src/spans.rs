//! An [`InferenceRecord`] as OpenTelemetry spans, following the GenAI semantic conventions:
//! one `chat {requested model}` span (kind SERVER: the gateway answering its client) with a
//! `chat {model}` child (kind CLIENT) per attempt.
//!
//! Times come from the record: the inference from its arrival to its end; the attempts laid
//! end to end from the arrival, each as long as it took (the record keeps their durations,
//! not their starts, so backoff waits between them show up as the gap at the end). The
//! attempt that answered a stream lasts until the stream ended.
//!
//! Message contents and the user are exported only with `capture_content`. Nothing else in a
//! record can hold a secret: it keeps no header and no credential.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use fungible_store::{AttemptRecord, AttemptStatus, Bodies, InferenceRecord};
use fungible_types::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, Message, ReasoningBlock,
    Role,
};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use serde_json::json;

/// The span name and kind of an inference (what the sampler is asked about).
pub(crate) fn inference_name(record: &InferenceRecord) -> String {
    format!("chat {}", record.requested_model)
}

pub(crate) const INFERENCE_KIND: SpanKind = SpanKind::Server;

/// The semantic-convention name of a provider (`gen_ai.provider.name`): the well-known
/// values for the built-in presets, the configured name otherwise.
pub fn provider_name(provider: &str) -> &str {
    match provider {
        "gemini" => "gcp.gemini",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        other => other,
    }
}

/// Builds the spans of `record` (with its canonical request and response): the inference
/// first, then its attempts.
pub(crate) fn spans(
    record: &InferenceRecord,
    bodies: &Bodies,
    context: SpanContext,
    parent: Option<&SpanContext>,
    capture_content: bool,
    ids: &RandomIdGenerator,
    scope: &InstrumentationScope,
) -> Vec<SpanData> {
    let start = UNIX_EPOCH + Duration::from_millis(record.time_ms.max(0) as u64);
    let end = start + duration_ms(record.latency_ms);
    let response = bodies.response.as_ref();

    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", "chat"),
        KeyValue::new("gen_ai.request.model", record.requested_model.clone()),
        KeyValue::new("fungible.inference_id", record.id.clone()),
        KeyValue::new("fungible.inbound", record.inbound.clone()),
        KeyValue::new("fungible.stream", record.stream),
        KeyValue::new("fungible.attempts", record.attempts.len() as i64),
        KeyValue::new("fungible.latency_ms", record.latency_ms),
    ];
    if let Some(provider) = &record.provider {
        attrs.push(KeyValue::new(
            "gen_ai.provider.name",
            provider_name(provider).to_owned(),
        ));
        attrs.push(KeyValue::new(
            "gen_ai.system",
            provider_name(provider).to_owned(),
        ));
        attrs.push(KeyValue::new("fungible.provider", provider.clone()));
    }
    if let Some(model) = &record.model {
        attrs.push(KeyValue::new("fungible.model", model.clone()));
    }
    for (key, value) in [
        ("fungible.route", &record.route),
        ("fungible.variant", &record.variant),
    ] {
        if let Some(v) = value {
            attrs.push(KeyValue::new(key, v.clone()));
        }
    }
    if record.cache_hit {
        attrs.push(KeyValue::new("fungible.cache_hit", true));
    }
    if let Some(episode) = &record.episode_id {
        attrs.push(KeyValue::new("gen_ai.conversation.id", episode.clone()));
    }
    if let Some(cost) = record.cost {
        attrs.push(KeyValue::new("fungible.cost_usd", cost));
    }
    if let Some(ttft) = record.ttft_ms {
        attrs.push(KeyValue::new("fungible.time_to_first_token_ms", ttft));
    }
    request_params(&bodies.request, &mut attrs);
    if let Some(r) = response {
        response_attrs(r, record, &mut attrs);
    }
    if let Some(error) = &record.error {
        attrs.push(KeyValue::new("error.type", error.clone()));
    }
    if capture_content {
        content_attrs(record, &bodies.request, response, &mut attrs);
    }

    let mut out = Vec::with_capacity(1 + record.attempts.len());
    out.push(SpanData {
        span_context: context.clone(),
        parent_span_id: parent.map(SpanContext::span_id).unwrap_or(SpanId::INVALID),
        parent_span_is_remote: parent.is_some(),
        span_kind: INFERENCE_KIND,
        name: Cow::Owned(inference_name(record)),
        start_time: start,
        end_time: end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: status(record.error.as_deref()),
        instrumentation_scope: scope.clone(),
    });

    let mut cursor = start;
    let last = record.attempts.len().saturating_sub(1);
    for (i, a) in record.attempts.iter().enumerate() {
        let a_start = cursor;
        let mut a_end = (a_start + duration_ms(a.latency_ms)).min(end.max(a_start));
        if record.stream && a.status == AttemptStatus::Ok && i == last {
            a_end = end.max(a_start);
        }
        cursor = a_end;
        let span_context = SpanContext::new(
            context.trace_id(),
            ids.new_span_id(),
            context.trace_flags(),
            false,
            context.trace_state().clone(),
        );
        out.push(SpanData {
            span_context,
            parent_span_id: context.span_id(),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned(format!("chat {}", a.model)),
            start_time: a_start,
            end_time: a_end,
            attributes: attempt_attrs(a, i, record, response),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: status(a.error.as_deref()),
            instrumentation_scope: scope.clone(),
        });
    }
    out
}

fn duration_ms(ms: f64) -> Duration {
    Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).unwrap_or_default()
}

fn status(error: Option<&str>) -> Status {
    match error {
        Some(e) => Status::error(e.to_owned()),
        None => Status::Unset,
    }
}

fn attempt_attrs(
    a: &AttemptRecord,
    index: usize,
    record: &InferenceRecord,
    response: Option<&ChatResponse>,
) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", "chat"),
        KeyValue::new(
            "gen_ai.provider.name",
            provider_name(&a.provider).to_owned(),
        ),
        KeyValue::new("gen_ai.system", provider_name(&a.provider).to_owned()),
        KeyValue::new("gen_ai.request.model", a.model.clone()),
        KeyValue::new("fungible.provider", a.provider.clone()),
        KeyValue::new("fungible.attempt", index as i64 + 1),
        KeyValue::new("fungible.attempt.status", a.status.as_str()),
        KeyValue::new("fungible.latency_ms", a.latency_ms),
        KeyValue::new("fungible.inference_id", record.id.clone()),
    ];
    if let Some(error) = &a.error {
        attrs.push(KeyValue::new("error.type", error.clone()));
    } else if matches!(a.status, AttemptStatus::CircuitOpen | AttemptStatus::Backoff) {
        attrs.push(KeyValue::new("error.type", a.status.as_str()));
    }
    if let Some(cost) = a.cost {
        attrs.push(KeyValue::new("fungible.cost_usd", cost));
    }
    // The answering attempt carries the answer's model, id, finish and usage.
    if a.status == AttemptStatus::Ok
        && let Some(r) = response
    {
        response_attrs(r, record, &mut attrs);
    }
    attrs
}

fn request_params(request: &ChatRequest, attrs: &mut Vec<KeyValue>) {
    let p = &request.params;
    for (key, value) in [
        ("gen_ai.request.temperature", p.temperature),
        ("gen_ai.request.top_p", p.top_p),
        ("gen_ai.request.presence_penalty", p.presence_penalty),
        ("gen_ai.request.frequency_penalty", p.frequency_penalty),
    ] {
        if let Some(v) = value {
            attrs.push(KeyValue::new(key, v));
        }
    }
    if let Some(v) = p.max_tokens {
        attrs.push(KeyValue::new("gen_ai.request.max_tokens", i64::from(v)));
    }
    if let Some(v) = p.top_k {
        attrs.push(KeyValue::new("gen_ai.request.top_k", f64::from(v)));
    }
    if let Some(v) = p.seed {
        attrs.push(KeyValue::new("gen_ai.request.seed", v));
    }
    if !p.stop.is_empty() {
        attrs.push(KeyValue::new(
            "gen_ai.request.stop_sequences",
            strings(p.stop.clone()),
        ));
    }
}

fn strings(values: Vec<String>) -> Value {
    Value::Array(Array::String(
        values.into_iter().map(StringValue::from).collect(),
    ))
}

fn finish_reason(reason: &FinishReason) -> &'static str {
    reason.as_openai_str()
}

fn response_attrs(r: &ChatResponse, record: &InferenceRecord, attrs: &mut Vec<KeyValue>) {
    let model = if r.model.is_empty() {
        record.model.clone().unwrap_or_default()
    } else {
        r.model.clone()
    };
    if !model.is_empty() {
        attrs.push(KeyValue::new("gen_ai.response.model", model));
    }
    if !r.id.is_empty() {
        attrs.push(KeyValue::new("gen_ai.response.id", r.id.clone()));
    }
    attrs.push(KeyValue::new(
        "gen_ai.response.finish_reasons",
        strings(vec![finish_reason(&r.finish_reason).to_owned()]),
    ));
    let u = &r.usage;
    attrs.push(KeyValue::new(
        "gen_ai.usage.input_tokens",
        u.input_tokens as i64,
    ));
    attrs.push(KeyValue::new(
        "gen_ai.usage.output_tokens",
        u.output_tokens as i64,
    ));
    for (key, n) in [
        ("gen_ai.usage.cache_read.input_tokens", u.cache_read_tokens),
        (
            "gen_ai.usage.cache_creation.input_tokens",
            u.cache_write_tokens,
        ),
        ("gen_ai.usage.reasoning.output_tokens", u.reasoning_tokens),
    ] {
        if n > 0 {
            attrs.push(KeyValue::new(key, n as i64));
        }
    }
}

/// `gen_ai.system_instructions`, `gen_ai.input.messages`, `gen_ai.output.messages` (JSON, in
/// the conventions' message shape), and the user.
fn content_attrs(
    record: &InferenceRecord,
    request: &ChatRequest,
    response: Option<&ChatResponse>,
    attrs: &mut Vec<KeyValue>,
) {
    {
        let (instructions, messages): (Vec<&Message>, Vec<&Message>) = request
            .messages
            .iter()
            .partition(|m| m.role.is_instruction());
        if !instructions.is_empty() {
            let parts: Vec<serde_json::Value> =
                instructions.iter().flat_map(|m| parts(m)).collect();
            attrs.push(KeyValue::new(
                "gen_ai.system_instructions",
                json!(parts).to_string(),
            ));
        }
        let input: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "parts": parts(m)}))
            .collect();
        attrs.push(KeyValue::new(
            "gen_ai.input.messages",
            json!(input).to_string(),
        ));
    }
    if let Some(r) = response {
        let m = &r.message;
        let mut out = reasoning_parts(&m.reasoning);
        if let Some(text) = m.content.as_ref().or(m.refusal.as_ref()) {
            out.push(json!({"type": "text", "content": text}));
        }
        out.extend(m.tool_calls.iter().map(|c| {
            json!({"type": "tool_call", "id": c.id, "name": c.name, "arguments": arguments(&c.arguments)})
        }));
        let message = json!([{
            "role": Role::Assistant.as_str(),
            "parts": out,
            "finish_reason": finish_reason(&r.finish_reason),
        }]);
        attrs.push(KeyValue::new("gen_ai.output.messages", message.to_string()));
    }
    if let Some(user) = &record.user {
        attrs.push(KeyValue::new("user.id", user.clone()));
    }
}

fn parts(m: &Message) -> Vec<serde_json::Value> {
    if m.role == Role::Tool {
        let text: String = m
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        return vec![json!({"type": "tool_call_response", "id": m.tool_call_id, "response": text})];
    }
    let mut out = reasoning_parts(&m.reasoning);
    out.extend(m.content.iter().map(|p| match p {
        ContentPart::Text { text } => json!({"type": "text", "content": text}),
        ContentPart::Image {
            source: ImageSource::Url(url),
            ..
        } => {
            json!({"type": "uri", "modality": "image", "uri": url})
        }
        ContentPart::Image {
            source: ImageSource::Base64 { media_type, data },
            ..
        } => {
            json!({"type": "blob", "modality": "image", "mime_type": media_type, "content": data})
        }
    }));
    out.extend(m.tool_calls.iter().map(|c| {
        json!({"type": "tool_call", "id": c.id, "name": c.name, "arguments": arguments(&c.arguments)})
    }));
    out
}

fn reasoning_parts(blocks: &[ReasoningBlock]) -> Vec<serde_json::Value> {
    blocks
        .iter()
        .filter_map(|b| match b {
            ReasoningBlock::Thinking { text, .. } if !text.is_empty() => {
                Some(json!({"type": "reasoning", "content": text}))
            }
            _ => None,
        })
        .collect()
}

/// Tool arguments as JSON when they parse, else as the raw text.
fn arguments(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
}
