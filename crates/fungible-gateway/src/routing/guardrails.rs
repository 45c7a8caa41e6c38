//! `[models.NAME] guardrails`: the input checks a request to a route passes before anything
//! else happens to it (admission, the cache, routing): deny patterns and words over the
//! text of its messages, allow patterns and words one of which its user text must match,
//! and a most of estimated input tokens. A request that fails one is
//! refused with an error naming the rule, or, with `action = "flag"`, sent on and recorded
//! with the rule.

use fungible_types::{ChatRequest, Role};

use super::config::GuardAction;
use crate::Gateway;

/// What a route's guardrails say of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Send it on; record the rule (`models.NAME.guardrails.deny[0]`).
    Flag(String),
    /// Refuse it: why, naming the rule.
    Block(String),
}

impl Gateway {
    /// The verdict of the guardrails of the route `req` names (none for a route without
    /// them, or a `PROVIDER/MODEL` request).
    pub fn check_input(&self, req: &ChatRequest) -> Verdict {
        let Some((config, _)) = self.inner.routing.configured.get(&req.model) else { return Verdict::Pass };
        let Some(guard) = &config.guardrails else { return Verdict::Pass };
        let at = |rule: &str| format!("models.{}.guardrails.{rule}", req.model);
        let broken = guard
            .max_input_tokens
            .map(|most| (most, fungible_providers::estimate::request_tokens(req)))
            .filter(|(most, tokens)| tokens > most)
            .map(|(most, tokens)| (at("max_input_tokens"), format!("about {tokens} input tokens, over the {most} allowed")))
            .or_else(|| {
                req.messages.iter().find_map(|m| {
                    let text = m.joined_text();
                    guard.rules.iter().find(|(_, regex)| regex.is_match(&text)).map(|(rule, _)| (at(rule), "its text matches a denied pattern".to_owned()))
                })
            })
            .or_else(|| {
                // An allow list: some user message must match one of its patterns.
                let allowed = guard.allow.is_empty()
                    || req.messages.iter().filter(|m| m.role == Role::User).any(|m| {
                        let text = m.joined_text();
                        guard.allow.iter().any(|(_, regex)| regex.is_match(&text))
                    });
                (!allowed).then(|| (at("allow"), "its text matches none of the allowed patterns".to_owned()))
            });
        match (broken, guard.action) {
            (None, _) => Verdict::Pass,
            (Some((rule, _)), GuardAction::Flag) => Verdict::Flag(rule),
            (Some((rule, why)), GuardAction::Block) => Verdict::Block(format!("refused by the guardrail {rule}: {why}")),
        }
    }
}
