//! The chat template from the GGUF metadata (`tokenizer.chat_template`), rendered with
//! minijinja. llama.cpp's own `llama_chat_apply_template` pattern-matches known templates
//! and silently drops parts of them (SmolLM2's default system prompt), so the template is
//! rendered as written, the way `transformers` does.

use fungible_types::{ChatRequest, Message, Role};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

use crate::tools;

#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template renders `tools` and `<tool_call>`s itself (Hermes / Qwen style).
    native_tools: bool,
}

#[derive(Serialize)]
struct TemplateMessage {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// A ChatML template for models whose GGUF has none.
const FALLBACK: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

impl ChatTemplate {
    pub fn new(source: Option<String>, bos_token: String, eos_token: String) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |_format: String| -> String { String::new() });
        env.set_trim_blocks(false);
        let source = source.unwrap_or_else(|| FALLBACK.to_owned());
        let native_tools = source.contains("tools") && source.contains(tools::OPEN);
        env.add_template_owned("chat", source).map_err(|e| format!("invalid chat template in the GGUF: {e}"))?;
        Ok(ChatTemplate { env, bos_token, eos_token, native_tools })
    }

    /// The prompt text for `req`, ending with the assistant's turn opening.
    ///
    /// Tools (unless `tool_choice` is none) go through the template when it renders them,
    /// else into a system-prompt description; earlier calls and tool results are rendered
    /// the template's way, else in the same Hermes convention (`<tool_call>` in the assistant
    /// turn, `<tool_response>` in a user turn).
    pub fn render(&self, req: &ChatRequest) -> Result<String, String> {
        self.render_messages(req, &req.messages, true)
    }

    /// What training on `answer` (the next assistant turn of `req`) needs: the prompt the
    /// server sends for `req` ([`ChatTemplate::render`]) and the text the template puts after
    /// it when the conversation goes on with `answer`. Errors when the template does not
    /// render the prompt as the start of the conversation with the answer (then no loss mask
    /// can be exact).
    pub fn render_answer(&self, req: &ChatRequest, answer: &Message) -> Result<(String, String), String> {
        let prompt = self.render(req)?;
        let mut messages = req.messages.clone();
        messages.push(answer.clone());
        let full = self.render_messages(req, &messages, false)?;
        match full.strip_prefix(&prompt) {
            Some(rest) => Ok((prompt, rest.to_owned())),
            None => Err(
                "the model's chat template does not render the prompt as the start of the conversation with its answer, so the answer's tokens cannot be told apart".to_owned(),
            ),
        }
    }

    /// `messages` (with `req`'s tools) through the template.
    fn render_messages(&self, req: &ChatRequest, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let native = self.native_tools;
        let mut messages: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| {
                let mut content = m.joined_text();
                let mut tool_calls = None;
                let mut role = match m.role {
                    Role::System | Role::Developer => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                };
                if !m.tool_calls.is_empty() {
                    if native {
                        tool_calls = Some(
                            m.tool_calls
                                .iter()
                                .map(|c| {
                                    let arguments = serde_json::from_str::<Value>(&c.arguments)
                                        .unwrap_or_else(|_| Value::String(c.arguments.clone()));
                                    serde_json::json!({
                                        "id": c.id,
                                        "type": "function",
                                        "function": {"name": c.name, "arguments": arguments}
                                    })
                                })
                                .collect(),
                        );
                    } else {
                        for call in &m.tool_calls {
                            if !content.is_empty() {
                                content.push('\n');
                            }
                            content.push_str(&tools::call_text(&call.name, &call.arguments));
                        }
                    }
                }
                if m.role == Role::Tool && !native {
                    role = "user";
                    content = format!("<tool_response>\n{content}\n</tool_response>");
                }
                TemplateMessage {
                    role,
                    content,
                    tool_calls,
                    tool_call_id: m.tool_call_id.clone(),
                    name: if m.role == Role::Tool { m.name.clone() } else { None },
                }
            })
            .collect();
        let with_tools = tools::mode(req) != tools::Mode::Off;
        let tool_list: Option<Vec<Value>> =
            (with_tools && native).then(|| req.tools.iter().map(tools::tool_json).collect());
        if with_tools && !native {
            let description = tools::system_prompt(&req.tools);
            match messages.first_mut() {
                Some(first) if first.role == "system" => {
                    first.content = format!("{}\n\n{description}", first.content);
                }
                _ => messages.insert(
                    0,
                    TemplateMessage {
                        role: "system",
                        content: description,
                        tool_calls: None,
                        tool_call_id: None,
                        name: None,
                    },
                ),
            }
        }
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                tools => tool_list,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| format!("the model's chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest { messages, ..ChatRequest::default() }
    }

    #[test]
    fn default_system_prompt_is_kept_when_the_client_sends_none() {
        let t = ChatTemplate::new(Some(SMOLLM2.into()), "<|im_start|>".into(), "<|im_end|>".into()).unwrap();
        let text = t.render(&request(vec![Message::text(Role::User, "Hi")])).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn client_system_prompt_replaces_the_default() {
        let t = ChatTemplate::new(Some(SMOLLM2.into()), String::new(), String::new()).unwrap();
        let text = t
            .render(&request(vec![Message::text(Role::Developer, "Be brief."), Message::text(Role::User, "Hi")]))
            .unwrap();
        assert!(text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"), "{text}");
        assert!(!text.contains("SmolLM"), "{text}");
    }

    fn tool_turns() -> ChatRequest {
        let mut call = Message::text(Role::Assistant, "");
        call.content.clear();
        call.tool_calls = vec![fungible_types::ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: "{\"city\": \"Paris\"}".into(),
        }];
        let mut result = Message::text(Role::Tool, "22 C");
        result.tool_call_id = Some("call_1".into());
        let mut req = request(vec![Message::text(Role::User, "Weather?"), call, result]);
        req.tools = vec![fungible_types::Tool::new(
            "get_weather",
            Some("Weather in a city.".into()),
            serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        )];
        req
    }

    #[test]
    fn tools_without_template_support_become_a_hermes_system_prompt() {
        let t = ChatTemplate::new(Some(SMOLLM2.into()), String::new(), String::new()).unwrap();
        let text = t.render(&tool_turns()).unwrap();
        assert!(text.starts_with("<|im_start|>system\nYou are a function calling AI model."), "{text}");
        assert!(text.contains("<tools>\n{"), "{text}");
        assert!(text.contains("\"name\":\"get_weather\""), "{text}");
        assert!(text.contains("\"description\":\"Weather in a city.\""), "{text}");
        assert!(
            text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>"),
            "{text}"
        );
        assert!(text.contains("<|im_start|>user\n<tool_response>\n22 C\n</tool_response><|im_end|>"), "{text}");
        assert!(!text.contains("SmolLM"), "{text}");

        // tool_choice none: no tool description, the history is still rendered.
        let mut req = tool_turns();
        req.tool_choice = Some(fungible_types::ToolChoice::None);
        let text = t.render(&req).unwrap();
        assert!(!text.contains("<tools>"), "{text}");
        assert!(text.contains("<tool_response>"), "{text}");
    }

    #[test]
    fn a_template_with_tools_renders_them_itself() {
        let src = "{% if tools %}[TOOLS]{% for t in tools %}{{ t.function.name }};{% endfor %}<tool_call>{% endif %}\
                   {% for m in messages %}<{{ m.role }}>{{ m.content }}\
                   {% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}{% endif %}\
                   {% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(Some(src.into()), String::new(), String::new()).unwrap();
        assert_eq!(
            t.render(&tool_turns()).unwrap(),
            "[TOOLS]get_weather;<tool_call><user>Weather?<assistant>get_weather(Paris)<tool>22 C#call_1"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('bad order') }}{% endif %}{{ messages[0]['content'].strip() }}";
        let t = ChatTemplate::new(Some(src.into()), String::new(), String::new()).unwrap();
        assert_eq!(t.render(&request(vec![Message::text(Role::User, "  x  ")])).unwrap(), "x");
        let err = t.render(&request(vec![Message::text(Role::Assistant, "x")])).unwrap_err();
        assert!(err.contains("bad order"), "{err}");
    }
}
