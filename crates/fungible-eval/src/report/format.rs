//! How numbers are written in the report's sentences and tables.

/// Formats a fraction as percentage points with one decimal: `0.853` -> `85.3%`.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Formats a difference in accuracy points with its sign: `-0.004` -> `-0.4`.
pub(crate) fn points(x: f64) -> String {
    let v = x * 100.0;
    let v = if v.abs() < 0.05 { 0.0 } else { v };
    if v > 0.0 {
        format!("+{v:.1}")
    } else {
        format!("{v:.1}")
    }
}

/// Formats US dollars with three significant digits (`$0.000123`, `$1.23`, `$1234`).
pub(crate) fn usd(x: f64) -> String {
    if x == 0.0 {
        return "$0".to_owned();
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 10) as usize;
    format!("${x:.decimals$}")
}

/// Formats a cost ratio for a sentence: `0.18` -> `18% of the cost`, `1.4` -> `1.4x the cost`.
pub(crate) fn cost_phrase(ratio: f64) -> String {
    if ratio == 0.0 {
        "no cost".to_owned()
    } else if (ratio - 1.0).abs() < 0.005 {
        "the same cost".to_owned()
    } else if ratio < 1.0 {
        let p = ratio * 100.0;
        if p < 1.0 {
            format!("{p:.2}% of the cost")
        } else {
            format!("{p:.0}% of the cost")
        }
    } else {
        format!("{ratio:.1}x the cost")
    }
}
