//! What the pages show of a recorded inference, built from the record as stored: the
//! conversation (read from the canonical request and response JSON, tolerating a record cut
//! by `[store] max_record_bytes`), the attempts as a timeline, and the formatting of times,
//! durations and money the templates share.

use fungible_store::{AttemptRecord, InferenceRecord};
use serde::Serialize;
use serde_json::Value;

/// One turn of a conversation.
#[derive(Debug, Serialize, PartialEq)]
pub struct Turn {
    pub role: String,
    pub name: Option<String>,
    pub parts: Vec<Part>,
    pub tool_calls: Vec<Call>,
    /// A tool result's call.
    pub tool_call_id: Option<String>,
    pub reasoning: Option<String>,
    pub refusal: Option<String>,
    pub is_error: bool,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    /// Inline image bytes, shown as a `data:` URL.
    Image { src: String },
    /// An image the vendor fetched from a URL: shown as a link, not loaded (the page loads
    /// nothing from another origin).
    ImageUrl { url: String },
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// Pretty-printed when the arguments are JSON.
    pub arguments: String,
}

/// The turns of a recorded request's messages.
pub fn request_turns(request: &Value) -> Vec<Turn> {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return Vec::new();
    };
    messages.iter().map(message_turn).collect()
}

fn text_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

fn message_turn(m: &Value) -> Turn {
    let parts = m
        .get("content")
        .and_then(Value::as_array)
        .map(|parts| parts.iter().filter_map(part).collect())
        .unwrap_or_default();
    Turn {
        role: text_of(m.get("role")).unwrap_or_else(|| "?".into()),
        name: text_of(m.get("name")),
        parts,
        tool_calls: calls(m.get("tool_calls")),
        tool_call_id: text_of(m.get("tool_call_id")),
        reasoning: reasoning(m.get("reasoning")),
        refusal: None,
        is_error: m.get("is_error").and_then(Value::as_bool).unwrap_or(false),
    }
}

/// A canonical `ContentPart` (externally tagged: `{"Text": {...}}`, `{"Image": {...}}`).
fn part(p: &Value) -> Option<Part> {
    if let Some(text) = p.pointer("/Text/text").and_then(Value::as_str) {
        return Some(Part::Text { text: text.to_owned() });
    }
    let source = p.pointer("/Image/source")?;
    if let Some(url) = source.get("Url").and_then(Value::as_str) {
        // Linked only when it is a web address (no `javascript:` or `data:` link).
        let lower = url.trim_start().to_ascii_lowercase();
        let web = lower.starts_with("https://") || lower.starts_with("http://");
        return Some(if web { Part::ImageUrl { url: url.to_owned() } } else { Part::Text { text: format!("[image: {}]", cut(url, 80)) } });
    }
    let inline = source.get("Base64")?;
    let media_type = inline.get("media_type").and_then(Value::as_str)?;
    let data = inline.get("data").and_then(Value::as_str)?;
    // Only image types, so a recorded `data:` URL cannot be made into a page or a script.
    let lower = media_type.to_ascii_lowercase();
    let safe = lower.starts_with("image/") && !lower.contains(['"', '<', '>', ' ', ';', ',']) && !lower.starts_with("image/svg");
    safe.then(|| Part::Image { src: format!("data:{media_type};base64,{data}") })
}

fn calls(v: Option<&Value>) -> Vec<Call> {
    v.and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let raw = c.get("arguments").and_then(Value::as_str).unwrap_or_default();
                    let arguments = serde_json::from_str::<Value>(raw)
                        .ok()
                        .and_then(|v| serde_json::to_string_pretty(&v).ok())
                        .unwrap_or_else(|| raw.to_owned());
                    Call {
                        id: text_of(c.get("id")).unwrap_or_default(),
                        name: text_of(c.get("name")).unwrap_or_default(),
                        arguments,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The visible reasoning text of `ReasoningBlock`s, joined.
fn reasoning(v: Option<&Value>) -> Option<String> {
    let blocks = v?.as_array()?;
    let text: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b.get("text").or_else(|| b.pointer("/Text/text")).and_then(Value::as_str))
        .filter(|t| !t.is_empty())
        .collect();
    (!text.is_empty()).then(|| text.join("\n\n"))
}

/// The answer's turn, from a recorded `ChatResponse`.
pub fn response_turn(response: &Value) -> Option<Turn> {
    let message = response.get("message")?;
    let content = text_of(message.get("content"));
    Some(Turn {
        role: "assistant".into(),
        name: None,
        parts: content.map(|text| vec![Part::Text { text }]).unwrap_or_default(),
        tool_calls: calls(message.get("tool_calls")),
        tool_call_id: None,
        reasoning: reasoning(message.get("reasoning")),
        refusal: text_of(message.get("refusal")),
        is_error: false,
    })
}

/// One attempt on the timeline: laid end to end from the request's arrival, as the record
/// keeps durations, not starts.
#[derive(Debug, Serialize, PartialEq)]
pub struct Span {
    pub target: String,
    pub status: String,
    pub error: Option<String>,
    pub latency_ms: f64,
    pub cost: Option<f64>,
    /// Where the bar starts and how wide it is, in percent of the timeline.
    pub left: f64,
    pub width: f64,
}

pub fn timeline(attempts: &[AttemptRecord], total_ms: f64) -> Vec<Span> {
    let sum: f64 = attempts.iter().map(|a| a.latency_ms.max(0.0)).sum();
    let scale = sum.max(total_ms).max(1.0);
    let mut at = 0.0;
    attempts
        .iter()
        .map(|a| {
            let ms = a.latency_ms.max(0.0);
            let span = Span {
                target: format!("{}/{}", a.provider, a.model),
                status: serde_json::to_value(a.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                error: a.error.clone(),
                latency_ms: ms,
                cost: a.cost,
                left: (at / scale * 100.0 * 10.0).round() / 10.0,
                // At least a sliver, so a skipped target shows.
                width: ((ms / scale * 100.0 * 10.0).round() / 10.0).max(0.5),
            };
            at += ms;
            span
        })
        .collect()
}

/// A row of the inferences list.
#[derive(Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub time_ms: i64,
    pub requested_model: String,
    pub target: Option<String>,
    pub route: Option<String>,
    pub error: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Option<f64>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub stream: bool,
    pub cache_hit: bool,
    /// The last user message, cut short.
    pub preview: String,
}

pub fn row(r: &InferenceRecord) -> Row {
    let preview = r
        .request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
        .and_then(|m| m.get("content")?.as_array()?.iter().find_map(|p| p.pointer("/Text/text")?.as_str()))
        .map(|t| cut(t, 90))
        .unwrap_or_default();
    Row {
        id: r.id.clone(),
        time_ms: r.time_ms,
        requested_model: r.requested_model.clone(),
        target: match (&r.provider, &r.model) {
            (Some(p), Some(m)) => Some(format!("{p}/{m}")),
            _ => None,
        },
        route: r.route.clone(),
        error: r.error.clone(),
        input_tokens: r.usage.input_tokens,
        output_tokens: r.usage.output_tokens,
        cost: r.cost,
        latency_ms: r.latency_ms,
        ttft_ms: r.ttft_ms,
        key_id: r.key_id.clone(),
        user: r.user.clone(),
        stream: r.stream,
        cache_hit: r.cache_hit,
        preview,
    }
}

/// `text` percent-encoded for a URL's path segment or query value (a space as `%20`, which
/// both read as a space; form encoding's `+` is a literal `+` in a path).
pub fn percent_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub fn cut(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Unix milliseconds as `2026-12-07 13:04:05` (UTC).
pub fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Milliseconds as people read them: `840 ms`, `1.25 s`, `2 min 5 s`.
pub fn duration(ms: f64) -> String {
    if !ms.is_finite() {
        return "–".into();
    }
    if ms < 1000.0 {
        format!("{} ms", ms.round() as i64)
    } else if ms < 60_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        let s = (ms / 1000.0).round() as i64;
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// Dollars with the precision small amounts need: `$0.000042`, `$0.0123`, `$12.34`.
pub fn usd(v: f64) -> String {
    if v == 0.0 {
        "$0".into()
    } else if v.abs() < 0.01 {
        let s = format!("{v:.6}");
        format!("${}", s.trim_end_matches('0'))
    } else {
        format!("${v:.2}")
    }
}

/// A large count in few characters: `950`, `12.3k`, `229.8M`.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    let (scaled, unit) = match a {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => return count(v.round() as i64),
    };
    format!("{scaled:.1}{unit}")
}

/// An integer with thousands separators: `1,234,567`.
pub fn count(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_recorded_conversation_becomes_turns() {
        let request = json!({"messages": [
            {"role": "system", "content": [{"Text": {"text": "Be brief."}}]},
            {"role": "user", "content": [
                {"Text": {"text": "What is this?"}},
                {"Image": {"source": {"Base64": {"media_type": "image/png", "data": "iVBOR"}}, "detail": null}},
                {"Image": {"source": {"Url": "https://example.com/cat.png"}, "detail": null}},
                {"Image": {"source": {"Base64": {"media_type": "text/html", "data": "PHNjcmlwdD4="}}, "detail": null}},
                {"Image": {"source": {"Base64": {"media_type": "image/SVG+XML", "data": "PHN2Zz4="}}, "detail": null}},
                {"Image": {"source": {"Url": "javascript:alert(1)"}, "detail": null}}
            ]},
            {"role": "assistant", "content": [], "tool_calls": [{"id": "c1", "name": "look", "arguments": "{\"x\":1}"}]},
            {"role": "tool", "content": [{"Text": {"text": "a cat"}}], "tool_call_id": "c1", "is_error": false}
        ]});
        let turns = request_turns(&request);
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[1].parts, vec![
            Part::Text { text: "What is this?".into() },
            Part::Image { src: "data:image/png;base64,iVBOR".into() },
            Part::ImageUrl { url: "https://example.com/cat.png".into() },
            Part::Text { text: "[image: javascript:alert(1)]".into() },
        ], "a data URL of another type, or SVG, is left out; a URL that is not a web address is not linked");
        assert_eq!(turns[2].tool_calls[0].arguments, "{\n  \"x\": 1\n}");
        assert_eq!(turns[3].tool_call_id.as_deref(), Some("c1"));
        // A record cut to size, or not a request at all, shows what it can.
        assert!(request_turns(&json!({"fungible_truncated": true})).is_empty());
    }

    #[test]
    fn attempts_are_laid_end_to_end() {
        use fungible_store::AttemptStatus;
        let attempt = |ms: f64, status| AttemptRecord {
            provider: "p".into(),
            model: "m".into(),
            status,
            error: None,
            latency_ms: ms,
            cost: None,
        };
        let spans = timeline(&[attempt(0.0, AttemptStatus::CircuitOpen), attempt(300.0, AttemptStatus::Failed), attempt(700.0, AttemptStatus::Ok)], 1000.0);
        assert_eq!(spans.iter().map(|s| (s.left, s.width)).collect::<Vec<_>>(), vec![(0.0, 0.5), (0.0, 30.0), (30.0, 70.0)]);
        assert_eq!(spans[0].status, "circuit_open");
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_796_601_845_000), "2026-12-07 00:04:05");
        assert_eq!(duration(840.4), "840 ms");
        assert_eq!(duration(1250.0), "1.25 s");
        assert_eq!(duration(125_000.0), "2 min 5 s");
        assert_eq!(usd(0.000042), "$0.000042");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(compact(229_817_518.0), "229.8M");
        assert_eq!(compact(9_999.0), "9,999");
        assert_eq!(compact(12_300.0), "12.3k");
        assert_eq!(cut("héllo world", 5), "héllo…");
        assert_eq!(percent_encode("a run/2 +x"), "a%20run%2F2%20%2Bx");
    }
}
