//! Datasets: JSONL files of items (chat messages or a prompt, an optional reference answer,
//! JSON schema, code tests and metadata), read whole before a run.
//!
//! Three formats, detected from the first item's fields or named with `--format`:
//! - `chat` (ours): `id` (default: the line number), `messages` (OpenAI style, `content` a
//!   string or text parts) or `prompt`, `system`, `reference`, `schema`, `tests` +
//!   `entry_point` (Python code run by the `code` scorer), `metadata`.
//! - `gsm8k`: `question` / `answer`; the reference is the number after `####`.
//! - `humaneval`: `task_id` / `prompt` / `test` / `entry_point`; the model is asked to complete
//!   the function and the `code` scorer runs `check(entry_point)`.
//!
//! A `.gz` file is decompressed while reading (HumanEval ships as `HumanEval.jsonl.gz`).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use fungible_types::{ContentPart, Message, Role};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Item {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}: the dataset has no items")]
    Empty(String),
    #[error("unknown dataset format {0:?} (expected chat, gsm8k or humaneval)")]
    UnknownFormat(String),
}

/// How the lines of a dataset file are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    Chat,
    Gsm8k,
    HumanEval,
}

impl DatasetFormat {
    pub fn parse(s: &str) -> Result<DatasetFormat, DatasetError> {
        match s.to_ascii_lowercase().as_str() {
            "chat" => Ok(DatasetFormat::Chat),
            "gsm8k" => Ok(DatasetFormat::Gsm8k),
            "humaneval" | "human-eval" | "human_eval" => Ok(DatasetFormat::HumanEval),
            _ => Err(DatasetError::UnknownFormat(s.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetFormat::Chat => "chat",
            DatasetFormat::Gsm8k => "gsm8k",
            DatasetFormat::HumanEval => "humaneval",
        }
    }

    /// The format a first item's fields say it is in.
    fn detect(first: &Map<String, Value>) -> DatasetFormat {
        if first.contains_key("task_id")
            && first.contains_key("entry_point")
            && first.contains_key("test")
        {
            DatasetFormat::HumanEval
        } else if first.contains_key("question")
            && first.contains_key("answer")
            && !first.contains_key("messages")
        {
            DatasetFormat::Gsm8k
        } else {
            DatasetFormat::Chat
        }
    }
}

/// Python code an answer is checked with (the `code` scorer).
#[derive(Debug, Clone, PartialEq)]
pub struct CodeTests {
    /// Test code appended after the answer's code (HumanEval: defines `check(candidate)`).
    pub tests: String,
    /// The function under test; when set, `check(entry_point)` is called after the tests.
    pub entry_point: Option<String>,
    /// Code the answer completes (HumanEval's prompt: signature and docstring). Put before
    /// the answer's code, so an answer that is only the body, or the whole function, works.
    pub prefix: Option<String>,
}

/// One dataset item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub messages: Vec<Message>,
    pub reference: Option<String>,
    pub schema: Option<Value>,
    pub code: Option<CodeTests>,
    pub metadata: Map<String, Value>,
}

impl Item {
    /// The last user message's text, for the report's per-item table.
    pub fn input_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .or(self.messages.last())
            .map(Message::joined_text)
            .unwrap_or_default()
    }
}

/// A dataset read into memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it came from: a path, or `traces:<filter>`.
    pub source: String,
    /// Its display name (the file name without extensions).
    pub name: String,
    /// SHA-256 of the file's bytes (of the items' JSON for traces): a resumed run checks it.
    pub sha256: Option<String>,
    pub format: DatasetFormat,
    pub items: Vec<Item>,
}

impl Dataset {
    /// Reads a JSONL (or `.jsonl.gz`) file; `format` `None` detects it from the first item.
    pub fn read(path: &Path, format: Option<DatasetFormat>) -> Result<Dataset, DatasetError> {
        let shown = path.display().to_string();
        let io = |source| DatasetError::Io {
            path: shown.clone(),
            source,
        };
        let raw = std::fs::read(path).map_err(io)?;
        let sha256 = hex(&Sha256::digest(&raw));
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut out = String::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_string(&mut out)
                .map_err(io)?;
            out
        } else {
            String::from_utf8(raw)
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?
        };
        let mut name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.clone());
        for ext in [".gz", ".jsonl", ".json"] {
            if let Some(stripped) = name.strip_suffix(ext) {
                name = stripped.to_owned();
            }
        }
        let mut dataset = Dataset::parse(&text, &shown, format)?;
        dataset.name = name;
        dataset.sha256 = Some(sha256);
        Ok(dataset)
    }

    /// Parses JSONL text (blank lines and lines starting with `//` are skipped).
    pub fn parse(
        text: &str,
        source: &str,
        format: Option<DatasetFormat>,
    ) -> Result<Dataset, DatasetError> {
        let mut items = Vec::new();
        let mut format = format;
        let mut seen = std::collections::HashSet::new();
        for (i, line) in BufReader::new(text.as_bytes()).lines().enumerate() {
            let line_no = i + 1;
            let err = |message: String| DatasetError::Item {
                path: source.to_owned(),
                line: line_no,
                message,
            };
            let line = line.map_err(|e| err(e.to_string()))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
            let Value::Object(obj) = value else {
                return Err(err("an item must be a JSON object".into()));
            };
            let f = *format.get_or_insert_with(|| DatasetFormat::detect(&obj));
            let item = match f {
                DatasetFormat::Chat => chat_item(obj, line_no),
                DatasetFormat::Gsm8k => gsm8k_item(obj, line_no),
                DatasetFormat::HumanEval => humaneval_item(obj, line_no),
            }
            .map_err(err)?;
            if !seen.insert(item.id.clone()) {
                return Err(err(format!("duplicate id {:?}", item.id)));
            }
            items.push(item);
        }
        if items.is_empty() {
            return Err(DatasetError::Empty(source.to_owned()));
        }
        Ok(Dataset {
            source: source.to_owned(),
            name: source.to_owned(),
            sha256: None,
            format: format.unwrap_or(DatasetFormat::Chat),
            items,
        })
    }

    /// Keeps the first `n` items.
    pub fn truncate(&mut self, n: usize) {
        self.items.truncate(n);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// The `reference`: a string, or a number or boolean written bare (`"reference": 42` is
/// common in hand-written files), kept as its JSON text.
fn take_reference(obj: &mut Map<String, Value>) -> Result<Option<String>, String> {
    match obj.get("reference") {
        Some(v @ (Value::Number(_) | Value::Bool(_))) => {
            let text = v.to_string();
            obj.remove("reference");
            Ok(Some(text))
        }
        _ => take_string(obj, "reference"),
    }
}

fn item_id(obj: &mut Map<String, Value>, key: &str, line: usize) -> Result<String, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(line.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!("{key} must be a non-empty string or a number")),
    }
}

fn parse_role(role: &str) -> Result<Role, String> {
    match role {
        "system" => Ok(Role::System),
        "developer" => Ok(Role::Developer),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(format!(
            "messages: unknown role {other:?} (expected system, developer, user or assistant)"
        )),
    }
}

fn parse_message(i: usize, value: Value) -> Result<Message, String> {
    let Value::Object(mut m) = value else {
        return Err(format!("messages[{i}] must be an object"));
    };
    let role = match m.remove("role") {
        Some(Value::String(r)) => parse_role(&r).map_err(|e| format!("messages[{i}].role: {e}"))?,
        _ => return Err(format!("messages[{i}].role is required")),
    };
    let text = match m.remove("content") {
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match part.get("text").and_then(Value::as_str) {
                    Some(t) => text.push_str(t),
                    None => {
                        return Err(format!(
                            "messages[{i}].content[{j}]: only text parts are supported"
                        ));
                    }
                }
            }
            text
        }
        _ => {
            return Err(format!(
                "messages[{i}].content must be a string or an array of text parts"
            ));
        }
    };
    Ok(Message::new(role, vec![ContentPart::Text { text }]))
}

fn chat_item(mut obj: Map<String, Value>, line: usize) -> Result<Item, String> {
    let id = item_id(&mut obj, "id", line)?;
    let system = take_string(&mut obj, "system")?;
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(Message::text(Role::System, system));
    }
    match (obj.remove("messages"), take_string(&mut obj, "prompt")?) {
        (Some(Value::Array(list)), None) => {
            for (i, m) in list.into_iter().enumerate() {
                messages.push(parse_message(i, m)?);
            }
        }
        (Some(_), None) => return Err("messages must be an array".into()),
        (None, Some(prompt)) => messages.push(Message::text(Role::User, prompt)),
        (Some(_), Some(_)) => return Err("give messages or prompt, not both".into()),
        (None, None) => return Err("an item needs messages or prompt".into()),
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err("messages has no user message".into());
    }
    let reference = take_reference(&mut obj)?;
    let schema = match obj.remove("schema") {
        None | Some(Value::Null) => None,
        Some(s @ (Value::Object(_) | Value::Bool(_))) => {
            jsonschema::validator_for(&s)
                .map_err(|e| format!("schema is not a valid JSON schema: {e}"))?;
            Some(s)
        }
        Some(_) => return Err("schema must be a JSON schema object".into()),
    };
    let tests = take_string(&mut obj, "tests")?;
    let entry_point = take_string(&mut obj, "entry_point")?;
    let code = match (tests, entry_point) {
        (Some(tests), entry_point) => Some(CodeTests {
            tests,
            entry_point,
            prefix: None,
        }),
        (None, Some(_)) => return Err("entry_point needs tests".into()),
        (None, None) => None,
    };
    let metadata = match obj.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("metadata must be an object".into()),
    };
    if let Some(unknown) = obj.keys().next() {
        return Err(format!(
            "unknown field {unknown:?} (expected id, messages, prompt, system, reference, schema, tests, entry_point, metadata)"
        ));
    }
    Ok(Item {
        id,
        messages,
        reference,
        schema,
        code,
        metadata,
    })
}

/// The instruction put before a GSM8K question: the numeric scorer reads the last number.
pub const GSM8K_INSTRUCTION: &str = "Solve the following math problem step by step. End with a line of the form \"The answer is N\", where N is a number.";

fn gsm8k_item(mut obj: Map<String, Value>, line: usize) -> Result<Item, String> {
    let id = item_id(&mut obj, "id", line)?;
    let question = take_string(&mut obj, "question")?.ok_or("question is required")?;
    let answer = take_string(&mut obj, "answer")?.ok_or("answer is required")?;
    let reference = match answer.rsplit_once("####") {
        Some((_, n)) => n.trim().replace(',', ""),
        None => return Err("answer has no \"#### N\" final answer".into()),
    };
    let mut metadata = Map::new();
    metadata.insert("solution".into(), Value::String(answer));
    metadata.extend(obj);
    Ok(Item {
        id,
        messages: vec![Message::text(
            Role::User,
            format!("{GSM8K_INSTRUCTION}\n\n{question}"),
        )],
        reference: Some(reference),
        schema: None,
        code: None,
        metadata,
    })
}

/// The instruction put before a HumanEval prompt.
pub const HUMANEVAL_INSTRUCTION: &str = "Complete the following Python function. Reply with the complete function in one ```python code block.";

fn humaneval_item(mut obj: Map<String, Value>, _line: usize) -> Result<Item, String> {
    let id = take_string(&mut obj, "task_id")?.ok_or("task_id is required")?;
    let prompt = take_string(&mut obj, "prompt")?.ok_or("prompt is required")?;
    let test = take_string(&mut obj, "test")?.ok_or("test is required")?;
    let entry_point = take_string(&mut obj, "entry_point")?.ok_or("entry_point is required")?;
    let reference = take_string(&mut obj, "canonical_solution")?;
    Ok(Item {
        id,
        messages: vec![Message::text(
            Role::User,
            format!("{HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt}```"),
        )],
        reference: reference.map(|body| format!("{prompt}{body}")),
        schema: None,
        code: Some(CodeTests {
            tests: test,
            entry_point: Some(entry_point),
            prefix: Some(prompt),
        }),
        metadata: obj,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_items_take_messages_or_a_prompt_and_default_ids_to_line_numbers() {
        let text = r#"{"prompt": "2+2?", "reference": 4}

{"id": "b", "system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "metadata": {"k": 1}}
"#;
        let d = Dataset::parse(text, "t", None).unwrap();
        assert_eq!(d.format, DatasetFormat::Chat);
        assert_eq!(d.items[0].id, "1");
        assert_eq!(d.items[0].reference.as_deref(), Some("4"));
        assert_eq!(d.items[1].id, "b");
        assert_eq!(d.items[1].messages.len(), 2);
        assert_eq!(d.items[1].input_text(), "hi");
        assert_eq!(d.items[1].metadata["k"], 1);
    }

    #[test]
    fn bad_items_name_their_line_and_field() {
        let cases = [
            (
                "{\"prompt\": \"a\"}\n{\"prompt\": 1, \"x\": 2}",
                "t:2: prompt must be a string",
            ),
            (
                "{\"prompt\": \"a\", \"colour\": 1}",
                "t:1: unknown field \"colour\"",
            ),
            (
                "{\"messages\": [{\"role\": \"robot\", \"content\": \"a\"}]}",
                "t:1: messages[0].role: messages: unknown role \"robot\"",
            ),
            (
                "{\"id\": \"x\", \"prompt\": \"a\"}\n{\"id\": \"x\", \"prompt\": \"b\"}",
                "t:2: duplicate id \"x\"",
            ),
            (
                "{\"prompt\": \"a\", \"schema\": {\"type\": 12}}",
                "t:1: schema is not a valid JSON schema",
            ),
            ("not json", "t:1: not JSON"),
            ("", "t: the dataset has no items"),
        ];
        for (text, want) in cases {
            let e = Dataset::parse(text, "t", None).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn gsm8k_lines_are_detected_and_the_reference_is_the_number_after_the_marker() {
        let text = r#"{"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}"#;
        let d = Dataset::parse(text, "t", None).unwrap();
        assert_eq!(d.format, DatasetFormat::Gsm8k);
        assert_eq!(d.items[0].reference.as_deref(), Some("1007"));
        assert!(d.items[0].input_text().ends_with("How many?"));
    }

    #[test]
    fn humaneval_lines_become_code_items() {
        let text = r#"{"task_id": "HumanEval/0", "prompt": "def f(x):\n    \"\"\"doc\"\"\"\n", "canonical_solution": "    return x\n", "test": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f"}"#;
        let d = Dataset::parse(text, "t", None).unwrap();
        assert_eq!(d.format, DatasetFormat::HumanEval);
        let item = &d.items[0];
        assert_eq!(item.id, "HumanEval/0");
        let code = item.code.as_ref().unwrap();
        assert_eq!(code.entry_point.as_deref(), Some("f"));
        assert!(code.prefix.as_deref().unwrap().starts_with("def f(x):"));
    }

    #[test]
    fn gzipped_files_are_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("HumanEval.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"prompt\": \"hello\"}\n").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let d = Dataset::read(&path, None).unwrap();
        assert_eq!(d.name, "HumanEval");
        assert_eq!(d.items.len(), 1);
        assert_eq!(d.sha256.as_deref().map(str::len), Some(64));
    }
}
