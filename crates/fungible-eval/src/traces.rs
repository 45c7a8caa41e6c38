//! Datasets from the store, read through `fungible-datasets` (only `fungible-store` knows
//! SQL): recorded inferences (`--from-traces`, filtered as `fungible datasets build` filters),
//! or a stored dataset version (`--dataset NAME[@VERSION]`).
//!
//! Each row becomes an item: its id, its messages, and as reference the row's answer — for
//! traffic, the demonstration given as feedback when there is one, else what was answered
//! then. So "would model X have answered my traffic like production did?" is one command.

use fungible_datasets::{Example, Selection, Split};
use fungible_store::{Store, StoreError};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::dataset::{Dataset, DatasetFormat, Item, hex};

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("reading the inference store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataset(#[from] fungible_datasets::DatasetError),
    #[error("no recorded inference matches {0}")]
    Empty(String),
    #[error("{0}")]
    BadFilter(String),
}

fn describe(selection: &Selection) -> String {
    let mut parts = Vec::new();
    let mut push = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            parts.push(format!("{key}={v}"));
        }
    };
    push("route", selection.route.clone());
    push("model", selection.model.clone());
    push("since", selection.since_ms.map(|s| s.to_string()));
    push("until", selection.until_ms.map(|s| s.to_string()));
    push("feedback", selection.feedback.map(|f| format!("{f:?}").to_lowercase()));
    for tag in &selection.tags {
        parts.push(format!("tag={tag}"));
    }
    parts.push(format!("limit={}", selection.limit));
    format!("traces:{}", parts.join(","))
}

/// Reads the matching inferences into a dataset, newest first.
pub async fn dataset_from_traces(store: &Store, selection: &Selection) -> Result<Dataset, TracesError> {
    let source = describe(selection);
    let selected = fungible_datasets::select::select(store, selection).await?;
    if selected.rows.is_empty() {
        return Err(TracesError::Empty(source));
    }
    Ok(dataset(source.clone(), source, &selected.rows))
}

/// A stored dataset version (the latest when `version` is `None`), one split or all; also
/// returns the version read. The caller marks it used once the run starts.
pub async fn dataset_from_store(
    store: &Store,
    name: &str,
    version: Option<i64>,
    split: Option<Split>,
) -> Result<(Dataset, i64), TracesError> {
    let info = fungible_datasets::versions::info(store, name, version).await?;
    let rows: Vec<Example> = fungible_datasets::versions::rows(store, name, info.version)
        .await?
        .into_iter()
        .filter(|r| split.is_none_or(|s| r.split == s))
        .collect();
    let source = format!("dataset:{name}@{}", info.version);
    if rows.is_empty() {
        return Err(TracesError::Empty(source));
    }
    Ok((dataset(format!("{name}@{}", info.version), source, &rows), info.version))
}

fn dataset(name: String, source: String, rows: &[Example]) -> Dataset {
    let items: Vec<Item> = rows.iter().map(item_from).collect();
    let mut hasher = Sha256::new();
    for item in &items {
        hasher.update(item.id.as_bytes());
        hasher.update(b"\n");
    }
    Dataset { name, source, sha256: Some(hex(&hasher.finalize())), format: DatasetFormat::Chat, items }
}

fn item_from(row: &Example) -> Item {
    let mut metadata = Map::new();
    metadata.insert("source".into(), Value::String(row.source.as_str().to_owned()));
    if let Some(id) = &row.inference_id {
        metadata.insert("inference_id".into(), Value::String(id.clone()));
    }
    if let Some(route) = row.tags.get("route") {
        metadata.insert("route".into(), route.clone());
    }
    if !row.tags.is_empty() {
        metadata.insert("tags".into(), Value::Object(row.tags.clone()));
    }
    Item {
        id: row.id.clone(),
        messages: row.messages.clone(),
        reference: Some(fungible_datasets::message_text(&row.output)),
        schema: row.schema.clone(),
        code: None,
        metadata,
    }
}

/// A point in time for `--since` / `--until`: `30m`, `24h`, `7d` ago, or a date
/// (`2025-01-31`) or RFC 3339 time in UTC (`2025-01-31T12:00:00Z`). Unix milliseconds.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, TracesError> {
    let bad = || {
        TracesError::BadFilter(format!(
            "{s:?} is not a time (expected 30m, 24h, 7d, 2025-01-31 or 2025-01-31T12:00:00Z)"
        ))
    };
    let s = s.trim();
    for (suffix, ms) in [("m", 60_000i64), ("h", 3_600_000), ("d", 86_400_000)] {
        if let Some(n) = s.strip_suffix(suffix).and_then(|n| n.parse::<i64>().ok()) {
            return Ok(now_ms - n * ms);
        }
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let time = time.strip_suffix('Z').ok_or_else(bad)?;
    let t: Vec<i64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return Err(bad());
    }
    Ok((fungible_types::date::days_from_civil(*y, *m as u32, *day as u32) * 86_400 + hh * 3600 + mm * 60 + ss) * 1000)
}


#[cfg(test)]
mod tests {
    use super::*;
    use fungible_store::{Feedback, FeedbackTarget, InferenceRecord};
    use fungible_types::{Message, Role};
    use serde_json::json;

    #[test]
    fn times_parse() {
        assert_eq!(
            parse_time("2024-02-29T12:34:56Z", 0).unwrap(),
            1_709_210_096_000
        );
        assert_eq!(parse_time("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(
            parse_time("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("2024-13-01", 0).is_err());
    }

    fn record(id: &str, route: Option<&str>, question: &str, answer: Option<&str>) -> InferenceRecord {
        let record = fungible_store::testing::chat_record(id, route.unwrap_or("openai/gpt-5"), vec![Message::text(Role::User, question)], answer);
        InferenceRecord { route: route.map(Into::into), ..record }
    }

    fn feedback(
        id: &str,
        target: &str,
        boolean: Option<bool>,
        demonstration: Option<&str>,
    ) -> Feedback {
        Feedback {
            id: id.into(),
            time_ms: 2_000,
            target: FeedbackTarget::Inference,
            target_id: target.into(),
            boolean,
            score: None,
            comment: None,
            demonstration: demonstration.map(|d| json!(d)),
        }
    }

    #[tokio::test]
    async fn recorded_inferences_become_items_filtered_by_route_and_feedback() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        store
            .insert(&[
                record("01", Some("chat"), "q1", Some("a1")),
                record("02", Some("chat"), "q2", Some("a2")),
                record("03", Some("other"), "q3", Some("a3")),
                record("04", Some("chat"), "q4", None),
            ])
            .await
            .unwrap();
        store
            .insert_feedback(&feedback("f1", "01", Some(true), Some("better a1")))
            .await
            .unwrap();
        store
            .insert_feedback(&feedback("f2", "02", Some(false), None))
            .await
            .unwrap();

        let all = dataset_from_traces(
            &store,
            &Selection {
                route: Some("chat".into()),
                limit: 100,
                ..Selection::default()
            },
        )
        .await
        .unwrap();
        let ids: Vec<_> = all.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            ["02", "01"],
            "newest first, failures and other routes left out"
        );
        assert_eq!(all.items[0].reference.as_deref(), Some("a2"));
        assert_eq!(
            all.items[1].reference.as_deref(),
            Some("better a1"),
            "a demonstration is the reference"
        );
        assert_eq!(all.items[1].input_text(), "q1");
        assert!(all.source.starts_with("traces:route=chat"));

        let good = dataset_from_traces(
            &store,
            &Selection {
                feedback: Some(fungible_datasets::FeedbackFilter::Positive),
                limit: 100,
                ..Selection::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(good.items.len(), 1);
        assert_eq!(good.items[0].id, "01");

        let limited = dataset_from_traces(
            &store,
            &Selection {
                limit: 1,
                ..Selection::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(limited.items.len(), 1);

        let none = dataset_from_traces(
            &store,
            &Selection {
                route: Some("nope".into()),
                limit: 10,
                ..Selection::default()
            },
        )
        .await;
        assert!(matches!(none, Err(TracesError::Empty(_))));
    }
}
