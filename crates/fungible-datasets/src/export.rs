//! Exports: a dataset as each provider's fine-tuning JSONL, checked against that provider's
//! documented limits before anything is written or uploaded.
//!
//! Messages are encoded by the same code that sends them to the provider
//! (`fungible-providers`), so a conversation trains the way it is served. Earlier assistant
//! turns are context: where the format has per-message weights they get `weight: 0` and only
//! the answer is trained on.
//!
//! Limits, as documented by each provider (checked 2026-12; see `docs/tuning-providers.md`):
//!
//! | format | min rows | tokens per row | file | other |
//! |---|---:|---:|---:|---|
//! | `openai`, `openai-dpo` | 10 | 65,536 | 512 MB | DPO: one preferred and one non-preferred answer, text only |
//! | `together`, `together-dpo` | 1 | – | 25 GB | roles start with system or user, then alternate; only `messages` (and `tools`) |
//! | `fireworks`, `fireworks-dpo` | 3 | – | 150 MB (one upload) | at most 3,000,000 rows |
//! | `mistral` | 1 | – | 512 MB | tool call ids of exactly 9 characters; text only |
//! | `vertex` | 1 | 131,072 | 1 GB | at most 5,000 validation rows |

use std::collections::HashMap;

use fungible_providers::openai::OpenAiFlavor;
use fungible_types::{ChatRequest, ContentPart, Message, ProviderError, Role};
use serde_json::{Map, Value, json};

use crate::example::{Example, Split};

/// A fine-tuning file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// fungible's own rows: OpenAI-style `messages` (ending with the answer) and `tools`,
    /// with every other field of the row; what the API shows and what import reads back.
    Fungible,
    OpenAi,
    OpenAiDpo,
    Together,
    TogetherDpo,
    Fireworks,
    FireworksDpo,
    Mistral,
    /// Gemini supervised tuning on Vertex AI.
    Vertex,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::Fungible,
        Format::OpenAi,
        Format::OpenAiDpo,
        Format::Together,
        Format::TogetherDpo,
        Format::Fireworks,
        Format::FireworksDpo,
        Format::Mistral,
        Format::Vertex,
    ];

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s).or(match s {
            "gemini" => Some(Format::Vertex),
            _ => None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Fungible => "fungible",
            Format::OpenAi => "openai",
            Format::OpenAiDpo => "openai-dpo",
            Format::Together => "together",
            Format::TogetherDpo => "together-dpo",
            Format::Fireworks => "fireworks",
            Format::FireworksDpo => "fireworks-dpo",
            Format::Mistral => "mistral",
            Format::Vertex => "vertex",
        }
    }

    /// Whether the format holds preference pairs (rows need a rejected answer).
    pub fn is_preference(self) -> bool {
        matches!(self, Format::OpenAiDpo | Format::TogetherDpo | Format::FireworksDpo)
    }

    fn limits(self) -> Limits {
        const MB: u64 = 1_000_000;
        let none = Limits { min_rows: 1, max_rows: None, max_tokens: None, max_bytes: None, max_validation_rows: None };
        match self {
            Format::Fungible => none,
            Format::OpenAi | Format::OpenAiDpo => {
                Limits { min_rows: 10, max_tokens: Some(65_536), max_bytes: Some(512 * MB), ..none }
            }
            Format::Together | Format::TogetherDpo => Limits { max_bytes: Some(25_000 * MB), ..none },
            Format::Fireworks | Format::FireworksDpo => {
                Limits { min_rows: 3, max_rows: Some(3_000_000), max_bytes: Some(150 * MB), ..none }
            }
            Format::Mistral => Limits { max_bytes: Some(512 * MB), ..none },
            Format::Vertex => Limits {
                max_tokens: Some(131_072),
                max_bytes: Some(1_000 * MB),
                max_validation_rows: Some(5_000),
                max_rows: Some(1_000_000),
                ..none
            },
        }
    }
}

struct Limits {
    min_rows: usize,
    max_rows: Option<usize>,
    max_tokens: Option<u64>,
    max_bytes: Option<u64>,
    max_validation_rows: Option<usize>,
}

/// Why a row cannot go in a format.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowProblem {
    pub row_id: String,
    pub problem: String,
}

/// An export that breaks the format's rules: nothing was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", describe(.problems, .file_problems))]
pub struct ExportError {
    pub format: &'static str,
    /// Rows that cannot go in the format.
    pub problems: Vec<RowProblem>,
    /// Problems of the file as a whole (too few rows, too large).
    pub file_problems: Vec<String>,
}

fn describe(problems: &[RowProblem], file_problems: &[String]) -> String {
    let mut lines: Vec<String> = file_problems.to_vec();
    for p in problems.iter().take(10) {
        lines.push(format!("row {}: {}", p.row_id, p.problem));
    }
    if problems.len() > 10 {
        lines.push(format!("... and {} more rows", problems.len() - 10));
    }
    lines.join("\n")
}

/// A file ready to write or upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// JSONL, one row per line.
    pub jsonl: String,
    pub rows: usize,
    /// Rows left out because `skip_invalid` was asked for, with why.
    pub skipped: Vec<RowProblem>,
}

/// `rows` of `split` (all: `None`) in `format`. Every row is checked first: with
/// `skip_invalid` the rows that break the format's rules are left out and listed, otherwise
/// any such row fails the export; too few rows or too large a file always fail it.
pub fn export(rows: &[Example], split: Option<Split>, format: Format, skip_invalid: bool) -> Result<Exported, ExportError> {
    let limits = format.limits();
    let mut problems = Vec::new();
    let mut lines = Vec::new();
    for row in rows.iter().filter(|r| split.is_none_or(|s| r.split == s)) {
        match line(row, format, &limits) {
            Ok(line) => lines.push(line),
            Err(problem) => problems.push(RowProblem { row_id: row.id.clone(), problem }),
        }
    }
    let mut file_problems = Vec::new();
    if !problems.is_empty() && !skip_invalid {
        return Err(ExportError { format: format.as_str(), problems, file_problems });
    }
    // The minimum is the training file's; a validation file may be small.
    let min_rows = if split == Some(Split::Validation) { 1 } else { limits.min_rows };
    if lines.len() < min_rows {
        file_problems.push(format!(
            "{} takes at least {} rows; {} {} ready",
            format.as_str(),
            min_rows,
            lines.len(),
            if lines.len() == 1 { "is" } else { "are" }
        ));
    }
    if let Some(max) = limits.max_rows
        && lines.len() > max
    {
        file_problems.push(format!("{} takes at most {max} rows; there are {}", format.as_str(), lines.len()));
    }
    if let Some(max) = limits.max_validation_rows
        && split == Some(Split::Validation)
        && lines.len() > max
    {
        file_problems.push(format!("{} takes at most {max} validation rows; there are {}", format.as_str(), lines.len()));
    }
    let jsonl: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if let Some(max) = limits.max_bytes
        && jsonl.len() as u64 > max
    {
        file_problems.push(format!("{} takes files of at most {max} bytes; this one has {}", format.as_str(), jsonl.len()));
    }
    if !file_problems.is_empty() {
        return Err(ExportError { format: format.as_str(), problems, file_problems });
    }
    Ok(Exported { jsonl, rows: lines.len(), skipped: problems })
}

/// One row as a line of `format`, or why it cannot be one.
fn line(row: &Example, format: Format, limits: &Limits) -> Result<String, String> {
    if let Some(problem) = row.problem() {
        return Err(problem);
    }
    if let Some(max) = limits.max_tokens
        && row.tokens > max
    {
        return Err(format!("{} tokens, over the {max} {} allows per row", row.tokens, format.as_str()));
    }
    let value = match format {
        Format::Fungible => row_json(row)?,
        Format::OpenAi | Format::Fireworks => openai_sft(row, true)?,
        Format::Together => {
            text_only(row)?;
            alternating(row)?;
            openai_sft(row, true)?
        }
        Format::Mistral => {
            text_only(row)?;
            let mut value = openai_sft(row, true)?;
            nine_character_call_ids(&mut value);
            value
        }
        Format::OpenAiDpo | Format::TogetherDpo | Format::FireworksDpo => {
            text_only(row)?;
            preference(row)?
        }
        Format::Vertex => vertex(row)?,
    };
    serde_json::to_string(&value).map_err(|e| e.to_string())
}

/// A row as users see it (the API, `fungible datasets rows`, the `fungible` format):
/// `messages` ending with the answer and `tools` in OpenAI's shape, `rejected` as an
/// OpenAI assistant message, and the row's other fields.
pub fn row_json(row: &Example) -> Result<Value, String> {
    let Value::Object(mut out) = openai_sft(row, false)? else {
        return Err("the encoder did not produce a JSON object".into());
    };
    out.insert("id".into(), json!(row.id));
    out.insert("split".into(), json!(row.split.as_str()));
    out.insert("source".into(), json!(row.source.as_str()));
    if let Some(id) = &row.inference_id {
        out.insert("inference_id".into(), json!(id));
    }
    if let Some(rejected) = &row.rejected {
        let mut body = openai_body(&[], Some(rejected), row, OpenAiFlavor::OPENAI)?;
        if let Some(Value::Array(mut m)) = body.remove("messages")
            && let Some(m) = m.pop()
        {
            out.insert("rejected".into(), m);
        }
    }
    if let Some(schema) = &row.schema {
        out.insert("schema".into(), schema.clone());
    }
    if !row.tags.is_empty() {
        out.insert("tags".into(), Value::Object(row.tags.clone()));
    }
    if let Some(label) = row.label {
        out.insert("label".into(), json!(label));
    }
    out.insert("tokens".into(), json!(row.tokens));
    Ok(Value::Object(out))
}

/// The body OpenAI would be sent for the conversation followed by `answer`.
fn openai_body(messages: &[Message], answer: Option<&Message>, row: &Example, flavor: OpenAiFlavor) -> Result<Map<String, Value>, String> {
    let mut all = messages.to_vec();
    all.extend(answer.cloned());
    let req = ChatRequest { messages: all, tools: row.tools.clone(), ..ChatRequest::default() };
    let bytes = fungible_providers::openai::encode_request("export", &req, "export", false, flavor).map_err(provider_problem)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(body)) => Ok(body),
        _ => Err("the encoder did not produce a JSON object".into()),
    }
}

fn provider_problem(e: ProviderError) -> String {
    e.message
}

/// `{"messages": [...], "tools": [...]}`; with `weights`, earlier assistant turns get
/// `weight: 0`.
fn openai_sft(row: &Example, weights: bool) -> Result<Value, String> {
    let mut body = openai_body(&row.messages, Some(&row.output), row, OpenAiFlavor::OPENAI)?;
    let mut messages = body.remove("messages").unwrap_or_else(|| json!([]));
    if weights && let Some(list) = messages.as_array_mut() {
        let last = list.len().saturating_sub(1);
        for (i, m) in list.iter_mut().enumerate() {
            if i < last && m.get("role").and_then(Value::as_str) == Some("assistant") {
                m["weight"] = json!(0);
            }
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), messages);
    if let Some(tools) = body.remove("tools").filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
        out.insert("tools".into(), tools);
    }
    Ok(Value::Object(out))
}

/// `{"input": {"messages", "tools"}, "preferred_output": [answer], "non_preferred_output": [worse]}`.
fn preference(row: &Example) -> Result<Value, String> {
    let rejected = row.rejected.as_ref().ok_or("no rejected answer (preference rows need a worse answer to the same input)")?;
    let mut input = openai_body(&row.messages, None, row, OpenAiFlavor::OPENAI)?;
    let answer = |m: &Message| -> Result<Value, String> {
        let mut body = openai_body(&[], Some(m), row, OpenAiFlavor::OPENAI)?;
        Ok(body.remove("messages").unwrap_or_else(|| json!([])))
    };
    let mut out = Map::new();
    let mut input_out = Map::new();
    input_out.insert("messages".into(), input.remove("messages").unwrap_or_else(|| json!([])));
    if let Some(tools) = input.remove("tools").filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
        input_out.insert("tools".into(), tools);
    }
    out.insert("input".into(), Value::Object(input_out));
    out.insert("preferred_output".into(), answer(&row.output)?);
    out.insert("non_preferred_output".into(), answer(rejected)?);
    Ok(Value::Object(out))
}

/// Gemini's `{"systemInstruction", "contents", "tools"}`, as Gemini is sent them.
fn vertex(row: &Example) -> Result<Value, String> {
    let mut messages = row.messages.clone();
    messages.push(row.output.clone());
    let req = ChatRequest { messages, tools: row.tools.clone(), ..ChatRequest::default() };
    let bytes = fungible_providers::gemini::encode_request("export", &req).map_err(provider_problem)?;
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err("the encoder did not produce a JSON object".into());
    };
    let mut out = Map::new();
    for key in ["systemInstruction", "contents", "tools"] {
        if let Some(v) = body.remove(key) {
            out.insert(key.into(), v);
        }
    }
    Ok(Value::Object(out))
}

fn text_only(row: &Example) -> Result<(), String> {
    let all = row.messages.iter().chain(std::iter::once(&row.output)).chain(row.rejected.as_ref());
    for m in all {
        if m.content.iter().any(|p| matches!(p, ContentPart::Image { .. })) {
            return Err("an image: this format takes text only".into());
        }
    }
    Ok(())
}

/// Together: the conversation starts with system or user, then user and assistant alternate
/// (tool turns belong to the assistant's turn).
fn alternating(row: &Example) -> Result<(), String> {
    let mut previous: Option<Role> = None;
    for m in row.messages.iter().chain(std::iter::once(&row.output)) {
        let role = match m.role {
            Role::Developer => Role::System,
            Role::Tool => continue,
            r => r,
        };
        let ok = match (previous, role) {
            (None, Role::System | Role::User) => true,
            (Some(Role::System), Role::User) => true,
            (Some(Role::User), Role::Assistant) => true,
            (Some(Role::Assistant), Role::User) => true,
            (Some(Role::Assistant), Role::Assistant) => true, // a tool call, its result, the answer
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{} after {}: the conversation must start with system or user and then alternate user and assistant",
                role.as_str(),
                previous.map_or("the start", Role::as_str)
            ));
        }
        previous = Some(role);
    }
    Ok(())
}

/// Mistral takes tool call ids of exactly 9 characters: each id is replaced by one made from
/// it (the same id always gives the same replacement, so calls and results still match).
fn nine_character_call_ids(value: &mut Value) {
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut short = |id: &str| -> String {
        if id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return id.to_owned();
        }
        let n = ids.len();
        ids.entry(id.to_owned()).or_insert_with(|| nine_characters(id, n)).clone()
    };
    let Some(messages) = value.get_mut("messages").and_then(Value::as_array_mut) else { return };
    for m in messages {
        if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                if let Some(id) = call.get("id").and_then(Value::as_str).map(str::to_owned) {
                    call["id"] = json!(short(&id));
                }
            }
        }
        if let Some(id) = m.get("tool_call_id").and_then(Value::as_str).map(str::to_owned) {
            m["tool_call_id"] = json!(short(&id));
        }
    }
}

fn nine_characters(id: &str, n: usize) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let digest = Sha256::digest(format!("{n}:{id}"));
    digest[..9].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}
