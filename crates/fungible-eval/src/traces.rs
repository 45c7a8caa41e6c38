//! `--from-traces`: a dataset made of recorded inferences, read through the store's own
//! list/get APIs (only `fungible-store` knows SQL).
//!
//! Each successful inference that passes the filters becomes an item: its id, its request's
//! messages, and as reference what was answered then — or, when feedback carries a
//! demonstration (a corrected answer), that demonstration. So "would model X have answered
//! my traffic like production did?" is one command.

use fungible_store::{Feedback, InferenceFilter, InferenceRecord, Store, StoreError};
use fungible_types::{ChatRequest, Role};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::dataset::{Dataset, DatasetFormat, Item, hex};

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("reading the inference store: {0}")]
    Store(#[from] StoreError),
    #[error("no recorded inference matches {0}")]
    Empty(String),
    #[error("{0}")]
    BadFilter(String),
}

/// Which feedback an inference must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackFilter {
    /// Thumbs up or a score >= 0.5.
    Positive,
    /// Thumbs down or a score < 0.5.
    Negative,
    /// Any feedback.
    Any,
}

impl FeedbackFilter {
    pub fn parse(s: &str) -> Result<FeedbackFilter, TracesError> {
        match s {
            "positive" | "good" => Ok(FeedbackFilter::Positive),
            "negative" | "bad" => Ok(FeedbackFilter::Negative),
            "any" => Ok(FeedbackFilter::Any),
            _ => Err(TracesError::BadFilter(format!(
                "--feedback {s:?}: expected positive, negative or any"
            ))),
        }
    }

    fn matches(self, feedback: &[Feedback]) -> bool {
        let mut verdicts = feedback
            .iter()
            .filter_map(|f| f.boolean.or(f.score.map(|s| s >= 0.5)));
        match self {
            FeedbackFilter::Any => !feedback.is_empty(),
            FeedbackFilter::Positive => verdicts.any(|v| v),
            FeedbackFilter::Negative => verdicts.any(|v| !v),
        }
    }
}

/// What to take from the store.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    pub route: Option<String>,
    /// The model as the client named it, or `PROVIDER/MODEL` that answered.
    pub model: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub feedback: Option<FeedbackFilter>,
    /// At most this many items (newest first).
    pub limit: usize,
}

impl TraceFilter {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.route {
            parts.push(format!("route={r}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model={m}"));
        }
        if let Some(s) = self.since_ms {
            parts.push(format!("since={s}"));
        }
        if let Some(u) = self.until_ms {
            parts.push(format!("until={u}"));
        }
        if let Some(f) = self.feedback {
            parts.push(format!("feedback={f:?}").to_lowercase());
        }
        parts.push(format!("limit={}", self.limit));
        format!("traces:{}", parts.join(","))
    }
}

/// Reads the matching inferences into a dataset, newest first.
pub async fn dataset_from_traces(
    store: &Store,
    filter: &TraceFilter,
) -> Result<Dataset, TracesError> {
    let source = filter.describe();
    let (provider, model) = match filter.model.as_deref().and_then(|m| m.split_once('/')) {
        Some((p, m)) => (Some(p.to_owned()), Some(m.to_owned())),
        None => (None, None),
    };
    let mut items = Vec::new();
    let mut before: Option<String> = None;
    'pages: loop {
        let page = store
            .list(&InferenceFilter {
                provider: provider.clone(),
                model: model.clone(),
                route: filter
                    .route
                    .clone()
                    .or_else(|| filter.model.clone().filter(|m| !m.contains('/'))),
                errors: Some(false),
                since_ms: filter.since_ms,
                until_ms: filter.until_ms,
                before: before.clone(),
                limit: Some(500),
                ..InferenceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        for record in page {
            let feedback = store.feedback(&record.id).await?;
            if let Some(f) = filter.feedback
                && !f.matches(&feedback)
            {
                continue;
            }
            if let Some(item) = item_from(record, &feedback) {
                items.push(item);
                if items.len() >= filter.limit {
                    break 'pages;
                }
            }
        }
    }
    if items.is_empty() {
        return Err(TracesError::Empty(source));
    }
    let mut hasher = Sha256::new();
    for item in &items {
        hasher.update(item.id.as_bytes());
        hasher.update(b"\n");
    }
    Ok(Dataset {
        name: source.clone(),
        source,
        sha256: Some(hex(&hasher.finalize())),
        format: DatasetFormat::Chat,
        items,
    })
}

/// An item from a recorded inference; `None` when it cannot be replayed (no user message,
/// or stored cut at `[store] max_record_bytes`: not the request that was asked).
fn item_from(record: InferenceRecord, feedback: &[Feedback]) -> Option<Item> {
    if record.truncated {
        return None;
    }
    let request: ChatRequest = serde_json::from_value(record.request).ok()?;
    if !request.messages.iter().any(|m| m.role == Role::User) {
        return None;
    }
    let demonstration = feedback
        .iter()
        .rev()
        .find_map(|f| f.demonstration.as_ref())
        .map(|d| match d {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    let answered = record
        .response
        .as_ref()
        .and_then(|r| r.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut metadata = Map::new();
    metadata.insert(
        "requested_model".into(),
        Value::String(record.requested_model),
    );
    if let (Some(p), Some(m)) = (record.provider, record.model) {
        metadata.insert("answered_by".into(), Value::String(format!("{p}/{m}")));
    }
    if let Some(r) = record.route {
        metadata.insert("route".into(), Value::String(r));
    }
    metadata.insert("time_ms".into(), Value::from(record.time_ms));
    let schema = match &request.response_format {
        Some(fungible_types::ResponseFormat::JsonSchema(f)) => Some(f.schema.clone()),
        _ => None,
    };
    Some(Item {
        id: record.id,
        messages: request.messages,
        reference: demonstration.or(answered),
        schema,
        code: None,
        metadata,
    })
}

/// A point in time for `--since` / `--until`: `30m`, `24h`, `7d` ago, or a date
/// (`2025-01-31`) or RFC 3339 time in UTC (`2025-01-31T12:00:00Z`). Unix milliseconds.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, TracesError> {
    let bad = || {
        TracesError::BadFilter(format!(
            "{s:?} is not a time (expected 30m, 24h, 7d, 2025-01-31 or 2025-01-31T12:00:00Z)"
        ))
    };
    let s = s.trim();
    for (suffix, ms) in [("m", 60_000i64), ("h", 3_600_000), ("d", 86_400_000)] {
        if let Some(n) = s.strip_suffix(suffix).and_then(|n| n.parse::<i64>().ok()) {
            return Ok(now_ms - n * ms);
        }
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let time = time.strip_suffix('Z').ok_or_else(bad)?;
    let t: Vec<i64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return Err(bad());
    }
    Ok((fungible_types::date::days_from_civil(*y, *m as u32, *day as u32) * 86_400 + hh * 3600 + mm * 60 + ss) * 1000)
}


#[cfg(test)]
mod tests {
    use super::*;
    use fungible_store::FeedbackTarget;
    use fungible_types::{Message, Usage};
    use serde_json::json;

    #[test]
    fn times_parse() {
        assert_eq!(
            parse_time("2024-02-29T12:34:56Z", 0).unwrap(),
            1_709_210_096_000
        );
        assert_eq!(parse_time("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(
            parse_time("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("2024-13-01", 0).is_err());
    }

    fn record(
        id: &str,
        route: Option<&str>,
        question: &str,
        answer: Option<&str>,
    ) -> InferenceRecord {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![Message::text(Role::User, question)],
            ..ChatRequest::default()
        };
        InferenceRecord {
            id: id.into(),
            time_ms: 1_000,
            inbound: "openai_chat".into(),
            requested_model: route.unwrap_or("openai/gpt-5").into(),
            route: route.map(Into::into),
            variant: None,
            provider: Some("openai".into()),
            model: Some("gpt-5".into()),
            stream: false,
            error: answer.is_none().then(|| "timeout".into()),
            request: serde_json::to_value(&request).unwrap(),
            response: answer.map(|a| json!({"id": "x", "model": "gpt-5", "created": 0, "message": {"content": a, "tool_calls": [], "reasoning": [], "refusal": null}, "finish_reason": "Stop", "usage": {"input_tokens": 1, "output_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}})),
            usage: Usage::default(),
            cost: None,
            ttft_ms: None,
            latency_ms: 5.0,
            user: None,
            tags: json!({}),
            episode_id: None,
            attempts: vec![],
            key_id: None,
            cache_hit: false,
            truncated: false,
            raw: Vec::new(),
        }
    }

    fn feedback(
        id: &str,
        target: &str,
        boolean: Option<bool>,
        demonstration: Option<&str>,
    ) -> Feedback {
        Feedback {
            id: id.into(),
            time_ms: 2_000,
            target: FeedbackTarget::Inference,
            target_id: target.into(),
            boolean,
            score: None,
            comment: None,
            demonstration: demonstration.map(|d| json!(d)),
        }
    }

    #[tokio::test]
    async fn recorded_inferences_become_items_filtered_by_route_and_feedback() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        store
            .insert(&[
                record("01", Some("chat"), "q1", Some("a1")),
                record("02", Some("chat"), "q2", Some("a2")),
                record("03", Some("other"), "q3", Some("a3")),
                record("04", Some("chat"), "q4", None),
            ])
            .await
            .unwrap();
        store
            .insert_feedback(&feedback("f1", "01", Some(true), Some("better a1")))
            .await
            .unwrap();
        store
            .insert_feedback(&feedback("f2", "02", Some(false), None))
            .await
            .unwrap();

        let all = dataset_from_traces(
            &store,
            &TraceFilter {
                route: Some("chat".into()),
                limit: 100,
                ..TraceFilter::default()
            },
        )
        .await
        .unwrap();
        let ids: Vec<_> = all.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            ["02", "01"],
            "newest first, failures and other routes left out"
        );
        assert_eq!(all.items[0].reference.as_deref(), Some("a2"));
        assert_eq!(
            all.items[1].reference.as_deref(),
            Some("better a1"),
            "a demonstration is the reference"
        );
        assert_eq!(all.items[1].input_text(), "q1");
        assert!(all.source.starts_with("traces:route=chat"));

        let good = dataset_from_traces(
            &store,
            &TraceFilter {
                feedback: Some(FeedbackFilter::Positive),
                limit: 100,
                ..TraceFilter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(good.items.len(), 1);
        assert_eq!(good.items[0].id, "01");

        let limited = dataset_from_traces(
            &store,
            &TraceFilter {
                limit: 1,
                ..TraceFilter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(limited.items.len(), 1);

        let none = dataset_from_traces(
            &store,
            &TraceFilter {
                route: Some("nope".into()),
                limit: 10,
                ..TraceFilter::default()
            },
        )
        .await;
        assert!(matches!(none, Err(TracesError::Empty(_))));
    }
}
