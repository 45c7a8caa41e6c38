//! Scorers: each turns one answer to one item into a [`Score`] in [0, 1] with a pass/fail
//! verdict and a short explanation, or says it does not apply (no reference, no schema, no
//! tests).
//!
//! `--scorer` takes specs (repeatable, or comma-separated):
//!
//! | spec | passes when |
//! |---|---|
//! | `exact` | the answer, trimmed, equals the reference |
//! | `normalized` | equal after lowercasing, dropping punctuation, articles and extra spaces |
//! | `contains` | the normalised answer contains the normalised reference |
//! | `regex:PATTERN` | the answer matches PATTERN (no reference needed) |
//! | `numeric` | the final answer ("The answer is N", "#### N", else the last number) equals the reference's |
//! | `json` | the answer (code fences stripped) is JSON |
//! | `json-schema` | ... and validates against the item's `schema` |
//! | `similarity[:THRESHOLD]` | cosine similarity of embeddings >= THRESHOLD (default 0.8) |
//! | `code[:TIMEOUT_S]` | the answer's Python code passes the item's tests (sandboxed) |
//! | `judge:MODEL[:RUBRIC_FILE]` | an LLM judge scores it >= 7 of 10 on the rubric |
//! | `pairwise:MODEL` | (not per answer) the judge compares each model with the baseline |

mod code;
mod json;
mod judge;
mod text;

use std::path::PathBuf;
use std::time::Duration;

pub use code::{
    CodeLimits, CodeRun, Sandbox, SandboxError, TopDir, bwrap_args, check_sandbox, run_python,
};
pub use judge::{
    PairwiseVerdict, judge_prompt, pairwise as judge_pairwise, pairwise_prompt, parse_judge_score,
    parse_pairwise,
};

use crate::backend::ChatBackend;
use crate::dataset::{DatasetFormat, Item};

/// A scorer's verdict on one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// In [0, 1].
    pub value: f64,
    pub passed: bool,
    /// What was compared (the extracted number, the failing test, the judge's reason).
    pub detail: String,
    /// What scoring cost (a judge's call), in USD.
    pub cost_usd: f64,
}

impl Score {
    pub fn pass_fail(passed: bool, detail: impl Into<String>) -> Score {
        Score {
            value: if passed { 1.0 } else { 0.0 },
            passed,
            detail: detail.into(),
            cost_usd: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScorerSpecError {
    #[error(
        "unknown scorer {0:?} (expected exact, normalized, contains, regex:PATTERN, numeric, json, json-schema, similarity[:THRESHOLD], code[:TIMEOUT_S], judge:MODEL[:RUBRIC_FILE] or pairwise:MODEL)"
    )]
    Unknown(String),
    #[error("scorer {spec:?}: {message}")]
    Invalid { spec: String, message: String },
    #[error("scorer {0:?} is given twice")]
    Duplicate(String),
}

/// One configured per-answer scorer.
#[derive(Debug, Clone)]
pub enum Scorer {
    Exact,
    Normalized,
    Contains,
    Regex(regex::Regex),
    Numeric,
    Json,
    JsonSchema,
    /// The answer's JSON equals the reference's (key order and spacing aside).
    JsonEqual,
    Similarity {
        threshold: f64,
    },
    Code {
        timeout: Duration,
    },
    Judge {
        model: String,
        rubric: Option<String>,
    },
}

/// What `--scorer` configured: per-answer scorers and, optionally, a pairwise judge.
#[derive(Debug, Clone, Default)]
pub struct ScorerSet {
    pub scorers: Vec<Scorer>,
    /// The judge model of `pairwise:MODEL`.
    pub pairwise: Option<String>,
}

impl ScorerSet {
    /// Parses specs; each may also be a comma-separated list (a regex containing a comma must
    /// be given alone, with its own `--scorer`).
    pub fn parse(specs: &[String]) -> Result<ScorerSet, ScorerSpecError> {
        let mut set = ScorerSet::default();
        for spec in specs {
            let parts: Vec<&str> = if spec.starts_with("regex:") {
                vec![spec.as_str()]
            } else {
                spec.split(',').collect()
            };
            for part in parts {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                if let Some(model) = part.strip_prefix("pairwise:") {
                    if model.is_empty() {
                        return Err(ScorerSpecError::Invalid {
                            spec: part.into(),
                            message: "needs a judge model".into(),
                        });
                    }
                    if set.pairwise.replace(model.to_owned()).is_some() {
                        return Err(ScorerSpecError::Duplicate("pairwise".into()));
                    }
                    continue;
                }
                let scorer = Scorer::parse(part)?;
                if set.scorers.iter().any(|s| s.name() == scorer.name()) {
                    return Err(ScorerSpecError::Duplicate(scorer.name().into()));
                }
                set.scorers.push(scorer);
            }
        }
        Ok(set)
    }

    /// The scorers an item gets when `--scorer` is not given: what its fields allow.
    pub fn defaults_for(item: &Item, format: DatasetFormat) -> Vec<Scorer> {
        let mut out = Vec::new();
        if item.code.is_some() {
            out.push(Scorer::Code {
                timeout: code::DEFAULT_TIMEOUT,
            });
        }
        if item.schema.is_some() {
            out.push(Scorer::JsonSchema);
        }
        if out.is_empty()
            && let Some(reference) = &item.reference
        {
            if format == DatasetFormat::Gsm8k || text::parse_number(reference.trim()).is_some() {
                out.push(Scorer::Numeric);
            } else {
                out.push(Scorer::Normalized);
            }
        }
        out
    }
}

impl Scorer {
    pub fn parse(spec: &str) -> Result<Scorer, ScorerSpecError> {
        let invalid = |message: String| ScorerSpecError::Invalid {
            spec: spec.to_owned(),
            message,
        };
        let (name, arg) = match spec.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        let no_arg = |s: Scorer| match arg {
            None => Ok(s),
            Some(_) => Err(invalid("takes no argument".into())),
        };
        match name {
            "exact" => no_arg(Scorer::Exact),
            "normalized" | "normalised" => no_arg(Scorer::Normalized),
            "contains" => no_arg(Scorer::Contains),
            "numeric" => no_arg(Scorer::Numeric),
            "json" => no_arg(Scorer::Json),
            "json-schema" | "json_schema" => no_arg(Scorer::JsonSchema),
            "json-equal" | "json_equal" => no_arg(Scorer::JsonEqual),
            "regex" => {
                let pattern = arg
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| invalid("needs a pattern: regex:PATTERN".into()))?;
                regex::Regex::new(pattern)
                    .map(Scorer::Regex)
                    .map_err(|e| invalid(e.to_string()))
            }
            "similarity" => {
                let threshold = match arg {
                    None => 0.8,
                    Some(t) => t
                        .parse::<f64>()
                        .ok()
                        .filter(|t| (0.0..=1.0).contains(t))
                        .ok_or_else(|| {
                            invalid("the threshold must be a number in [0, 1]".into())
                        })?,
                };
                Ok(Scorer::Similarity { threshold })
            }
            "code" => {
                let timeout = match arg {
                    None => code::DEFAULT_TIMEOUT,
                    Some(t) => t
                        .parse::<f64>()
                        .ok()
                        .filter(|t| *t > 0.0 && *t <= 3600.0)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| {
                            invalid("the timeout must be seconds in (0, 3600]".into())
                        })?,
                };
                Ok(Scorer::Code { timeout })
            }
            "judge" => {
                let arg = arg.filter(|a| !a.is_empty()).ok_or_else(|| {
                    invalid("needs a judge model: judge:MODEL[:RUBRIC_FILE]".into())
                })?;
                // MODEL is `PROVIDER/MODEL` or an alias (no ':'); the rest is a file path.
                let (model, rubric) = match arg.split_once(':') {
                    Some((m, file)) => {
                        let text = std::fs::read_to_string(PathBuf::from(file))
                            .map_err(|e| invalid(format!("rubric {file}: {e}")))?;
                        (m, Some(text))
                    }
                    None => (arg, None),
                };
                Ok(Scorer::Judge {
                    model: model.to_owned(),
                    rubric,
                })
            }
            _ => Err(ScorerSpecError::Unknown(spec.to_owned())),
        }
    }

    /// The key of this scorer's results in `ItemResult::scores`.
    pub fn name(&self) -> &'static str {
        match self {
            Scorer::Exact => "exact",
            Scorer::Normalized => "normalized",
            Scorer::Contains => "contains",
            Scorer::Regex(_) => "regex",
            Scorer::Numeric => "numeric",
            Scorer::Json => "json",
            Scorer::JsonSchema => "json-schema",
            Scorer::JsonEqual => "json-equal",
            Scorer::Similarity { .. } => "similarity",
            Scorer::Code { .. } => "code",
            Scorer::Judge { .. } => "judge",
        }
    }

    /// Scores `output` for `item`; `None` when the scorer does not apply to the item (it
    /// needs a reference, schema or tests the item lacks). `Err` when scoring itself failed
    /// (the judge or the embedding model errored): that is no verdict on the answer.
    pub async fn score(
        &self,
        item: &Item,
        output: &str,
        ctx: &ScoreContext<'_>,
    ) -> Result<Option<Score>, String> {
        let reference = item.reference.as_deref();
        Ok(match self {
            Scorer::Exact => reference.map(|r| text::exact(output, r)),
            Scorer::Normalized => reference.map(|r| text::normalized(output, r)),
            Scorer::Contains => reference.map(|r| text::contains(output, r)),
            Scorer::Regex(re) => Some(text::regex(output, re)),
            Scorer::Numeric => reference.map(|r| text::numeric(output, r)),
            Scorer::Json => Some(json::valid(output)),
            Scorer::JsonSchema => item.schema.as_ref().map(|s| json::schema(output, s)),
            Scorer::JsonEqual => reference.map(|r| json::equal(output, r)),
            Scorer::Similarity { threshold } => match reference {
                None => None,
                Some(r) => Some(similarity(ctx, output, r, *threshold).await?),
            },
            Scorer::Code { timeout } => match &item.code {
                None => None,
                Some(tests) => Some(
                    code::score(
                        output,
                        tests,
                        &CodeLimits {
                            timeout: *timeout,
                            ..ctx.code_limits.clone()
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                ),
            },
            Scorer::Judge { model, rubric } => Some(
                judge::score(
                    ctx.backend,
                    model,
                    rubric.as_deref(),
                    item,
                    output,
                    ctx.judge_max_tokens,
                )
                .await?,
            ),
        })
    }
}

/// What scorers that call out need.
pub struct ScoreContext<'a> {
    pub backend: &'a dyn ChatBackend,
    /// The embedding model of `similarity` (default `local/all-minilm-l6-v2`).
    pub embedding_model: &'a str,
    pub code_limits: CodeLimits,
    pub judge_max_tokens: u32,
}

async fn similarity(
    ctx: &ScoreContext<'_>,
    output: &str,
    reference: &str,
    threshold: f64,
) -> Result<Score, String> {
    let vectors = ctx
        .backend
        .embed(
            ctx.embedding_model,
            vec![output.to_owned(), reference.to_owned()],
        )
        .await
        .map_err(|e| format!("embedding with {}: {e}", ctx.embedding_model))?;
    let [a, b] = vectors.as_slice() else {
        return Err(format!(
            "embedding with {}: expected 2 vectors, got {}",
            ctx.embedding_model,
            vectors.len()
        ));
    };
    let cos = cosine(a, b);
    let value = cos.clamp(0.0, 1.0);
    Ok(Score {
        value,
        passed: value >= threshold,
        detail: format!("cosine {cos:.3} (threshold {threshold})"),
        cost_usd: 0.0,
    })
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let set = ScorerSet::parse(&[
            "exact,numeric".into(),
            "regex:^a,b$".into(),
            "similarity:0.5".into(),
            "pairwise:openai/gpt-5".into(),
        ])
        .unwrap();
        let names: Vec<_> = set.scorers.iter().map(Scorer::name).collect();
        assert_eq!(names, ["exact", "numeric", "regex", "similarity"]);
        assert_eq!(set.pairwise.as_deref(), Some("openai/gpt-5"));
        assert!(matches!(set.scorers[3], Scorer::Similarity { threshold } if threshold == 0.5));

        assert_eq!(
            ScorerSet::parse(&["exact,exact".into()]).unwrap_err(),
            ScorerSpecError::Duplicate("exact".into())
        );
        assert!(matches!(
            Scorer::parse("bleu"),
            Err(ScorerSpecError::Unknown(_))
        ));
        for bad in [
            "regex:(",
            "regex:",
            "similarity:2",
            "code:0",
            "judge:",
            "exact:1",
            "judge:m:/nonexistent/rubric.txt",
        ] {
            assert!(
                matches!(Scorer::parse(bad), Err(ScorerSpecError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(
            matches!(Scorer::parse("code:2.5"), Ok(Scorer::Code { timeout }) if timeout == Duration::from_millis(2500))
        );
        assert!(
            matches!(Scorer::parse("judge:openai/gpt-5"), Ok(Scorer::Judge { model, rubric: None }) if model == "openai/gpt-5")
        );
    }

    #[test]
    fn cosine_of_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-9);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-9);
        assert_eq!(cosine(&[0.0], &[1.0]), 0.0);
    }
}
