//! One dataset row: a conversation, the answer to learn, and where that answer came from.

use fungible_types::{ChatRequest, ContentPart, Message, Role, Tool};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Which part of the dataset a row trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }

    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "validation" | "valid" | "val" => Some(Split::Validation),
            _ => None,
        }
    }
}

/// Where a row's answer came from, best first: a demonstration (the ideal answer someone gave
/// as feedback), a row written by hand, a row imported from a file, the answer recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Demonstration,
    Manual,
    Imported,
    Recorded,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Demonstration => "demonstration",
            Source::Manual => "manual",
            Source::Imported => "imported",
            Source::Recorded => "recorded",
        }
    }
}

/// One row: the input conversation, the answer to learn, and a worse answer when one is known
/// (for preference tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub split: Split,
    pub source: Source,
    /// The recorded inference the row comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_id: Option<String>,
    /// The conversation up to the answer: system, user, assistant and tool turns. Earlier
    /// assistant turns are context, not trained on.
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// The JSON schema the answer had to follow (`response_format`), for evals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The answer to learn (an assistant message: text, tool calls or both).
    pub output: Message,
    /// A worse answer to the same input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Message>,
    /// The recorded inference's tags.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    /// Feedback on the answer: 1 thumbs up, 0 thumbs down, or the score given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<f64>,
    /// Tokens of the conversation, tools and answer (the `o200k_base` estimate).
    pub tokens: u64,
}

impl Example {
    /// A row with its token count filled in.
    pub fn new(id: String, source: Source, messages: Vec<Message>, tools: Vec<Tool>, output: Message) -> Example {
        let mut example = Example {
            id,
            split: Split::Train,
            source,
            inference_id: None,
            messages,
            tools,
            schema: None,
            output,
            rejected: None,
            tags: Map::new(),
            label: None,
            tokens: 0,
        };
        example.count_tokens();
        example
    }

    /// Sets `tokens` from the conversation, tools and answer.
    pub fn count_tokens(&mut self) {
        let mut messages = self.messages.clone();
        messages.push(self.output.clone());
        let req = ChatRequest { messages, tools: self.tools.clone(), ..ChatRequest::default() };
        self.tokens = fungible_providers::estimate::request_tokens(&req);
    }

    /// The input's text (every message's text and tool calls, and the tools' names), for
    /// embeddings and display.
    pub fn input_text(&self) -> String {
        let mut text = String::new();
        for m in &self.messages {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&m.joined_text());
            for call in &m.tool_calls {
                text.push_str(&call.name);
                text.push_str(&call.arguments);
            }
        }
        text
    }

    /// The answer's text (and tool calls), for display.
    pub fn output_text(&self) -> String {
        message_text(&self.output)
    }

    /// A digest of the input (messages and tools): rows with the same one ask the same thing.
    pub fn input_digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(&self.messages).unwrap_or_default());
        hasher.update(b"\0");
        hasher.update(serde_json::to_vec(&self.tools).unwrap_or_default());
        hasher.finalize().into()
    }

    /// What is wrong with the row, if anything: no user turn, an answer that is not an
    /// assistant message or is empty.
    pub fn problem(&self) -> Option<String> {
        if !self.messages.iter().any(|m| m.role == Role::User) {
            return Some("the conversation has no user message".into());
        }
        if self.output.role != Role::Assistant {
            return Some(format!("the answer must be an assistant message, not {}", self.output.role.as_str()));
        }
        if self.output.joined_text().trim().is_empty() && self.output.tool_calls.is_empty() {
            return Some("the answer is empty".into());
        }
        None
    }
}

/// An assistant message from an answer's text and tool calls.
pub fn assistant(text: Option<String>, tool_calls: Vec<fungible_types::ToolCall>) -> Message {
    let mut m = Message::new(Role::Assistant, text.map(|t| vec![ContentPart::Text { text: t }]).unwrap_or_default());
    m.tool_calls = tool_calls;
    m
}

/// A message's text, with its tool calls as `name(arguments)`.
pub fn message_text(m: &Message) -> String {
    let mut text = m.joined_text();
    for call in &m.tool_calls {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("{}({})", call.name, call.arguments));
    }
    text
}

/// A short stable id from `seed` (the same seed gives the same id).
pub fn stable_id(seed: &[u8]) -> String {
    let digest = Sha256::digest(seed);
    let mut id = String::from("row_");
    for b in &digest[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}
