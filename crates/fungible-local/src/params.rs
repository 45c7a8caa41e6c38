//! A request's generation parameters (what it sets, else the model's defaults), the grammar
//! of its structured output or tool calls, and the llama.cpp sampler chain they make.

use std::time::{SystemTime, UNIX_EPOCH};

use fungible_types::{ChatRequest, ProviderError, ResponseFormat};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use crate::defaults::{Defaults, PENALTY_WINDOW};
use crate::{invalid, tools};

#[derive(Debug, Clone)]
pub(crate) struct GenParams {
    pub(crate) temperature: f32,
    pub(crate) top_p: f32,
    pub(crate) top_k: i32,
    pub(crate) min_p: f32,
    pub(crate) seed: u32,
    pub(crate) max_tokens: u32,
    pub(crate) stop: Vec<String>,
    pub(crate) stop_loops: bool,
    pub(crate) repeat_penalty: f32,
    pub(crate) frequency_penalty: f32,
    pub(crate) presence_penalty: f32,
    pub(crate) grammar: Option<Grammar>,
}

#[derive(Debug, Clone)]
pub(crate) struct Grammar {
    gbnf: String,
    root: &'static str,
    /// Lazy: the grammar applies only from this text on (`tool_choice: auto`).
    trigger: Option<&'static str>,
    /// For error messages: the request field the grammar came from.
    field: &'static str,
}

/// The request's parameters, each one it leaves out taken from `defaults`.
pub(crate) fn gen_params(req: &ChatRequest, defaults: &Defaults) -> Result<GenParams, ProviderError> {
    let p = &req.params;
    let temperature = p.temperature.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(format!("temperature must be between 0 and 2, got {temperature}")));
    }
    let top_p = p.top_p.unwrap_or(defaults.top_p);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(invalid(format!("top_p must be between 0 and 1, got {top_p}")));
    }
    let number = |name: &str| req.extra_body.get(name).and_then(serde_json::Value::as_f64);
    // Structured output (a JSON schema, tool calls) repeats its syntax by nature: the default
    // penalty is for free text, and only a client's own applies under a grammar.
    let structured = !matches!(req.response_format, None | Some(ResponseFormat::Text)) || tools::mode(req) != tools::Mode::Off;
    let default_penalty = if structured { 1.0 } else { defaults.repetition_penalty };
    let repeat_penalty = number("repetition_penalty").or_else(|| number("repeat_penalty")).unwrap_or(default_penalty);
    if repeat_penalty <= 0.0 {
        return Err(invalid(format!("repetition_penalty must be greater than 0, got {repeat_penalty}")));
    }
    let min_p = number("min_p").unwrap_or(defaults.min_p);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(invalid(format!("min_p must be between 0 and 1, got {min_p}")));
    }
    let seed = match p.seed {
        // Any i64 maps onto llama.cpp's u32 seed; equal seeds stay equal.
        Some(seed) => (seed as u64 ^ ((seed as u64) >> 32)) as u32,
        None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) | 1,
    };
    let json_grammar = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(schema_grammar(&serde_json::json!({"type": "object"}))?),
        Some(ResponseFormat::JsonSchema(format)) => Some(schema_grammar(&format.schema)?),
    };
    let tool_grammar = tools::grammar(req).map_err(invalid)?.map(|gbnf| Grammar {
        gbnf,
        root: tools::ROOT,
        trigger: (tools::mode(req) == tools::Mode::Auto).then_some(tools::OPEN),
        field: "tools",
    });
    let grammar = match (json_grammar, tool_grammar) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "response_format json_object/json_schema together with tools is not supported by local models; \
                 send one of them (or tool_choice \"none\")",
            ));
        }
        (Some(gbnf), None) => Some(Grammar { gbnf, root: "root", trigger: None, field: "response_format" }),
        (None, tools) => tools,
    };
    if p.max_tokens == Some(0) {
        return Err(invalid("max_tokens must be at least 1"));
    }
    Ok(GenParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: p.top_k.unwrap_or(defaults.top_k).min(i32::MAX as u32) as i32,
        min_p: min_p as f32,
        seed,
        max_tokens: p.max_tokens.unwrap_or(defaults.max_tokens),
        stop: p.stop.clone(),
        stop_loops: defaults.stop_loops,
        repeat_penalty: repeat_penalty as f32,
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
        grammar,
    })
}

/// llama.cpp's own JSON-Schema-to-GBNF converter (the one its server uses).
fn schema_grammar(schema: &serde_json::Value) -> Result<String, ProviderError> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| invalid(format!("response_format: the JSON schema cannot be turned into a grammar: {e}")))
}

/// The llama.cpp sampler chain of `p`: grammar, penalties, then greedy or top-k, top-p,
/// min-p, temperature and a seeded draw.
pub(crate) fn sampler(model: &LlamaModel, p: &GenParams) -> Result<LlamaSampler, ProviderError> {
    let mut chain = Vec::new();
    if let Some(grammar) = &p.grammar {
        let sampler = match grammar.trigger {
            None => LlamaSampler::grammar(model, &grammar.gbnf, grammar.root),
            Some(trigger) => LlamaSampler::grammar_lazy(model, &grammar.gbnf, grammar.root, [trigger], &[]),
        };
        chain.push(sampler.map_err(|e| invalid(format!("{}: llama.cpp rejected the grammar: {e}", grammar.field)))?);
    }
    if p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            PENALTY_WINDOW,
            p.repeat_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        ));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

#[cfg(test)]
mod tests {
    use fungible_types::{Message, Role};

    use super::*;

    fn question() -> ChatRequest {
        ChatRequest { messages: vec![Message::text(Role::User, "What is the capital of France?")], ..ChatRequest::default() }
    }

    #[test]
    fn parameters_left_out_take_the_models_defaults_and_the_clients_win() {
        let defaults = Defaults::recommended("smollm2-135m-instruct");
        let p = gen_params(&question(), &defaults).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.max_tokens), (0.2, 0.9, 0, 512));
        assert!((p.repeat_penalty - 1.1).abs() < 1e-6 && p.stop_loops);

        let mut req = question();
        req.params.temperature = Some(0.0);
        req.params.top_p = Some(0.5);
        req.params.top_k = Some(7);
        req.params.max_tokens = Some(2000);
        req.extra_body.insert("repetition_penalty".into(), 1.0.into());
        let p = gen_params(&req, &defaults).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.max_tokens, p.repeat_penalty), (0.0, 0.5, 7, 2000, 1.0));
    }

    #[test]
    fn structured_output_gets_no_default_repetition_penalty() {
        let defaults = Defaults::recommended("smollm2-135m-instruct");
        let mut req = question();
        req.response_format = Some(ResponseFormat::JsonObject);
        assert_eq!(gen_params(&req, &defaults).unwrap().repeat_penalty, 1.0);
        req.extra_body.insert("repetition_penalty".into(), 1.3.into());
        assert!((gen_params(&req, &defaults).unwrap().repeat_penalty - 1.3).abs() < 1e-6);
    }
}
