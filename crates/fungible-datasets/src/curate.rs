//! Curation: PII scrub, length limits in tokens, exact and near-duplicate removal, preference
//! pairs, a deterministic train/validation split, and the statistics of the result. Each step
//! is counted in the [`Report`] kept with the version.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::example::{Example, Source, Split};
use crate::pii::{self, PiiCounts};

/// The default similarity above which two inputs are the same question asked twice (cosine of
/// all-MiniLM-L6-v2 embeddings; paraphrases score about 0.8–0.9, rewordings of one sentence
/// above 0.95).
pub const NEAR_DUPLICATE_SIMILARITY: f32 = 0.95;
/// The embedding model near-duplicates are found with, in-process and free.
pub const DEFAULT_EMBEDDING_MODEL: &str = "local/all-minilm-l6-v2";

/// How to curate. The defaults: exact duplicates out, near duplicates out at
/// [`NEAR_DUPLICATE_SIMILARITY`], no length limits, no scrub, 10% validation, seed 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Curation {
    pub dedup: bool,
    /// Cosine similarity at or above which rows are near duplicates; `None`: not looked for.
    pub near_duplicates: Option<f32>,
    pub embedding_model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    pub scrub_pii: bool,
    /// The share of rows in the validation split (0 to 0.5).
    pub validation_fraction: f64,
    pub seed: u64,
}

impl Default for Curation {
    fn default() -> Curation {
        Curation {
            dedup: true,
            near_duplicates: Some(NEAR_DUPLICATE_SIMILARITY),
            embedding_model: DEFAULT_EMBEDDING_MODEL.to_owned(),
            min_tokens: None,
            max_tokens: None,
            scrub_pii: false,
            validation_fraction: 0.1,
            seed: 0,
        }
    }
}

/// Turns texts into embedding vectors (the gateway's `embed`, or a stand-in in tests).
pub trait Embed {
    fn embed(&self, model: &str, texts: Vec<String>) -> impl Future<Output = Result<Vec<Vec<f32>>, String>> + Send;
}

impl Embed for fungible_gateway::Gateway {
    async fn embed(&self, model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        fungible_gateway::Gateway::embed(self, model, texts).await.map(|(e, _)| e.vectors).map_err(|e| e.to_string())
    }
}

/// What curation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// Rows curation started from.
    pub candidates: usize,
    pub exact_duplicates: usize,
    pub near_duplicates: usize,
    pub too_short: usize,
    pub too_long: usize,
    /// Replacements per kind (`email`, `phone`, `card`, `iban`, `secret`).
    pub pii: BTreeMap<String, usize>,
    /// Rows with at least one replacement.
    pub pii_rows: usize,
    /// Rows that got a rejected answer from another row asking the same thing.
    pub paired: usize,
}

/// The statistics of a version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub rows: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub train_tokens: u64,
    pub validation_tokens: u64,
    pub max_tokens: u64,
    /// Rows per answer source.
    pub sources: BTreeMap<String, usize>,
    /// Rows per tag (`key=value`).
    pub tags: BTreeMap<String, usize>,
    /// Rows by label: `positive` (>= 0.5), `negative`, `unlabelled`.
    pub labels: BTreeMap<String, usize>,
    /// Rows with a rejected answer (usable for preference tuning).
    pub preference_pairs: usize,
    /// Rows whose answer calls tools.
    pub tool_call_rows: usize,
}

impl Stats {
    pub fn of(rows: &[Example]) -> Stats {
        let mut s = Stats { rows: rows.len(), ..Stats::default() };
        for r in rows {
            match r.split {
                Split::Train => {
                    s.train_rows += 1;
                    s.train_tokens += r.tokens;
                }
                Split::Validation => {
                    s.validation_rows += 1;
                    s.validation_tokens += r.tokens;
                }
            }
            s.max_tokens = s.max_tokens.max(r.tokens);
            *s.sources.entry(r.source.as_str().to_owned()).or_default() += 1;
            for (k, v) in &r.tags {
                let tag = match v {
                    Value::String(v) => format!("{k}={v}"),
                    Value::Bool(true) => k.clone(),
                    other => format!("{k}={other}"),
                };
                *s.tags.entry(tag).or_default() += 1;
            }
            let label = match r.label {
                Some(l) if l >= 0.5 => "positive",
                Some(_) => "negative",
                None => "unlabelled",
            };
            *s.labels.entry(label.to_owned()).or_default() += 1;
            s.preference_pairs += usize::from(r.rejected.is_some());
            s.tool_call_rows += usize::from(!r.output.tool_calls.is_empty());
        }
        s
    }
}

/// Curates `rows` (newest first, as selected): `others` are rows the selection left out,
/// used only as rejected answers for rows that ask the same thing.
pub async fn curate<E: Embed>(
    mut rows: Vec<Example>,
    mut others: Vec<Example>,
    curation: &Curation,
    embedder: Option<&E>,
) -> Result<(Vec<Example>, Report), String> {
    let mut report = Report { candidates: rows.len(), ..Report::default() };

    if curation.scrub_pii {
        let mut counts = PiiCounts::new();
        for row in &mut rows {
            let before: usize = counts.values().sum();
            scrub_example(row, &mut counts);
            if counts.values().sum::<usize>() > before {
                report.pii_rows += 1;
                row.count_tokens();
            }
        }
        report.pii = counts.into_iter().map(|(k, n)| (k.as_str().to_owned(), n)).collect();
        // The rows left out may still lend a rejected answer: scrubbed too (and their inputs
        // then match the scrubbed rows'), not counted (most are never used).
        let mut unused = PiiCounts::new();
        for other in &mut others {
            scrub_example(other, &mut unused);
        }
    }

    rows.retain(|r| {
        if curation.min_tokens.is_some_and(|min| r.tokens < min) {
            report.too_short += 1;
            return false;
        }
        if curation.max_tokens.is_some_and(|max| r.tokens > max) {
            report.too_long += 1;
            return false;
        }
        true
    });

    if curation.dedup {
        let (kept, dropped, paired) = exact_dedup(rows, others);
        rows = kept;
        report.exact_duplicates = dropped;
        report.paired = paired;
    }

    if let (Some(threshold), Some(embedder)) = (curation.near_duplicates, embedder)
        && rows.len() > 1
    {
        let before = rows.len();
        rows = near_dedup(rows, threshold, &curation.embedding_model, embedder).await?;
        report.near_duplicates = before - rows.len();
    }

    split(&mut rows, curation.validation_fraction, curation.seed);
    Ok((rows, report))
}

/// Rank of a row among rows that ask the same thing: the best answer source, then the best
/// label, then the newest (the selection's order).
fn rank(r: &Example) -> (Source, i64) {
    (r.source, -(r.label.unwrap_or(0.5) * 1000.0) as i64)
}

/// Keeps the best row of each group with the same input; a group's negatively labelled
/// answer becomes the kept row's rejected answer when it has none. Returns the rows (in their
/// order), how many were dropped, and how many were paired.
fn exact_dedup(rows: Vec<Example>, others: Vec<Example>) -> (Vec<Example>, usize, usize) {
    let total = rows.len();
    let mut best: HashMap<[u8; 32], usize> = HashMap::new();
    let digests: Vec<[u8; 32]> = rows.iter().map(Example::input_digest).collect();
    for (i, r) in rows.iter().enumerate() {
        best.entry(digests[i])
            .and_modify(|b| {
                if rank(r) < rank(&rows[*b]) {
                    *b = i;
                }
            })
            .or_insert(i);
    }
    // The worst-labelled answer for each input, from every row read.
    let mut worst: HashMap<[u8; 32], (f64, fungible_types::Message)> = HashMap::new();
    for (digest, r) in digests.iter().copied().zip(rows.iter()).chain(others.iter().map(|o| (o.input_digest(), o))) {
        if let Some(label) = r.label.filter(|l| *l < 0.5)
            && worst.get(&digest).is_none_or(|(w, _)| label < *w)
        {
            worst.insert(digest, (label, r.output.clone()));
        }
    }
    let mut paired = 0;
    let mut kept = Vec::with_capacity(best.len());
    for (i, mut r) in rows.into_iter().enumerate() {
        if best.get(&digests[i]) != Some(&i) {
            continue;
        }
        if r.rejected.is_none()
            && r.label.is_none_or(|l| l >= 0.5)
            && let Some((_, answer)) = worst.get(&digests[i])
            && *answer != r.output
        {
            r.rejected = Some(answer.clone());
            paired += 1;
        }
        kept.push(r);
    }
    let dropped = total - kept.len();
    (kept, dropped, paired)
}

/// Drops each row whose input embedding is within `threshold` cosine similarity of a better
/// row's (rows are compared best first; the first of a cluster stays).
async fn near_dedup<E: Embed>(rows: Vec<Example>, threshold: f32, model: &str, embedder: &E) -> Result<Vec<Example>, String> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rank(&rows[i]));
    let vectors = embed_normalized(embedder, model, rows.iter().map(Example::input_text).collect()).await?;
    let mut kept_vectors: Vec<&[f32]> = Vec::new();
    let mut keep = vec![false; rows.len()];
    for i in order {
        let v = vectors[i].as_slice();
        if kept_vectors.iter().any(|k| dot(k, v) >= threshold) {
            continue;
        }
        kept_vectors.push(v);
        keep[i] = true;
    }
    Ok(rows.into_iter().zip(keep).filter_map(|(r, k)| k.then_some(r)).collect())
}

/// The unit-length embeddings of `texts`, asked for 64 at a time.
pub(crate) async fn embed_normalized<E: Embed>(embedder: &E, model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let embedded =
            embedder.embed(model, chunk.to_vec()).await.map_err(|e| format!("embedding the inputs with {model}: {e}"))?;
        if embedded.len() != chunk.len() {
            return Err(format!("{model} returned {} embeddings for {} inputs", embedded.len(), chunk.len()));
        }
        vectors.extend(embedded.into_iter().map(normalized));
    }
    Ok(vectors)
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Puts `round(fraction × rows)` rows in validation: those whose `hash(seed, id)` is lowest.
/// The same rows and seed always give the same split, whatever their order.
pub fn split(rows: &mut [Example], fraction: f64, seed: u64) {
    let fraction = fraction.clamp(0.0, 0.5);
    let validation = ((rows.len() as f64) * fraction).round() as usize;
    let mut keyed: Vec<(u64, usize)> = rows.iter().enumerate().map(|(i, r)| (split_key(seed, &r.id), i)).collect();
    keyed.sort_unstable();
    for r in rows.iter_mut() {
        r.split = Split::Train;
    }
    for &(_, i) in keyed.iter().take(validation) {
        rows[i].split = Split::Validation;
    }
}

/// The split of a row added later, by itself: validation with probability `fraction`.
pub fn split_of_new_row(id: &str, fraction: f64, seed: u64) -> Split {
    let x = split_key(seed, id) as f64 / u64::MAX as f64;
    if x < fraction.clamp(0.0, 0.5) { Split::Validation } else { Split::Train }
}

fn split_key(seed: u64, id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

fn scrub_example(row: &mut Example, counts: &mut PiiCounts) {
    let messages = row.messages.iter_mut().chain(std::iter::once(&mut row.output)).chain(row.rejected.as_mut());
    for m in messages {
        for part in &mut m.content {
            if let fungible_types::ContentPart::Text { text } = part {
                *text = pii::scrub(text, counts);
            }
        }
        for call in &mut m.tool_calls {
            call.arguments = pii::scrub(&call.arguments, counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::assistant;
    use fungible_types::{Message, Role};

    fn row(id: &str, question: &str, answer: &str, source: Source, label: Option<f64>) -> Example {
        let mut e = Example::new(
            id.into(),
            source,
            vec![Message::text(Role::User, question)],
            vec![],
            assistant(Some(answer.into()), vec![]),
        );
        e.label = label;
        e
    }

    /// Embeds a text as counts of its words in a fixed vocabulary, so two texts with the same
    /// words are identical and others are not.
    struct Words;
    impl Embed for Words {
        async fn embed(&self, _model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
            let vocab = ["capital", "france", "paris", "weather", "today", "what", "is", "the", "of"];
            Ok(texts
                .iter()
                .map(|t| {
                    let lower = t.to_lowercase();
                    vocab.iter().map(|w| lower.matches(w).count() as f32).collect()
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn duplicates_go_the_best_answer_stays_and_a_bad_one_becomes_rejected() {
        let rows = vec![
            row("r1", "What is the capital of France?", "Lyon", Source::Recorded, Some(0.0)),
            row("r2", "What is the capital of France?", "Paris", Source::Recorded, Some(1.0)),
            row("r3", "what is the capital of france", "Paris.", Source::Recorded, None),
            row("r4", "Weather today?", "Sunny", Source::Demonstration, None),
            row("r5", "Weather today?", "Rain", Source::Recorded, None),
        ];
        let (kept, report) = curate(rows, vec![], &Curation::default(), Some(&Words)).await.unwrap();
        let ids: Vec<&str> = kept.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r2", "r4"], "r1 and r5 exact duplicates, r3 a near duplicate of r2");
        assert_eq!((report.exact_duplicates, report.near_duplicates, report.paired), (2, 1, 1));
        assert_eq!(kept[0].rejected.as_ref().map(Message::joined_text).as_deref(), Some("Lyon"));
        assert!(kept[1].rejected.is_none(), "an unlabelled answer is not a rejected one");
    }

    #[tokio::test]
    async fn a_rejected_answer_from_a_row_left_out_is_scrubbed_too() {
        let kept = row("good", "mail a.b@example.com", "Done.", Source::Recorded, Some(1.0));
        let left_out = row("bad", "mail a.b@example.com", "Sent to a.b@example.com", Source::Recorded, Some(0.0));
        let curation = Curation { scrub_pii: true, near_duplicates: None, ..Curation::default() };
        let (rows, report) = curate::<Words>(vec![kept], vec![left_out], &curation, None).await.unwrap();
        assert_eq!(report.paired, 1, "the scrubbed inputs still match");
        assert_eq!(rows[0].rejected.as_ref().map(Message::joined_text).as_deref(), Some("Sent to [EMAIL]"));
    }

    #[tokio::test]
    async fn length_limits_scrub_and_split() {
        let mut rows: Vec<Example> = (0..200).map(|i| row(&format!("r{i}"), &format!("question {i}"), "answer", Source::Recorded, None)).collect();
        rows.push(row("long", &"word ".repeat(500), "answer", Source::Recorded, None));
        rows.push(row("pii", "mail me at a.b@example.com", "ok", Source::Recorded, None));
        let curation = Curation { max_tokens: Some(100), scrub_pii: true, near_duplicates: None, ..Curation::default() };
        let (kept, report) = curate::<Words>(rows.clone(), vec![], &curation, None).await.unwrap();
        assert_eq!(report.too_long, 1);
        assert_eq!((report.pii_rows, report.pii.get("email").copied()), (1, Some(1)));
        let pii = kept.iter().find(|r| r.id == "pii").unwrap();
        assert_eq!(pii.input_text(), "mail me at [EMAIL]");
        let stats = Stats::of(&kept);
        assert_eq!((stats.rows, stats.validation_rows), (201, 20));

        // The same rows in another order split the same way; another seed differently.
        let mut reversed = kept.clone();
        reversed.reverse();
        split(&mut reversed, 0.1, 0);
        let validation = |rows: &[Example]| {
            let mut v: Vec<String> = rows.iter().filter(|r| r.split == Split::Validation).map(|r| r.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(validation(&kept), validation(&reversed));
        split(&mut reversed, 0.1, 7);
        assert_ne!(validation(&kept), validation(&reversed));
    }
}
