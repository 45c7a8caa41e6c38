//! LLM-as-judge: a rubric score of one answer (`judge:MODEL[:RUBRIC_FILE]`) and the pairwise
//! comparison of two answers (`pairwise:MODEL`), where the judge model is any model or route
//! the gateway serves. Scores are parsed robustly (`SCORE: 8`, `8/10`, `**Score:** 8`); the
//! pairwise judge is asked both orders and a disagreement is a tie, so position bias cancels.

use std::sync::LazyLock;

use fungible_types::{ChatRequest, Message, Role};
use regex::Regex;

use super::Score;
use crate::backend::ChatBackend;
use crate::dataset::Item;

pub const DEFAULT_RUBRIC: &str = "Judge whether the answer correctly and completely answers the question. \
If a reference answer is given, an answer that agrees with it is correct even if worded differently. \
Penalise wrong facts, wrong final answers, and ignored instructions; do not reward length.";

/// A score of 7 or more out of 10 passes.
pub const PASS_SCORE: f64 = 7.0;

pub fn judge_prompt(rubric: Option<&str>, item: &Item, answer: &str) -> String {
    let mut p = format!(
        "You are grading an answer.\n\nRubric:\n{}\n\n[Question]\n{}\n",
        rubric.unwrap_or(DEFAULT_RUBRIC).trim(),
        item.input_text().trim()
    );
    if let Some(r) = &item.reference {
        p.push_str(&format!("\n[Reference answer]\n{}\n", r.trim()));
    }
    p.push_str(&format!(
        "\n[Answer]\n{}\n\nExplain your judgement in one or two sentences, then end with a line of the form \"SCORE: N\" where N is an integer from 1 (worst) to 10 (best).",
        answer.trim()
    ));
    p
}

#[allow(clippy::unwrap_used)] // a constant pattern
static SCORE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)score\W{0,4}(\d+(?:\.\d+)?)(?:\s*/\s*10)?|(\d+(?:\.\d+)?)\s*/\s*10\b|(?:rating|grade)\W{0,4}(\d+(?:\.\d+)?)").unwrap()
});

/// The 1-10 score in a judge's reply (the last one stated); `None` when there is none.
pub fn parse_judge_score(reply: &str) -> Option<f64> {
    let caps = SCORE
        .captures_iter(reply)
        .filter_map(|c| {
            (1..=3)
                .find_map(|i| c.get(i))
                .and_then(|m| m.as_str().parse::<f64>().ok())
        })
        .filter(|n| (1.0..=10.0).contains(n))
        .last();
    caps.or_else(|| {
        // A reply that is only a number.
        reply
            .trim()
            .trim_end_matches('.')
            .parse::<f64>()
            .ok()
            .filter(|n| (1.0..=10.0).contains(n))
    })
}

fn judge_request(model: &str, prompt: String, max_tokens: u32) -> ChatRequest {
    let mut req = ChatRequest {
        model: model.to_owned(),
        messages: vec![Message::text(Role::User, prompt)],
        ..ChatRequest::default()
    };
    req.params.temperature = Some(0.0);
    req.params.max_tokens = Some(max_tokens);
    req
}

pub async fn score(
    backend: &dyn ChatBackend,
    model: &str,
    rubric: Option<&str>,
    item: &Item,
    answer: &str,
    max_tokens: u32,
) -> Result<Score, String> {
    let reply = backend
        .chat(judge_request(
            model,
            judge_prompt(rubric, item, answer),
            max_tokens,
        ))
        .await
        .map_err(|e| format!("judge {model}: {e}"))?;
    let n = parse_judge_score(&reply.text)
        .ok_or_else(|| format!("judge {model} gave no score: {:?}", short(&reply.text)))?;
    Ok(Score {
        value: (n - 1.0) / 9.0,
        passed: n >= PASS_SCORE,
        detail: format!("{n}/10: {}", short(&reason(&reply.text))),
        cost_usd: reply.cost_usd.unwrap_or(0.0),
    })
}

/// Which answer a pairwise judge preferred, in the order it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairwiseVerdict {
    First,
    Second,
    Tie,
}

pub fn pairwise_prompt(item: &Item, first: &str, second: &str) -> String {
    let mut p = format!(
        "Compare two answers to the same question.\n\n[Question]\n{}\n",
        item.input_text().trim()
    );
    if let Some(r) = &item.reference {
        p.push_str(&format!("\n[Reference answer]\n{}\n", r.trim()));
    }
    p.push_str(&format!(
        "\n[Answer 1]\n{}\n\n[Answer 2]\n{}\n\nWhich answer is better (correct, complete, follows the instructions; length is not a merit)? \
Explain in one or two sentences, then end with a line \"WINNER: 1\", \"WINNER: 2\" or \"WINNER: tie\".",
        first.trim(),
        second.trim()
    ));
    p
}

#[allow(clippy::unwrap_used)] // a constant pattern
static WINNER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)winner\W{0,4}(1|2|tie|answer\s*1|answer\s*2)").unwrap());

pub fn parse_pairwise(reply: &str) -> Option<PairwiseVerdict> {
    let m = WINNER.captures_iter(reply).last()?;
    let v = m.get(1)?.as_str().to_ascii_lowercase();
    Some(if v.ends_with('1') {
        PairwiseVerdict::First
    } else if v.ends_with('2') {
        PairwiseVerdict::Second
    } else {
        PairwiseVerdict::Tie
    })
}

/// Asks the judge about (a, b) and (b, a); returns the winner (`"a"`, `"b"` or `"tie"`), the
/// reason, and the cost of the two calls.
pub async fn pairwise(
    backend: &dyn ChatBackend,
    judge: &str,
    item: &Item,
    a: &str,
    b: &str,
    max_tokens: u32,
) -> Result<(String, String, f64), String> {
    let ask = |first: &str, second: &str| {
        backend.chat(judge_request(
            judge,
            pairwise_prompt(item, first, second),
            max_tokens,
        ))
    };
    let (ab, ba) = futures::join!(ask(a, b), ask(b, a));
    let ab = ab.map_err(|e| format!("judge {judge}: {e}"))?;
    let ba = ba.map_err(|e| format!("judge {judge}: {e}"))?;
    let cost = ab.cost_usd.unwrap_or(0.0) + ba.cost_usd.unwrap_or(0.0);
    let v1 = parse_pairwise(&ab.text)
        .ok_or_else(|| format!("judge {judge} named no winner: {:?}", short(&ab.text)))?;
    let v2 = parse_pairwise(&ba.text)
        .ok_or_else(|| format!("judge {judge} named no winner: {:?}", short(&ba.text)))?;
    let winner = match (v1, v2) {
        (PairwiseVerdict::First, PairwiseVerdict::Second) => "a",
        (PairwiseVerdict::Second, PairwiseVerdict::First) => "b",
        _ => "tie",
    };
    let reason = format!(
        "a first: {}; b first: {}",
        short(&reason(&ab.text)),
        short(&reason(&ba.text))
    );
    Ok((winner.to_owned(), reason, cost))
}

/// The judge's reply without its final verdict line.
fn reason(reply: &str) -> String {
    reply
        .lines()
        .filter(|l| {
            let l = l.trim().to_ascii_lowercase();
            !l.is_empty() && !l.starts_with("score") && !l.starts_with("winner")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn short(s: &str) -> String {
    crate::truncate_chars(s.trim(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_scores_are_parsed_robustly() {
        let cases = [
            ("Good answer.\nSCORE: 8", Some(8.0)),
            ("**Score:** 9/10", Some(9.0)),
            ("I'd give it 6/10.", Some(6.0)),
            ("Rating: 3", Some(3.0)),
            ("7", Some(7.0)),
            ("Score: 2 at first, but on reflection SCORE: 5", Some(5.0)),
            ("Score: 42", None),
            ("no idea", None),
        ];
        for (reply, want) in cases {
            assert_eq!(parse_judge_score(reply), want, "{reply:?}");
        }
    }

    #[test]
    fn pairwise_verdicts_are_parsed() {
        assert_eq!(
            parse_pairwise("Answer 1 is right.\nWINNER: 1"),
            Some(PairwiseVerdict::First)
        );
        assert_eq!(
            parse_pairwise("**Winner:** Answer 2"),
            Some(PairwiseVerdict::Second)
        );
        assert_eq!(parse_pairwise("WINNER: tie"), Some(PairwiseVerdict::Tie));
        assert_eq!(parse_pairwise("both fine"), None);
    }
}
