//! Reads a run directory back, tolerantly: a line cut off by a kill (or any other line that
//! does not parse) is skipped and noted in the report's warnings, never fatal; a pair written
//! twice keeps its last line.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;

use super::{LoadedRun, ReportError};
use crate::results::{
    ItemResult, PAIRWISE_FILE, PairwiseResult, RESULTS_FILE, RUN_META_FILE, RunMeta,
};

pub(crate) fn load(dir: &Path) -> Result<LoadedRun, ReportError> {
    let meta_path = dir.join(RUN_META_FILE);
    let text = std::fs::read_to_string(&meta_path).map_err(|source| ReportError::Read {
        path: meta_path.clone(),
        source,
    })?;
    let meta: RunMeta = serde_json::from_str(&text).map_err(|e| ReportError::Invalid {
        path: meta_path.clone(),
        message: format!("not a run.json: {e}"),
    })?;

    let mut warnings = Vec::new();
    let lines: Vec<ItemResult> = read_jsonl(&dir.join(RESULTS_FILE), &mut warnings)?;
    let pairwise: Vec<PairwiseResult> = read_jsonl(&dir.join(PAIRWISE_FILE), &mut warnings)?;

    let mut results = BTreeMap::new();
    let mut duplicates = 0u64;
    for r in lines {
        if results
            .insert((r.item_id.clone(), r.model.clone()), r)
            .is_some()
        {
            duplicates += 1;
        }
    }
    if duplicates > 0 {
        warnings.push(format!(
            "{RESULTS_FILE}: {duplicates} (item, model) pairs appear more than once; the last \
             line of each is used"
        ));
    }

    let mut models = meta.models.clone();
    let extra: BTreeSet<&String> = results
        .keys()
        .map(|(_, m)| m)
        .filter(|m| !meta.models.contains(m))
        .collect();
    if !extra.is_empty() {
        warnings.push(format!(
            "{RESULTS_FILE}: results for models not listed in {RUN_META_FILE}: {}",
            extra
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        models.extend(extra.into_iter().cloned());
    }
    // A model listed twice on the command line is still one column.
    let mut seen = BTreeSet::new();
    models.retain(|m| seen.insert(m.clone()));

    let mut items: Vec<String> = results
        .keys()
        .map(|(i, _)| i.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    items.sort_by(|a, b| natural_cmp(a, b));

    Ok(LoadedRun {
        meta,
        models,
        items,
        results,
        pairwise,
        warnings,
    })
}

/// Reads a JSONL file; a missing file is empty, unreadable lines are skipped and counted.
fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<T>, ReportError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) => bad.push(n + 1),
        }
    }
    if !bad.is_empty() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let shown: Vec<String> = bad.iter().take(5).map(|n| n.to_string()).collect();
        let more = if bad.len() > 5 { ", ..." } else { "" };
        warnings.push(format!(
            "{name}: {} unreadable line(s) skipped (line {}{more}); a run killed mid-write \
             leaves one",
            bad.len(),
            shown.join(", ")
        ));
    }
    Ok(out)
}

/// Compares ids so that embedded numbers sort by value: `item-2` < `item-10`. Ties (`07` vs
/// `7`) fall back to plain byte order, so the order is total.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (trim_zeros(&x[..nx]), trim_zeros(&y[..ny]));
                let ord = dx.len().cmp(&dy.len()).then_with(|| dx.cmp(dy));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn ids_sort_naturally() {
        let mut ids = vec![
            "item-10", "item-2", "b", "item-1", "a10", "a9", "007", "7", "item-02",
        ];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            ids,
            vec![
                "007", "7", "a9", "a10", "b", "item-1", "item-02", "item-2", "item-10"
            ]
        );
    }
}
