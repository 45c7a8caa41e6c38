//! The chat template from the GGUF metadata (`tokenizer.chat_template`), rendered with
//! minijinja. llama.cpp's own `llama_chat_apply_template` pattern-matches known templates
//! and silently drops parts of them (SmolLM2's default system prompt), so the template is
//! rendered as written, the way `transformers` does.

use fungible_types::{ChatRequest, Role};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

#[derive(Serialize)]
struct TemplateMessage {
    role: &'static str,
    content: String,
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
        env.add_template_owned("chat", source).map_err(|e| format!("invalid chat template in the GGUF: {e}"))?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// The prompt text for `req`, ending with the assistant's turn opening.
    pub fn render(&self, req: &ChatRequest) -> Result<String, String> {
        let messages: Vec<TemplateMessage> = req
            .messages
            .iter()
            .map(|m| TemplateMessage {
                role: match m.role {
                    Role::System | Role::Developer => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                },
                content: m.joined_text(),
            })
            .collect();
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| format!("the model's chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::Message;

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

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('bad order') }}{% endif %}{{ messages[0]['content'].strip() }}";
        let t = ChatTemplate::new(Some(src.into()), String::new(), String::new()).unwrap();
        assert_eq!(t.render(&request(vec![Message::text(Role::User, "  x  ")])).unwrap(), "x");
        let err = t.render(&request(vec![Message::text(Role::Assistant, "x")])).unwrap_err();
        assert!(err.contains("bad order"), "{err}");
    }
}
