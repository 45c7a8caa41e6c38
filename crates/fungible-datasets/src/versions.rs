//! Datasets in the store: building a version from traffic, reading one, and editing by hand
//! (adding, replacing and removing rows). A version that a job or an eval used never changes:
//! an edit to it goes to a new version, copied from it first.

use fungible_store::{DatasetRow, DatasetStoreError, DatasetVersion, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::curate::{self, Curation, Embed, Report, Stats};
use crate::example::{Example, Split};
use crate::select::{self, Selection, Skipped};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Version(#[from] DatasetStoreError),
    #[error("no dataset named {0:?}")]
    NotFound(String),
    #[error("dataset {name:?} has no version {version}")]
    NoVersion { name: String, version: i64 },
    #[error("{0}")]
    Empty(String),
    #[error("curation failed: {0}")]
    Curation(String),
    #[error("{0}")]
    BadInput(String),
    #[error("dataset {name:?} has no row {row_id:?}")]
    NoRow { name: String, row_id: String },
}

/// How a version was made: what was selected and how it was curated. Stored with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spec {
    /// `None`: rows added by hand or imported, not selected from traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    pub curation: Curation,
}

/// What happened to make a version, and its statistics. Stored with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionReport {
    /// Recorded inferences that did not become rows.
    pub skipped: Skipped,
    pub curation: Report,
    pub stats: Stats,
}

/// A version read back: its metadata and parsed spec and report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: i64,
    pub created_ms: i64,
    pub description: Option<String>,
    pub rows: i64,
    pub used_by: Vec<String>,
    pub spec: Spec,
    pub report: VersionReport,
}

impl VersionInfo {
    fn of(v: DatasetVersion) -> VersionInfo {
        VersionInfo {
            spec: serde_json::from_str(&v.spec).unwrap_or_default(),
            report: serde_json::from_str(&v.report).unwrap_or_default(),
            name: v.name,
            version: v.version,
            created_ms: v.created_ms,
            description: v.description,
            rows: v.rows,
            used_by: v.used_by,
        }
    }
}

/// A dataset name: letters, digits, `-`, `_` and `.`, 1 to 64 characters, not starting with
/// `.` (names appear in paths, URLs and `name@version`).
pub fn check_name(name: &str) -> Result<(), DatasetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(DatasetError::BadInput(format!(
            "dataset name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (not first)"
        )))
    }
}

/// Splits `name@version` (the version is optional).
pub fn parse_reference(reference: &str) -> Result<(String, Option<i64>), DatasetError> {
    match reference.rsplit_once('@') {
        Some((name, v)) => {
            let version = v
                .strip_prefix('v')
                .unwrap_or(v)
                .parse::<i64>()
                .map_err(|_| DatasetError::BadInput(format!("{reference:?}: the version after '@' must be a number")))?;
            check_name(name)?;
            Ok((name.to_owned(), Some(version)))
        }
        None => {
            check_name(reference)?;
            Ok((reference.to_owned(), None))
        }
    }
}

/// Selects rows from recorded traffic, curates them and stores them as a new version of
/// `name`. Nothing is stored when no row is left.
pub async fn build<E: Embed>(
    store: &Store,
    name: &str,
    description: Option<&str>,
    selection: Selection,
    curation: Curation,
    embedder: Option<&E>,
) -> Result<VersionInfo, DatasetError> {
    check_name(name)?;
    let selected = select::select(store, &selection).await?;
    if selected.rows.is_empty() {
        return Err(DatasetError::Empty(format!(
            "no recorded inference matches the selection ({} read: {} cut at max_record_bytes, {} without a usable answer, {} left out by the feedback filter)",
            selected.skipped.truncated + selected.skipped.unusable + selected.skipped.feedback + selected.rows.len(),
            selected.skipped.truncated,
            selected.skipped.unusable,
            selected.skipped.feedback
        )));
    }
    let (rows, report) =
        curate::curate(selected.rows, selected.others, &curation, embedder).await.map_err(DatasetError::Curation)?;
    if rows.is_empty() {
        return Err(DatasetError::Empty("curation left no row (every candidate was too short or too long)".into()));
    }
    let report = VersionReport { skipped: selected.skipped, curation: report, stats: Stats::of(&rows) };
    let spec = Spec { selection: Some(selection), curation };
    let version = store
        .create_dataset_version(name, description, &to_json(&spec), &to_json(&report), &stored_rows(&rows))
        .await?;
    info(store, name, Some(version)).await
}

/// A version's metadata (the latest when `version` is `None`).
pub async fn info(store: &Store, name: &str, version: Option<i64>) -> Result<VersionInfo, DatasetError> {
    match store.dataset_version(name, version).await? {
        Some(v) => Ok(VersionInfo::of(v)),
        None => Err(match version {
            Some(version) => DatasetError::NoVersion { name: name.to_owned(), version },
            None => DatasetError::NotFound(name.to_owned()),
        }),
    }
}

/// Every dataset's latest version.
pub async fn list(store: &Store) -> Result<Vec<VersionInfo>, DatasetError> {
    Ok(store.list_datasets().await?.into_iter().map(VersionInfo::of).collect())
}

/// Every version of `name`, oldest first.
pub async fn versions(store: &Store, name: &str) -> Result<Vec<VersionInfo>, DatasetError> {
    let versions = store.dataset_versions(name).await?;
    if versions.is_empty() {
        return Err(DatasetError::NotFound(name.to_owned()));
    }
    Ok(versions.into_iter().map(VersionInfo::of).collect())
}

/// All rows of a version, in order.
pub async fn rows(store: &Store, name: &str, version: i64) -> Result<Vec<Example>, DatasetError> {
    let mut out = Vec::new();
    let mut after = -1;
    loop {
        let page = store.dataset_rows(name, version, None, after, 1_000).await?;
        let Some(last) = page.last() else { break };
        after = last.idx;
        for row in page {
            out.push(parse_row(name, &row)?);
        }
    }
    Ok(out)
}

/// A page of rows: those after position `after` (all: -1), of one split when given.
pub async fn page(
    store: &Store,
    name: &str,
    version: i64,
    split: Option<Split>,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Example)>, DatasetError> {
    let page = store.dataset_rows(name, version, split.map(Split::as_str), after, limit).await?;
    page.iter().map(|r| Ok((r.idx, parse_row(name, r)?))).collect()
}

/// A row to add, with its split when the writer chose one (else it is drawn from the row's
/// id and the dataset's seed and validation fraction).
pub type NewRow = (Example, Option<Split>);

/// Adds rows (or replaces rows with the same ids) in the latest version of `name`, creating
/// the dataset when there is none; a version already used is copied to a new one first.
/// Returns the version written.
pub async fn put_rows(store: &Store, name: &str, new_rows: Vec<NewRow>) -> Result<VersionInfo, DatasetError> {
    check_name(name)?;
    // Two rows with one id: the later one is the row.
    let mut new_rows = new_rows;
    let mut seen = std::collections::HashSet::new();
    new_rows.reverse();
    new_rows.retain(|(row, _)| seen.insert(row.id.clone()));
    new_rows.reverse();
    for (row, _) in &new_rows {
        if let Some(problem) = row.problem() {
            return Err(DatasetError::BadInput(format!("row {}: {problem}", row.id)));
        }
    }
    let head = store.dataset_version(name, None).await?.map(VersionInfo::of);
    let curation = head.as_ref().map_or_else(Curation::default, |h| h.spec.curation.clone());
    let placed = |(mut row, split): NewRow| {
        row.split = split.unwrap_or_else(|| curate::split_of_new_row(&row.id, curation.validation_fraction, curation.seed));
        row
    };
    let Some(head) = head else {
        let rows: Vec<Example> = new_rows.into_iter().map(placed).collect();
        let report = VersionReport { stats: Stats::of(&rows), ..VersionReport::default() };
        let spec = Spec { selection: None, curation: curation.clone() };
        let version = store.create_dataset_version(name, None, &to_json(&spec), &to_json(&report), &stored_rows(&rows)).await?;
        return info(store, name, Some(version)).await;
    };
    let version = writable(store, &head).await?;
    let mut all = rows(store, name, version).await?;
    let mut written = Vec::with_capacity(new_rows.len());
    for (row, split) in new_rows {
        let row = match all.iter_mut().find(|r| r.id == row.id) {
            Some(existing) => {
                // A replaced row keeps its split unless the writer chose one.
                let split = split.unwrap_or(existing.split);
                *existing = Example { split, ..row };
                existing.clone()
            }
            None => {
                let row = placed((row, split));
                all.push(row.clone());
                row
            }
        };
        written.push(row);
    }
    let report = VersionReport { stats: Stats::of(&all), ..head.report };
    let report = to_json(&report);
    for row in &written {
        let stored = stored_row(row, 0)?;
        store.put_dataset_row(name, version, &stored, &report).await?;
    }
    info(store, name, Some(version)).await
}

/// Removes a row from the latest version of `name` (copying a used version first).
pub async fn remove_row(store: &Store, name: &str, row_id: &str) -> Result<VersionInfo, DatasetError> {
    let head = info(store, name, None).await?;
    if store.dataset_row(name, head.version, row_id).await?.is_none() {
        return Err(DatasetError::NoRow { name: name.to_owned(), row_id: row_id.to_owned() });
    }
    let version = writable(store, &head).await?;
    let mut all = rows(store, name, version).await?;
    all.retain(|r| r.id != row_id);
    let report = to_json(&VersionReport { stats: Stats::of(&all), ..head.report });
    store.delete_dataset_row(name, version, row_id, &report).await?;
    info(store, name, Some(version)).await
}

/// Marks a version as used by a job or an eval (`used_by` names it): it never changes again.
pub async fn mark_used(store: &Store, name: &str, version: i64, used_by: &str) -> Result<(), DatasetError> {
    Ok(store.use_dataset_version(name, version, used_by).await?)
}

/// The version of `head`'s dataset edits go to: `head` itself, or a copy when it was used.
async fn writable(store: &Store, head: &VersionInfo) -> Result<i64, DatasetError> {
    if head.used_by.is_empty() {
        return Ok(head.version);
    }
    Ok(store.copy_dataset_version(&head.name, head.version, &to_json(&head.report)).await?)
}

fn stored_rows(rows: &[Example]) -> Vec<DatasetRow> {
    rows.iter().enumerate().filter_map(|(i, r)| stored_row(r, i as i64).ok()).collect()
}

fn stored_row(row: &Example, idx: i64) -> Result<DatasetRow, DatasetError> {
    Ok(DatasetRow {
        row_id: row.id.clone(),
        idx,
        split: row.split.as_str().to_owned(),
        body: serde_json::to_string(row).map_err(|e| DatasetError::BadInput(e.to_string()))?,
    })
}

fn parse_row(name: &str, row: &DatasetRow) -> Result<Example, DatasetError> {
    serde_json::from_str(&row.body).map_err(|e| {
        DatasetError::Store(StoreError::Unavailable(format!("dataset {name:?} row {}: not a valid row: {e}", row.row_id)))
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}
