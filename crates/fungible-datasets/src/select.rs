//! Rows from recorded traffic: the inferences that pass the filters, each turned into a row
//! whose answer comes from the best source there is (a demonstration given as feedback, else
//! the recorded answer), labelled with its feedback.

use fungible_store::{Feedback, InferenceFilter, InferenceRecord, Store, StoreError};
use fungible_types::{ChatRequest, ChatResponse, ContentPart, Message, Role, ToolCall};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::example::{Example, Source, assistant};

/// Which feedback a row must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackFilter {
    /// Thumbs up or a score of at least 0.5 (or `min_score`).
    Positive,
    /// Thumbs down or a score under 0.5.
    Negative,
    /// A demonstration (an ideal answer given as feedback).
    Demonstration,
    /// Any feedback at all.
    Any,
}

impl FeedbackFilter {
    pub fn parse(s: &str) -> Option<FeedbackFilter> {
        Some(match s {
            "positive" | "good" => FeedbackFilter::Positive,
            "negative" | "bad" => FeedbackFilter::Negative,
            "demonstration" | "demonstrations" => FeedbackFilter::Demonstration,
            "any" => FeedbackFilter::Any,
            _ => return None,
        })
    }
}

/// What to take from the store. Failed inferences never become rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selection {
    /// The route (alias) the client named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// `PROVIDER/MODEL` that answered, or the model as the client named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// Tags every row must have (`key=value`, or `key` for a tag set to true).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The virtual key's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackFilter>,
    /// Only answers scored at least this (a thumbs up counts 1, a thumbs down 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    /// At most this many inferences are read (newest first); 0: no limit.
    pub limit: usize,
}

/// Why recorded inferences did not become rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Stored cut at `[store] max_record_bytes`: not the request that was asked.
    pub truncated: usize,
    /// No user message, or no answer (neither text nor tool calls).
    pub unusable: usize,
    /// Left out by the feedback filter or the score threshold.
    pub feedback: usize,
}

/// Reads the matching inferences, newest first, as rows (split and curation come later).
/// Rows the feedback filter leaves out are returned apart (`others`): curation pairs them with
/// the kept rows that ask the same thing, as rejected answers.
pub async fn select(store: &Store, selection: &Selection) -> Result<Selected, StoreError> {
    let (provider, model) = match selection.model.as_deref().and_then(|m| m.split_once('/')) {
        Some((p, m)) => (Some(p.to_owned()), Some(m.to_owned())),
        None => (None, None),
    };
    let mut selected = Selected::default();
    let mut before: Option<String> = None;
    let mut read = 0usize;
    'pages: loop {
        let page = store
            .list(&InferenceFilter {
                provider: provider.clone(),
                model: model.clone(),
                route: selection.route.clone().or_else(|| selection.model.clone().filter(|m| !m.contains('/'))),
                user: selection.user.clone(),
                key_id: selection.key_id.clone(),
                tags: selection.tags.clone(),
                errors: Some(false),
                since_ms: selection.since_ms,
                until_ms: selection.until_ms,
                before: before.clone(),
                limit: Some(500),
                ..InferenceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        for record in page {
            read += 1;
            if record.truncated {
                selected.skipped.truncated += 1;
            } else {
                let feedback = store.feedback(&record.id).await?;
                match example_from(record, &feedback) {
                    None => selected.skipped.unusable += 1,
                    Some(example) if keeps(selection, &example, &feedback) => selected.rows.push(example),
                    Some(example) => {
                        selected.skipped.feedback += 1;
                        selected.others.push(example);
                    }
                }
            }
            if selection.limit > 0 && read >= selection.limit {
                break 'pages;
            }
        }
    }
    Ok(selected)
}

/// What [`select`] read.
#[derive(Debug, Clone, Default)]
pub struct Selected {
    pub rows: Vec<Example>,
    /// Rows the feedback filter left out (candidates for rejected answers).
    pub others: Vec<Example>,
    pub skipped: Skipped,
}

fn keeps(selection: &Selection, example: &Example, feedback: &[Feedback]) -> bool {
    if let Some(min) = selection.min_score
        && example.label.is_none_or(|l| l < min)
    {
        return false;
    }
    match selection.feedback {
        None => true,
        Some(FeedbackFilter::Any) => !feedback.is_empty(),
        Some(FeedbackFilter::Demonstration) => example.source == Source::Demonstration,
        Some(FeedbackFilter::Positive) => example.label.is_some_and(|l| l >= 0.5),
        Some(FeedbackFilter::Negative) => example.label.is_some_and(|l| l < 0.5),
    }
}

/// A row from a recorded inference and its feedback; `None` when it cannot be one.
pub fn example_from(record: InferenceRecord, feedback: &[Feedback]) -> Option<Example> {
    let request: ChatRequest = serde_json::from_value(record.request).ok()?;
    let recorded = record
        .response
        .and_then(|r| serde_json::from_value::<ChatResponse>(r).ok())
        .map(|r| assistant(r.message.content, r.message.tool_calls));
    // The latest verdict: a thumbs up or down, or a score.
    let label = feedback.iter().rev().find_map(|f| f.boolean.map(|b| if b { 1.0 } else { 0.0 }).or(f.score));
    let demonstration = feedback.iter().rev().find_map(|f| f.demonstration.as_ref()).and_then(demonstration_message);
    let (source, output, rejected) = match (demonstration, recorded) {
        (Some(d), recorded) => {
            // A demonstration says what the answer should have been: the recorded answer,
            // unless it was approved or is the same, is the worse one.
            let rejected = recorded.filter(|r| *r != d && label.is_none_or(|l| l < 0.5));
            (Source::Demonstration, d, rejected)
        }
        (None, Some(r)) => (Source::Recorded, r, None),
        (None, None) => return None,
    };
    let schema = match &request.response_format {
        Some(fungible_types::ResponseFormat::JsonSchema(f)) => Some(f.schema.clone()),
        _ => None,
    };
    let mut example = Example::new(record.id.clone(), source, request.messages, request.tools, output);
    example.schema = schema;
    example.inference_id = Some(record.id);
    example.rejected = rejected;
    example.label = label;
    if let Value::Object(tags) = record.tags {
        example.tags = tags;
    }
    example.problem().is_none().then_some(example)
}

/// A demonstration as an assistant message: text, or an object with `content` and OpenAI-style
/// `tool_calls` (`{"function": {"name", "arguments"}}`), or any other JSON as its text.
fn demonstration_message(d: &Value) -> Option<Message> {
    match d {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(assistant(Some(s.clone()), Vec::new())),
        Value::Object(o) if o.contains_key("content") || o.contains_key("tool_calls") => {
            let text = match o.get("content") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(parts)) => Some(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                ),
                _ => None,
            };
            let calls: Vec<ToolCall> = o
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let f = c.get("function").unwrap_or(c);
                            Some(ToolCall {
                                id: c.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{i}"), str::to_owned),
                                name: f.get("name")?.as_str()?.to_owned(),
                                arguments: match f.get("arguments") {
                                    Some(Value::String(s)) => s.clone(),
                                    Some(other) => other.to_string(),
                                    None => "{}".into(),
                                },
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let text = text.filter(|t| !t.is_empty());
            (text.is_some() || !calls.is_empty()).then(|| assistant(text, calls))
        }
        other => Some(Message::new(Role::Assistant, vec![ContentPart::Text { text: other.to_string() }])),
    }
}
