//! Tool calls on local models, in the Hermes / Qwen convention: the model answers a call as
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
//!
//! - The tools reach the model through the GGUF chat template when it renders them itself
//!   (it uses `tools` and `<tool_call>`), else as a system-prompt description
//!   ([`system_prompt`]); see `template.rs`.
//! - [`grammar`] builds a GBNF grammar from the tools' JSON schemas (llama.cpp's own
//!   `json_schema_to_grammar`): a forced call for `tool_choice` required or a named function
//!   (the answer always parses and its arguments match the schema), a lazy one that only
//!   applies once the model writes `<tool_call>` for `auto`.
//! - [`ToolCallParser`] splits generated text into text and calls as it streams, holding back
//!   text that may be the start of a tag, so streaming and non-streaming answers agree.

use fungible_types::{ChatRequest, Tool, ToolChoice};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// How the tools of a request constrain generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No tools, or `tool_choice: none`: plain text.
    Off,
    /// The model may call a tool.
    Auto,
    /// The model must call a tool (`required`, or a named function).
    Forced,
}

pub fn mode(req: &ChatRequest) -> Mode {
    if req.tools.is_empty() {
        return Mode::Off;
    }
    match &req.tool_choice {
        Some(ToolChoice::None) => Mode::Off,
        None | Some(ToolChoice::Auto) => Mode::Auto,
        Some(ToolChoice::Required | ToolChoice::Tool(_)) => Mode::Forced,
    }
}

/// A tool's parameter schema; a missing or empty one means "an object".
fn parameters(tool: &Tool) -> Value {
    match &tool.parameters {
        Value::Object(map) if !map.is_empty() => tool.parameters.clone(),
        _ => json!({"type": "object"}),
    }
}

/// The grammar for this request's tool calls and its root rule name; `None` when the tools
/// do not constrain decoding.
pub fn grammar(req: &ChatRequest) -> Result<Option<String>, String> {
    let mode = mode(req);
    if mode == Mode::Off {
        return Ok(None);
    }
    for (i, tool) in req.tools.iter().enumerate() {
        if tool.name.is_empty() {
            return Err(format!("tools[{i}].function.name must not be empty"));
        }
        if !tool.parameters.is_null() && !tool.parameters.is_object() {
            return Err(format!("tools[{i}].function.parameters must be a JSON Schema object"));
        }
    }
    let allowed: Vec<&Tool> = match &req.tool_choice {
        Some(ToolChoice::Tool(name)) => {
            let tool = req.tools.iter().find(|t| &t.name == name).ok_or_else(|| {
                format!("tool_choice names the function {name:?}, which is not in tools")
            })?;
            vec![tool]
        }
        _ => req.tools.iter().collect(),
    };
    let calls: Vec<Value> = allowed
        .iter()
        .map(|tool| {
            json!({
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": parameters(tool)},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    let schema = match <[Value; 1]>::try_from(calls) {
        Ok([one]) => one,
        Err(calls) => json!({"anyOf": calls}),
    };
    let json = llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| format!("tools: the function parameters cannot be turned into a grammar: {e}"))?;
    // The converter's `root` is one call object; wrap it in the tags under a new root.
    Ok(Some(format!("{json}\n{ROOT} ::= \"<tool_call>\\n\" root \"\\n</tool_call>\"\n")))
}

/// The root rule of the grammar [`grammar`] returns.
pub const ROOT: &str = "tool-call-root";

/// The tool description for templates that do not render tools themselves (Hermes format).
pub fn system_prompt(tools: &[Tool]) -> String {
    let mut out = String::from(
        "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML tags. \
         You may call one or more functions to assist with the user query. Don't make assumptions about what values to \
         plug into functions. Here are the available tools:\n<tools>\n",
    );
    for tool in tools {
        out.push_str(&tool_json(tool).to_string());
        out.push('\n');
    }
    out.push_str(
        "</tools>\nFor each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// A tool as chat templates expect it (OpenAI's shape).
pub fn tool_json(tool: &Tool) -> Value {
    let mut function = json!({"name": tool.name, "parameters": parameters(tool)});
    if let Some(description) = &tool.description {
        function["description"] = Value::String(description.clone());
    }
    json!({"type": "function", "function": function})
}

/// A call as the model writes it, for rendering earlier turns back.
pub fn call_text(name: &str, arguments: &str) -> String {
    let name = Value::String(name.to_owned());
    // The arguments as the model wrote them; text that is not JSON goes in as a string.
    let arguments = match serde_json::from_str::<Value>(arguments) {
        Ok(_) => arguments.trim().to_owned(),
        Err(_) => Value::String(arguments.to_owned()).to_string(),
    };
    format!("{OPEN}\n{{\"name\": {name}, \"arguments\": {arguments}}}\n{CLOSE}")
}

/// What the parser finds in the generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// A call: the function name and its arguments as the raw JSON text the model wrote.
    Call { name: String, arguments: String },
}

/// Splits streamed text into text and tool calls.
#[derive(Debug, Default)]
pub struct ToolCallParser {
    buf: String,
    in_call: bool,
    calls: usize,
}

#[derive(Deserialize)]
struct CallJson<'a> {
    name: String,
    #[serde(borrow, alias = "parameters")]
    arguments: Option<&'a RawValue>,
}

fn parse_call(body: &str) -> Option<Piece> {
    let call: CallJson<'_> = serde_json::from_str(body.trim()).ok()?;
    let arguments = match call.arguments {
        None => "{}".to_owned(),
        // Some models write the arguments as a JSON string holding the object.
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(inner)) if serde_json::from_str::<Value>(&inner).is_ok_and(|v| v.is_object()) => inner,
            Ok(Value::Object(_)) => raw.get().to_owned(),
            _ => return None,
        },
    };
    (!call.name.is_empty()).then_some(Piece::Call { name: call.name, arguments })
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_tag(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1)).rev().find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&tag[..n])).unwrap_or(0)
}

impl ToolCallParser {
    pub fn new() -> ToolCallParser {
        ToolCallParser::default()
    }

    /// Whether a call was found so far.
    pub fn has_calls(&self) -> bool {
        self.calls > 0
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.buf.find(CLOSE) else { break };
                let body = self.buf[..end].to_owned();
                self.buf.drain(..end + CLOSE.len());
                self.in_call = false;
                match parse_call(&body) {
                    Some(call) => {
                        self.calls += 1;
                        out.push(call);
                    }
                    None => out.push(Piece::Text(format!("{OPEN}{body}{CLOSE}"))),
                }
            } else if let Some(start) = self.buf.find(OPEN) {
                let before = self.buf[..start].trim_end().to_owned();
                if !before.is_empty() {
                    out.push(Piece::Text(before));
                }
                self.buf.drain(..start + OPEN.len());
                self.in_call = true;
            } else {
                // Hold back a possible start of the tag and trailing whitespace (dropped when
                // a call follows).
                let keep = partial_tag(&self.buf, OPEN);
                let ready = self.buf[..self.buf.len() - keep].trim_end().len();
                if ready > 0 {
                    out.push(Piece::Text(self.buf[..ready].to_owned()));
                    self.buf.drain(..ready);
                }
                break;
            }
        }
        out
    }

    /// The rest at the end of generation: an unclosed call that parses counts (models often
    /// stop right after the JSON), anything else is text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        if self.in_call {
            self.in_call = false;
            if let Some(call) = parse_call(&rest) {
                self.calls += 1;
                return vec![call];
            }
            return vec![Piece::Text(format!("{OPEN}{rest}"))];
        }
        if rest.is_empty() || (self.calls > 0 && rest.trim().is_empty()) {
            return Vec::new();
        }
        vec![Piece::Text(rest)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> Vec<Piece> {
        let mut parser = ToolCallParser::new();
        let mut out: Vec<Piece> = chunks.iter().flat_map(|c| parser.push(c)).collect();
        out.extend(parser.finish());
        // Merge adjacent text, as a client would.
        let mut merged: Vec<Piece> = Vec::new();
        for piece in out {
            match (merged.last_mut(), piece) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, piece) => merged.push(piece),
            }
        }
        merged
    }

    #[test]
    fn a_call_split_across_chunks_parses_and_keeps_raw_arguments() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\",  \"unit\": \"celsius\"}}\n</tool_call>";
        for size in [1, 2, 3, 7, 100] {
            let chunks: Vec<String> =
                text.chars().collect::<Vec<_>>().chunks(size).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            assert_eq!(
                run(&refs),
                vec![Piece::Call {
                    name: "get_weather".into(),
                    arguments: "{\"city\": \"Paris\",  \"unit\": \"celsius\"}".into()
                }],
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn text_around_calls_and_lookalikes_stay_text() {
        assert_eq!(
            run(&["Let me check.\n", "<tool", "_call>{\"name\":\"a\",\"arguments\":{}}</tool_call>\n"]),
            vec![Piece::Text("Let me check.".into()), Piece::Call { name: "a".into(), arguments: "{}".into() }]
        );
        assert_eq!(run(&["a <tool", " b  "]), vec![Piece::Text("a <tool b  ".into())]);
        assert_eq!(run(&["<tool_call>not json</tool_call>"]), vec![Piece::Text("<tool_call>not json</tool_call>".into())]);
        // Unclosed but complete JSON counts; unclosed garbage is text.
        assert_eq!(
            run(&["<tool_call>\n{\"name\": \"a\", \"arguments\": \"{\\\"x\\\": 1}\"}"]),
            vec![Piece::Call { name: "a".into(), arguments: "{\"x\": 1}".into() }]
        );
        assert_eq!(run(&["<tool_call>{\"name\""]), vec![Piece::Text("<tool_call>{\"name\"".into())]);
        assert_eq!(run(&["héllo wörld"]), vec![Piece::Text("héllo wörld".into())]);
    }

    #[test]
    fn grammar_wraps_the_schema_and_rejects_unknown_tool_choice() {
        let mut req = ChatRequest {
            tools: vec![Tool::new("f", None, json!({"type": "object", "properties": {"x": {"type": "integer"}}}))],
            tool_choice: Some(ToolChoice::Required),
            ..ChatRequest::default()
        };
        let g = grammar(&req).unwrap().unwrap();
        assert!(g.contains(&format!("{ROOT} ::= \"<tool_call>\\n\" root")), "{g}");
        req.tool_choice = Some(ToolChoice::Tool("g".into()));
        assert!(grammar(&req).unwrap_err().contains("\"g\", which is not in tools"));
        req.tool_choice = Some(ToolChoice::None);
        assert_eq!(grammar(&req).unwrap(), None);
    }
}
