//! `[models.NAME] guardrails`: the input checks a request to a route passes before anything
//! else happens to it (admission, the cache, routing): deny patterns and words over the
//! text of its messages, allow patterns and words one of which its user text must match,
//! and a most of estimated input tokens. A request that fails one is
//! refused with an error naming the rule, or, with `action = "flag"`, sent on and recorded
//! with the rule.

use fungible_types::{ChatRequest, Role};

use super::config::{GuardAction, GuardrailsConfig};
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
    /// The verdict of the guardrails of every route `req` may reach: the one it names and
    /// each of its per-request fallbacks (`models` / `fallbacks`), since any of them may get
    /// its text. A refusal by any wins; else the first flag. `PROVIDER/MODEL` legs and routes
    /// without guardrails pass; malformed fallbacks are left to routing, which refuses them.
    pub fn check_input(&self, req: &ChatRequest) -> Verdict {
        let Ok((req, fallbacks)) = super::split_fallbacks(req) else { return Verdict::Pass };
        let names = std::iter::once(req.model.as_str()).chain(fallbacks.iter().map(|(_, name)| name.as_str()));
        let mut flagged = None;
        for name in names {
            let Some((config, _)) = self.inner.routing.configured.get(name) else { continue };
            let Some(guard) = &config.guardrails else { continue };
            match (broken_rule(name, guard, &req), guard.action) {
                (None, _) => {}
                (Some((rule, _)), GuardAction::Flag) => {
                    flagged.get_or_insert(rule);
                }
                (Some((rule, why)), GuardAction::Block) => return Verdict::Block(format!("refused by the guardrail {rule}: {why}")),
            }
        }
        flagged.map_or(Verdict::Pass, Verdict::Flag)
    }
}

/// The first rule of route `name`'s guardrails that `req` breaks, by its config path, and
/// why.
fn broken_rule(name: &str, guard: &GuardrailsConfig, req: &ChatRequest) -> Option<(String, String)> {
    let at = |rule: &str| format!("models.{name}.guardrails.{rule}");
    guard
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
        })
}
