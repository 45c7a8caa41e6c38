//! What is recorded: one [`InferenceRecord`] per inference with its [`AttemptRecord`]s, and
//! [`Feedback`] on an inference or an episode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fungible_types::{
    ChatRequest, ChatResponse, ContentPart, JsonSchemaFormat, Message, ReasoningBlock, ResponseFormat, Usage,
};

use crate::cap::Truncation;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One inference, whatever API it arrived in. Secrets never reach it: the canonical request
/// holds no credentials, and no header is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    pub id: String,
    /// Unix milliseconds when the request arrived.
    pub time_ms: i64,
    /// The inbound API: `openai_chat`, `anthropic_messages`, `gemini`, `openai_responses`.
    pub inbound: String,
    /// The model as the client named it (an alias or `PROVIDER/MODEL`).
    pub requested_model: String,
    /// The alias, when the client named one.
    pub route: Option<String>,
    pub variant: Option<String>,
    /// The target that answered, else the last one tried (`None` when none was).
    pub provider: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    /// `None` on success, else the error class (`rate_limited`, `timeout`, ...).
    pub error: Option<String>,
    /// The canonical request (`ChatRequest`) as JSON.
    pub request: Value,
    /// The canonical response (`ChatResponse`) as JSON; a stream's is assembled from its
    /// events. `None` when there was no answer.
    pub response: Option<Value>,
    pub usage: Usage,
    /// In US dollars; `None` when the price of the model is unknown (never zero for that).
    pub cost: Option<f64>,
    /// Time to the first content event of a stream, in milliseconds.
    pub ttft_ms: Option<f64>,
    /// Until the whole answer (a stream: until its end), in milliseconds.
    pub latency_ms: f64,
    pub user: Option<String>,
    /// Client-supplied tags and metadata (a JSON object).
    pub tags: Value,
    pub episode_id: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    /// The id of the virtual key the request authenticated with (`None`: auth is off).
    #[serde(default)]
    pub key_id: Option<String>,
    /// Whether the response cache answered (no provider was called).
    #[serde(default)]
    pub cache_hit: bool,
    /// The request or response was over `[store] max_record_bytes` and was stored cut (see
    /// [`Bodies::capped`]); the request JSON's `fungible_truncated` says what was left out.
    #[serde(default)]
    pub truncated: bool,
    /// The raw bodies of each upstream call, with `[store] raw_bodies` on (off by default);
    /// read back by [`crate::Store::get`] only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw: Vec<RawExchange>,
}

/// One upstream call's bodies as sent and received, each cut at `[store] raw_bodies_max_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawExchange {
    pub provider: String,
    pub request: String,
    pub response: String,
    /// A body was longer than the cap and was cut.
    pub truncated: bool,
}

impl InferenceRecord {
    /// The tags as the rows stats group by: `key=value` for a string value, a bare `key` for
    /// `true`, `key=JSON` for any other value but an object (left out). Sorted, without
    /// duplicates.
    pub fn tag_list(&self) -> Vec<String> {
        let Some(tags) = self.tags.as_object() else {
            return Vec::new();
        };
        // An object is detail kept with the record (a learned route's scores), not a label:
        // indexing it would give every inference a tag of its own.
        let mut list: Vec<String> = tags
            .iter()
            .filter(|(_, v)| !v.is_object())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                Value::Bool(true) => k.clone(),
                other => format!("{k}={other}"),
            })
            .collect();
        list.sort();
        list.dedup();
        list
    }
}

/// The canonical request and response of a record, as the request path has them (what
/// telemetry reads; the recorder keeps them as [`EncodedBodies`]).
#[derive(Debug, Clone)]
pub struct Bodies {
    pub request: ChatRequest,
    pub response: Option<ChatResponse>,
    /// What [`Bodies::capped`] left out; `None`: they are whole.
    pub truncation: Option<Truncation>,
}

impl Bodies {
    /// Whole bodies (build them with [`Bodies::capped`] to copy no more than
    /// `max_record_bytes` from a borrowed request).
    pub fn new(request: ChatRequest, response: Option<ChatResponse>) -> Bodies {
        Bodies { request, response, truncation: None }
    }

    /// Roughly the bytes these bodies hold (their text, images and JSON values, and about
    /// what each message's fields take as JSON), cheap enough for the request path: what
    /// the record cap counts.
    pub fn estimated_bytes(&self) -> usize {
        estimate(&self.request, self.response.as_ref())
    }
}

/// A record's request and response as the store keeps them: JSON text, within
/// `max_record_bytes`. Encoding borrows the canonical bodies, so recording an answer copies
/// nothing but this text: one buffer per body, which is also exactly what the recorder's queue
/// holds and counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedBodies {
    /// The canonical request (`ChatRequest`) as JSON; a capped one has `fungible_truncated`.
    pub request: String,
    /// The canonical response (`ChatResponse`) as JSON; `None` when there was no answer.
    pub response: Option<String>,
    /// Something was left out (see [`Bodies::capped`]).
    pub truncated: bool,
}

impl EncodedBodies {
    /// `request` and `response` as JSON, capped at `max_bytes` ([`Bodies::capped`]);
    /// `earlier` is what an earlier cap of the same request left out (a stream keeps its
    /// request capped until its answer is complete).
    pub fn encode(
        request: &ChatRequest,
        response: Option<&ChatResponse>,
        max_bytes: usize,
        earlier: Option<Truncation>,
    ) -> EncodedBodies {
        if estimate(request, response) <= max_bytes {
            return EncodedBodies::of(request, response, earlier);
        }
        let capped = Bodies::capped(request, response, max_bytes);
        EncodedBodies::of(&capped.request, capped.response.as_ref(), Truncation::merge(earlier, capped.truncation))
    }

    /// Whole bodies, with what was already left out of them.
    pub fn of(request: &ChatRequest, response: Option<&ChatResponse>, truncation: Option<Truncation>) -> EncodedBodies {
        /// The request with what a cap left out, as one JSON object.
        #[derive(Serialize)]
        struct Marked<'a> {
            #[serde(flatten)]
            request: &'a ChatRequest,
            fungible_truncated: TruncationJson,
        }
        #[derive(Serialize)]
        struct TruncationJson {
            omitted_messages: usize,
            cut_bytes: usize,
        }
        // The canonical types hold strings, numbers and JSON values: serialising them cannot
        // fail.
        // Each body into one buffer of about its final size (the estimate is a little over
        // the JSON's length), so the queue's bytes are the memory it holds.
        fn text(capacity: usize, write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> Option<String> {
            let mut out = Vec::with_capacity(capacity);
            write(&mut out).ok()?;
            // Escapes the estimate does not count (quotes, newlines in code) can double the
            // buffer: then copy the text into one of its size.
            if out.capacity() > out.len() + out.len() / 4 + 256 {
                out.shrink_to_fit();
            }
            // serde_json writes UTF-8.
            String::from_utf8(out).ok()
        }
        let request_text = match truncation {
            None => text(estimate(request, None), |out| serde_json::to_writer(out, request)),
            Some(t) => text(estimate(request, None) + 64, |out| {
                serde_json::to_writer(
                    out,
                    &Marked {
                        request,
                        fungible_truncated: TruncationJson { omitted_messages: t.omitted_messages, cut_bytes: t.cut_bytes },
                    },
                )
            }),
        };
        let response = response.and_then(|r| {
            let capacity = estimate(&ChatRequest::default(), Some(r));
            text(capacity, |out| serde_json::to_writer(out, r))
        });
        EncodedBodies {
            request: request_text.unwrap_or_else(|| "{}".to_owned()),
            response,
            truncated: truncation.is_some(),
        }
    }

    /// The memory the text holds (its buffers' capacity).
    pub fn bytes(&self) -> usize {
        self.request.capacity() + self.response.as_ref().map_or(0, String::capacity)
    }
}

/// A record on its way into the store: [`InferenceRecord`]'s other fields, and its bodies as
/// JSON text ([`EncodedBodies`]; the record's own `request` and `response` are not written).
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    pub record: InferenceRecord,
    pub bodies: EncodedBodies,
}

impl EncodedRecord {
    /// The bytes it holds (its text, and about what its other fields take).
    pub fn bytes(&self) -> usize {
        let r = &self.record;
        512 + self.bodies.bytes()
            + value_bytes(&r.tags)
            + r.attempts.len() * 128
            + r.raw.iter().map(|x| 64 + x.request.len() + x.response.len()).sum::<usize>()
    }
}

impl From<InferenceRecord> for EncodedRecord {
    /// A record built with JSON values (tests, imports): its values turned into text.
    fn from(mut record: InferenceRecord) -> EncodedRecord {
        let request = serde_json::to_string(&std::mem::take(&mut record.request)).unwrap_or_else(|_| "null".into());
        let response = record.response.take().and_then(|r| serde_json::to_string(&r).ok());
        let truncated = record.truncated;
        EncodedRecord { record, bodies: EncodedBodies { request, response, truncated } }
    }
}

/// [`Bodies::estimated_bytes`] of a borrowed request and response.
pub(crate) fn estimate(r: &ChatRequest, response: Option<&ChatResponse>) -> usize {
    {
        let mut n = 512 + r.model.len() + r.user.as_ref().map_or(0, String::len) + messages_bytes(&r.messages);
        n += r
            .tools
            .iter()
            .map(|t| {
                64 + t.name.len()
                    + t.description.as_ref().map_or(0, String::len)
                    + value_bytes(&t.parameters)
            })
            .sum::<usize>();
        n += r
            .metadata
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| k.len() + value_bytes(v))
            .sum::<usize>();
        n += r
            .extra_body
            .iter()
            .map(|(k, v)| k.len() + value_bytes(v))
            .sum::<usize>();
        if let Some(JsonSchemaFormat { name, description, schema, .. }) = match &r.response_format {
            Some(ResponseFormat::JsonSchema(s)) => Some(s),
            _ => None,
        } {
            n += 64 + name.len() + description.as_ref().map_or(0, String::len) + value_bytes(schema);
        }
        if let Some(resp) = response {
            let m = &resp.message;
            n += 256
                + resp.id.len()
                + resp.model.len()
                + m.content.as_ref().map_or(0, String::len)
                + m.refusal.as_ref().map_or(0, String::len)
                + m.tool_calls
                    .iter()
                    .map(|c| 32 + c.id.len() + c.name.len() + c.arguments.len())
                    .sum::<usize>()
                + reasoning_bytes(&m.reasoning);
        }
        n
    }
}

/// What a message's fields take as JSON besides its strings (its role, the names of its
/// fields and their empty values, about 150 bytes as serialised).
const MESSAGE_BYTES: usize = 160;

/// What a message costs with all its text empty: what keeping it costs a capped record.
/// (Names and ids are kept whole.)
pub(crate) fn message_structure_bytes(m: &Message) -> usize {
    MESSAGE_BYTES
        + m.name.as_ref().map_or(0, String::len)
        + m.tool_call_id.as_ref().map_or(0, String::len)
        + 16 * m.content.len()
        + m.tool_calls.iter().map(|c| 32 + c.id.len() + c.name.len()).sum::<usize>()
        + 32 * m.reasoning.len()
}

pub(crate) fn messages_bytes(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| {
            let content: usize = m
                .content
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => 16 + text.len(),
                    ContentPart::Image { source, .. } => {
                        64 + match source {
                            fungible_types::ImageSource::Url(u) => u.len(),
                            fungible_types::ImageSource::Base64 { media_type, data } => {
                                media_type.len() + data.len()
                            }
                        }
                    }
                })
                .sum();
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| 32 + c.id.len() + c.name.len() + c.arguments.len())
                .sum();
            MESSAGE_BYTES
                + m.name.as_ref().map_or(0, String::len)
                + m.tool_call_id.as_ref().map_or(0, String::len)
                + content
                + calls
                + reasoning_bytes(&m.reasoning)
        })
        .sum()
}

fn reasoning_bytes(blocks: &[ReasoningBlock]) -> usize {
    blocks
        .iter()
        .map(|b| match b {
            ReasoningBlock::Thinking { text, signature } => {
                32 + text.len() + signature.as_ref().map_or(0, String::len)
            }
            ReasoningBlock::Redacted { data } => 32 + data.len(),
        })
        .sum()
}

/// Roughly the bytes of a JSON value (its text).
pub(crate) fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => 8 + s.len(),
        Value::Array(a) => 8 + a.iter().map(value_bytes).sum::<usize>(),
        Value::Object(o) => {
            8 + o
                .iter()
                .map(|(k, v)| 8 + k.len() + value_bytes(v))
                .sum::<usize>()
        }
    }
}

/// One call (or skip) of one target while answering an inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub provider: String,
    pub model: String,
    pub status: AttemptStatus,
    /// The error class of a failed attempt.
    pub error: Option<String>,
    pub latency_ms: f64,
    /// Known only for the attempt that answered, and only when its price is known.
    pub cost: Option<f64>,
}

/// How one attempt ended; stored as its `snake_case` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// The target answered.
    Ok,
    /// The call failed (the attempt's `error` says how).
    Failed,
    /// The target's circuit breaker was open: it was skipped without a call.
    CircuitOpen,
    /// The upstream had asked (`Retry-After`) to be left alone until later: it was skipped
    /// without a call.
    Backoff,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Ok => "ok",
            AttemptStatus::Failed => "failed",
            AttemptStatus::CircuitOpen => "circuit_open",
            AttemptStatus::Backoff => "backoff",
        }
    }
}

impl std::str::FromStr for AttemptStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<AttemptStatus, String> {
        [AttemptStatus::Ok, AttemptStatus::Failed, AttemptStatus::CircuitOpen, AttemptStatus::Backoff]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown attempt status {s:?}"))
    }
}

impl std::fmt::Display for AttemptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Feedback`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackTarget {
    Inference,
    Episode,
}

impl FeedbackTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackTarget::Inference => "inference",
            FeedbackTarget::Episode => "episode",
        }
    }
}

/// Feedback on one inference or one episode: any of a boolean, a score, a comment and a
/// demonstration (the ideal output, the raw material of fine-tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: String,
    pub time_ms: i64,
    pub target: FeedbackTarget,
    pub target_id: String,
    pub boolean: Option<bool>,
    pub score: Option<f64>,
    pub comment: Option<String>,
    pub demonstration: Option<Value>,
}

/// A new id: 32 hex digits, time-ordered (milliseconds first), unique within the process and
/// unlikely to collide across instances.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = now_ms() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Per-process randomness without a dependency: the std hasher is randomly keyed.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    let random = h.finish() & 0xffff_ffff_ffff;
    // Time, then a per-process counter (ordered within a millisecond), then randomness.
    format!("{ms:012x}{:08x}{random:012x}", n as u32)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
