//! Datasets kept in the store (migration 9), for fine-tuning jobs and evals: each dataset is a
//! list of versions, each version a list of rows. The store keeps a row's body as JSON text
//! and knows nothing of what is in it (`fungible-datasets` does); it keeps the order (`idx`),
//! the split and the row's id, and what used a version (`dataset_uses`): a job or an eval
//! that used a version makes it immutable, so [`Store::put_dataset_row`] and
//! [`Store::delete_dataset_row`] refuse it and the caller copies it to a new version first.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{Store, StoreError};

/// One version of a dataset, without its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetVersion {
    pub name: String,
    pub version: i64,
    pub created_ms: i64,
    pub description: Option<String>,
    /// How the version was made (filters and curation settings), JSON text.
    pub spec: String,
    /// What curation did and the version's statistics, JSON text.
    pub report: String,
    /// Rows in the version.
    pub rows: i64,
    /// What used the version (job and eval ids); non-empty: the version is immutable.
    pub used_by: Vec<String>,
}

/// One row of a dataset version.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    pub row_id: String,
    /// Position in the version (rows are returned in this order).
    pub idx: i64,
    /// `train` or `validation`.
    pub split: String,
    /// The row as JSON text.
    pub body: String,
}

/// A version that cannot change, or a row or version that is not there.
#[derive(Debug, thiserror::Error)]
pub enum DatasetStoreError {
    #[error("dataset {name:?} version {version} is used by {used_by} and cannot change; edits go to a new version")]
    Used { name: String, version: i64, used_by: String },
    #[error("dataset {name:?} has no version {version}")]
    NoVersion { name: String, version: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DatasetStoreError {
    fn from(e: sqlx::Error) -> DatasetStoreError {
        DatasetStoreError::Store(StoreError::Database(e))
    }
}

/// Rows per multi-row INSERT (6 parameters each, well under both backends' limits).
const ROWS_PER_INSERT: usize = 500;

/// Tries of a write that lost a race (two writers took the same next version or position).
pub(crate) const RACE_TRIES: usize = 5;

/// Whether `e` is a lost race another try wins: a unique key taken meanwhile, or SQLite's
/// snapshot that another writer moved past (SQLITE_BUSY_SNAPSHOT, 517).
pub(crate) fn lost_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation() || db.code().is_some_and(|c| c == "517" || c == "5"),
        _ => false,
    }
}

impl Store {
    /// Adds a new version of `name` (the first is 1) holding `rows`; returns its number.
    /// Concurrent writers each get their own version.
    pub async fn create_dataset_version(
        &self,
        name: &str,
        description: Option<&str>,
        spec: &str,
        report: &str,
        rows: &[DatasetRow],
    ) -> Result<i64, StoreError> {
        let mut tries = 0;
        loop {
            match self.try_create_dataset_version(name, description, spec, report, rows).await {
                Err(StoreError::Database(e)) if lost_race(&e) && tries + 1 < RACE_TRIES => tries += 1,
                other => return other,
            }
        }
    }

    async fn try_create_dataset_version(
        &self,
        name: &str,
        description: Option<&str>,
        spec: &str,
        report: &str,
        rows: &[DatasetRow],
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version = insert_version(&mut tx, name, description, spec, report).await?;
        insert_rows(&mut tx, name, version, rows).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A new version of `name` with the rows of `from` (and its description and spec) and
    /// `report`; returns its number.
    pub async fn copy_dataset_version(&self, name: &str, from: i64, report: &str) -> Result<i64, DatasetStoreError> {
        let mut tries = 0;
        loop {
            match self.try_copy_dataset_version(name, from, report).await {
                Err(DatasetStoreError::Store(StoreError::Database(e))) if lost_race(&e) && tries + 1 < RACE_TRIES => tries += 1,
                other => return other,
            }
        }
    }

    async fn try_copy_dataset_version(&self, name: &str, from: i64, report: &str) -> Result<i64, DatasetStoreError> {
        let mut tx = self.pool.begin().await?;
        let source = sqlx::query("SELECT description, spec FROM datasets WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(from)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| DatasetStoreError::NoVersion { name: name.to_owned(), version: from })?;
        let description: Option<String> = source.try_get(0)?;
        let spec: String = source.try_get(1)?;
        let version = insert_version(&mut tx, name, description.as_deref(), &spec, report).await?;
        sqlx::query("INSERT INTO dataset_rows (name, version, row_id, idx, split, body) SELECT name, $1, row_id, idx, split, body FROM dataset_rows WHERE name = $2 AND version = $3")
            .bind(version)
            .bind(name)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// The latest version of every dataset, by name.
    pub async fn list_datasets(&self) -> Result<Vec<DatasetVersion>, StoreError> {
        let rows = sqlx::query(&format!(
            "{VERSION_SELECT} WHERE d.version = (SELECT MAX(l.version) FROM datasets l WHERE l.name = d.name) ORDER BY d.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        self.versions_of(rows).await
    }

    /// Every version of `name`, oldest first (empty: no such dataset).
    pub async fn dataset_versions(&self, name: &str) -> Result<Vec<DatasetVersion>, StoreError> {
        let rows = sqlx::query(&format!("{VERSION_SELECT} WHERE d.name = $1 ORDER BY d.version"))
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        self.versions_of(rows).await
    }

    /// Version `version` of `name`, or its latest version when `version` is `None`.
    pub async fn dataset_version(&self, name: &str, version: Option<i64>) -> Result<Option<DatasetVersion>, StoreError> {
        let rows = match version {
            Some(v) => {
                sqlx::query(&format!("{VERSION_SELECT} WHERE d.name = $1 AND d.version = $2"))
                    .bind(name)
                    .bind(v)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{VERSION_SELECT} WHERE d.name = $1 ORDER BY d.version DESC LIMIT 1"))
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(self.versions_of(rows).await?.pop())
    }

    async fn versions_of(&self, rows: Vec<AnyRow>) -> Result<Vec<DatasetVersion>, StoreError> {
        let mut versions = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get(0)?;
            let version: i64 = r.try_get(1)?;
            let used_by: Vec<String> =
                sqlx::query_scalar("SELECT used_by FROM dataset_uses WHERE name = $1 AND version = $2 ORDER BY time_ms, used_by")
                    .bind(&name)
                    .bind(version)
                    .fetch_all(&self.pool)
                    .await?;
            versions.push(DatasetVersion {
                name,
                version,
                created_ms: r.try_get(2)?,
                description: r.try_get(3)?,
                spec: r.try_get(4)?,
                report: r.try_get(5)?,
                rows: r.try_get(6)?,
                used_by,
            });
        }
        Ok(versions)
    }

    /// Rows of a version in order: those after position `after_idx` (all: `-1`), at most
    /// `limit`, of one split when `split` is set.
    pub async fn dataset_rows(
        &self,
        name: &str,
        version: i64,
        split: Option<&str>,
        after_idx: i64,
        limit: i64,
    ) -> Result<Vec<DatasetRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT row_id, idx, split, body FROM dataset_rows WHERE name = $1 AND version = $2 AND idx > $3 AND ($4 = '' OR split = $4) ORDER BY idx LIMIT $5",
        )
        .bind(name)
        .bind(version)
        .bind(after_idx)
        .bind(split.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_of).collect()
    }

    /// One row of a version.
    pub async fn dataset_row(&self, name: &str, version: i64, row_id: &str) -> Result<Option<DatasetRow>, StoreError> {
        let row = sqlx::query("SELECT row_id, idx, split, body FROM dataset_rows WHERE name = $1 AND version = $2 AND row_id = $3")
            .bind(name)
            .bind(version)
            .bind(row_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_of).transpose()
    }

    /// Adds or replaces a row of an unused version; a new row goes after the last one
    /// (its `idx` is ignored), a replaced one keeps its place. Also stores `report`.
    pub async fn put_dataset_row(&self, name: &str, version: i64, row: &DatasetRow, report: &str) -> Result<(), DatasetStoreError> {
        let mut tries = 0;
        loop {
            match self.try_put_dataset_row(name, version, row, report).await {
                Err(DatasetStoreError::Store(StoreError::Database(e))) if lost_race(&e) && tries + 1 < RACE_TRIES => tries += 1,
                other => return other,
            }
        }
    }

    async fn try_put_dataset_row(&self, name: &str, version: i64, row: &DatasetRow, report: &str) -> Result<(), DatasetStoreError> {
        let mut tx = self.pool.begin().await?;
        self.check_unused(&mut tx, name, version).await?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT idx FROM dataset_rows WHERE name = $1 AND version = $2 AND row_id = $3")
                .bind(name)
                .bind(version)
                .bind(&row.row_id)
                .fetch_optional(&mut *tx)
                .await?;
        let idx = match existing {
            Some(idx) => {
                sqlx::query("DELETE FROM dataset_rows WHERE name = $1 AND version = $2 AND row_id = $3")
                    .bind(name)
                    .bind(version)
                    .bind(&row.row_id)
                    .execute(&mut *tx)
                    .await?;
                idx
            }
            None => {
                let last: Option<i64> = sqlx::query_scalar("SELECT MAX(idx) FROM dataset_rows WHERE name = $1 AND version = $2")
                    .bind(name)
                    .bind(version)
                    .fetch_one(&mut *tx)
                    .await?;
                last.map_or(0, |l| l + 1)
            }
        };
        let placed = DatasetRow { idx, ..row.clone() };
        insert_rows(&mut tx, name, version, std::slice::from_ref(&placed)).await?;
        set_report(&mut tx, name, version, report).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a row of an unused version and stores `report`; whether the row was there.
    pub async fn delete_dataset_row(&self, name: &str, version: i64, row_id: &str, report: &str) -> Result<bool, DatasetStoreError> {
        let mut tx = self.pool.begin().await?;
        self.check_unused(&mut tx, name, version).await?;
        let done = sqlx::query("DELETE FROM dataset_rows WHERE name = $1 AND version = $2 AND row_id = $3")
            .bind(name)
            .bind(version)
            .bind(row_id)
            .execute(&mut *tx)
            .await?;
        set_report(&mut tx, name, version, report).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a version as used by `used_by` (a job or eval id): it never changes again.
    pub async fn use_dataset_version(&self, name: &str, version: i64, used_by: &str) -> Result<(), DatasetStoreError> {
        // One statement, no read-then-write transaction: several instances (a route's
        // examples at start), or several tasks on one SQLite file, may mark a use at once.
        let inserted = sqlx::query(
            "INSERT INTO dataset_uses (name, version, used_by, time_ms) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM datasets WHERE name = $1 AND version = $2) \
             ON CONFLICT (name, version, used_by) DO NOTHING",
        )
        .bind(name)
        .bind(version)
        .bind(used_by)
        .bind(crate::now_ms())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM datasets WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(DatasetStoreError::NoVersion { name: name.to_owned(), version });
            }
        }
        Ok(())
    }

    /// Takes back a use that did not happen (a job whose launch failed).
    pub async fn unuse_dataset_version(&self, name: &str, version: i64, used_by: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dataset_uses WHERE name = $1 AND version = $2 AND used_by = $3")
            .bind(name)
            .bind(version)
            .bind(used_by)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes every version of `name` that nothing used; the versions deleted.
    pub async fn delete_unused_dataset_versions(&self, name: &str) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let unused: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM datasets d WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM dataset_uses u WHERE u.name = d.name AND u.version = d.version) ORDER BY version",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        for version in &unused {
            for table in ["dataset_rows", "datasets"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE name = $1 AND version = $2"))
                    .bind(name)
                    .bind(*version)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(unused)
    }

    async fn check_unused(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
        version: i64,
    ) -> Result<(), DatasetStoreError> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM datasets WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&mut **tx)
            .await?;
        if exists.is_none() {
            return Err(DatasetStoreError::NoVersion { name: name.to_owned(), version });
        }
        let used: Vec<String> = sqlx::query_scalar("SELECT used_by FROM dataset_uses WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_all(&mut **tx)
            .await?;
        if !used.is_empty() {
            return Err(DatasetStoreError::Used { name: name.to_owned(), version, used_by: used.join(", ") });
        }
        Ok(())
    }
}

const VERSION_SELECT: &str = "SELECT d.name, d.version, d.created_ms, d.description, d.spec, d.report, (SELECT COUNT(*) FROM dataset_rows r WHERE r.name = d.name AND r.version = d.version) FROM datasets d";

fn row_of(r: &AnyRow) -> Result<DatasetRow, StoreError> {
    Ok(DatasetRow { row_id: r.try_get(0)?, idx: r.try_get(1)?, split: r.try_get(2)?, body: r.try_get(3)? })
}

/// The next version of `name` (the first is 1), inserted in `tx`.
async fn insert_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    description: Option<&str>,
    spec: &str,
    report: &str,
) -> Result<i64, StoreError> {
    let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM datasets WHERE name = $1").bind(name).fetch_one(&mut **tx).await?;
    let version = latest.unwrap_or(0) + 1;
    sqlx::query("INSERT INTO datasets (name, version, created_ms, description, spec, report) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(name)
        .bind(version)
        .bind(crate::now_ms())
        .bind(description)
        .bind(spec)
        .bind(report)
        .execute(&mut **tx)
        .await?;
    Ok(version)
}

async fn set_report(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    version: i64,
    report: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE datasets SET report = $1 WHERE name = $2 AND version = $3")
        .bind(report)
        .bind(name)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    version: i64,
    rows: &[DatasetRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from("INSERT INTO dataset_rows (name, version, row_id, idx, split, body) VALUES ");
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
        }
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query.bind(name).bind(version).bind(&row.row_id).bind(row.idx).bind(&row.split).bind(&row.body);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, idx: i64, split: &str) -> DatasetRow {
        DatasetRow { row_id: id.into(), idx, split: split.into(), body: format!("{{\"id\":\"{id}\"}}") }
    }

    #[tokio::test]
    async fn versions_rows_edits_and_immutability_once_used() {
        let dir = tempfile_dir();
        let store = Store::open(&crate::sqlite_url(&dir.join(format!("{}.db", crate::new_id())))).await.unwrap();
        let rows: Vec<DatasetRow> = (0..1_203).map(|i| row(&format!("r{i:04}"), i, if i % 10 == 0 { "validation" } else { "train" })).collect();
        let v1 = store.create_dataset_version("support", Some("first"), "{}", "{}", &rows).await.unwrap();
        assert_eq!(v1, 1);
        let listed = store.list_datasets().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].rows, 1_203);
        assert!(listed[0].used_by.is_empty());

        let page = store.dataset_rows("support", 1, None, -1, 1_000).await.unwrap();
        assert_eq!(page.len(), 1_000);
        let rest = store.dataset_rows("support", 1, None, page[999].idx, 1_000).await.unwrap();
        assert_eq!(rest.len(), 203);
        let validation = store.dataset_rows("support", 1, Some("validation"), -1, 10_000).await.unwrap();
        assert_eq!(validation.len(), 121);

        // Editing an unused version: a replaced row keeps its place, a new one goes last.
        store.put_dataset_row("support", 1, &DatasetRow { body: "{\"edited\":true}".into(), ..row("r0001", 99, "train") }, "{\"n\":1}").await.unwrap();
        let edited = store.dataset_row("support", 1, "r0001").await.unwrap().unwrap();
        assert_eq!((edited.idx, edited.body.as_str()), (1, "{\"edited\":true}"));
        store.put_dataset_row("support", 1, &row("new", 0, "train"), "{}").await.unwrap();
        assert_eq!(store.dataset_row("support", 1, "new").await.unwrap().unwrap().idx, 1_203);
        assert!(store.delete_dataset_row("support", 1, "r0002", "{}").await.unwrap());
        assert!(!store.delete_dataset_row("support", 1, "r0002", "{}").await.unwrap());

        // Once used, it never changes; a copy takes the edits.
        store.use_dataset_version("support", 1, "ftjob_1").await.unwrap();
        store.use_dataset_version("support", 1, "ftjob_1").await.unwrap();
        let err = store.put_dataset_row("support", 1, &row("x", 0, "train"), "{}").await.unwrap_err();
        assert!(matches!(err, DatasetStoreError::Used { .. }), "{err}");
        assert!(store.delete_dataset_row("support", 1, "r0003", "{}").await.is_err());
        let v2 = store.copy_dataset_version("support", 1, "{}").await.unwrap();
        assert_eq!(v2, 2);
        store.delete_dataset_row("support", 2, "r0003", "{}").await.unwrap();
        let versions = store.dataset_versions("support").await.unwrap();
        assert_eq!(versions.iter().map(|v| (v.version, v.rows)).collect::<Vec<_>>(), [(1, 1_203), (2, 1_202)]);
        assert_eq!(versions[0].used_by, ["ftjob_1"]);
        assert_eq!(versions[1].description.as_deref(), Some("first"));
        assert_eq!(store.dataset_version("support", None).await.unwrap().unwrap().version, 2);
        assert!(store.dataset_version("support", Some(7)).await.unwrap().is_none());
        assert!(matches!(store.use_dataset_version("support", 7, "x").await, Err(DatasetStoreError::NoVersion { .. })));

        // Concurrent builds each get a version of their own.
        let (a, b) = tokio::join!(
            store.create_dataset_version("race", None, "{}", "{}", &rows[..10]),
            store.create_dataset_version("race", None, "{}", "{}", &rows[..10])
        );
        let mut got = [a.unwrap(), b.unwrap()];
        got.sort();
        assert_eq!(got, [1, 2]);

        // Deleting keeps what was used.
        assert_eq!(store.delete_unused_dataset_versions("support").await.unwrap(), [2]);
        assert_eq!(store.dataset_versions("support").await.unwrap().len(), 1);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join("fungible-store-dataset-tests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
