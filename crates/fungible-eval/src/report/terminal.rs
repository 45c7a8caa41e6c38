//! The report as plain text for the terminal: aligned tables, no colour (it is also what a
//! CI log shows).

use super::{Report, pct, points, usd};

/// A text table: the first column left-aligned, the others right-aligned.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths = vec![0usize; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |row: &Vec<String>| {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let cell = row.get(i).map(String::as_str).unwrap_or("");
                    let pad = widths[i] - cell.chars().count();
                    if i == 0 {
                        format!("{cell}{}", " ".repeat(pad))
                    } else {
                        format!("{}{cell}", " ".repeat(pad))
                    }
                })
                .collect();
            format!("  {}\n", cells.join("  ").trim_end())
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("  {}\n", rule.join("  ")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

pub(crate) fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".to_owned())
}

pub(crate) fn ms(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}s", v as f64 / 1000.0)
    } else {
        format!("{v}ms")
    }
}

pub(crate) fn tokens(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.1}M", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1}k", v as f64 / 1e3)
    } else {
        v.to_string()
    }
}

pub(crate) fn report(r: &Report) -> String {
    let mut out = format!(
        "eval {} on {} ({} items, scorers: {})\n\n",
        r.run.run_id,
        r.run.dataset_name,
        r.run.items,
        if r.run.scorers.is_empty() {
            "-".to_owned()
        } else {
            r.run.scorers.join(", ")
        }
    );
    let mut t = Table::new(&[
        "model",
        "accuracy",
        "95% CI",
        "answered",
        "errors",
        "cost",
        "cost/item",
        "tokens in",
        "tokens out",
        "p50",
        "p95",
    ]);
    for m in &r.models {
        t.row(vec![
            m.model.clone(),
            opt(m.accuracy, pct),
            opt(m.accuracy_ci, |c| format!("{}-{}", pct(c.low), pct(c.high))),
            m.answered.to_string(),
            if m.errors == 0 {
                "0".to_owned()
            } else {
                format!("{} ({})", m.errors, pct(m.error_rate.unwrap_or(0.0)))
            },
            opt(m.cost_usd, usd),
            opt(m.cost_per_item_usd, usd),
            tokens(m.input_tokens),
            tokens(m.output_tokens),
            opt(m.latency_p50_ms, ms),
            opt(m.latency_p95_ms, ms),
        ]);
    }
    out.push_str(&t.render());

    if !r.comparisons.is_empty() {
        out.push_str(&format!(
            "\nvs baseline {} (paired, items both answered; margin {} points)\n",
            r.baseline.as_deref().unwrap_or("-"),
            points(r.margin).trim_start_matches('+')
        ));
        let mut t = Table::new(&[
            "model",
            "items",
            "diff",
            "95% CI",
            "McNemar p",
            "cost ratio",
            "verdict",
        ]);
        for c in &r.comparisons {
            let p = c.paired.as_ref();
            t.row(vec![
                c.model.clone(),
                opt(p, |p| p.n.to_string()),
                opt(p, |p| points(p.diff)),
                opt(p, |p| {
                    format!("{} to {}", points(p.ci.low), points(p.ci.high))
                }),
                opt(p, |p| format!("{:.3}", p.mcnemar.exact_p)),
                opt(c.cost_ratio, |x| format!("{x:.2}x")),
                c.verdict.clone(),
            ]);
        }
        out.push_str(&t.render());
    }

    if !r.recommendation.is_empty() {
        out.push('\n');
        for s in &r.recommendation {
            out.push_str(&format!("* {s}\n"));
        }
    }
    if !r.warnings.is_empty() {
        out.push('\n');
        for w in &r.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_are_aligned() {
        let mut t = Table::new(&["model", "acc"]);
        t.row(vec!["a/very-long-model".into(), "9.0%".into()]);
        t.row(vec!["b".into(), "100.0%".into()]);
        assert_eq!(
            t.render(),
            "  model                 acc\n  -----------------  ------\n  a/very-long-model    9.0%\n  b                  100.0%\n"
        );
    }
}
