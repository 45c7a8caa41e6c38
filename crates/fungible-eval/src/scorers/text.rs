//! Text scorers: exact, normalised and contained match, regex, and the GSM8K-style numeric
//! answer match (the last number in the answer).

use std::sync::LazyLock;

use regex::Regex;

use super::Score;

pub fn exact(output: &str, reference: &str) -> Score {
    let passed = output.trim() == reference.trim();
    Score::pass_fail(
        passed,
        if passed {
            "equal".to_owned()
        } else {
            format!("expected {:?}", short(reference.trim()))
        },
    )
}

/// Lowercase, punctuation dropped, the articles a/an/the dropped, whitespace collapsed (the
/// SQuAD normalisation).
pub fn normalize(s: &str) -> String {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    lowered
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn normalized(output: &str, reference: &str) -> Score {
    let (o, r) = (normalize(output), normalize(reference));
    let passed = o == r;
    Score::pass_fail(
        passed,
        if passed {
            "equal after normalising".to_owned()
        } else {
            format!("expected {:?}, got {:?}", short(&r), short(&o))
        },
    )
}

pub fn contains(output: &str, reference: &str) -> Score {
    let (o, r) = (normalize(output), normalize(reference));
    // An empty reference is contained in everything: compare padded words so "4" does not
    // match inside "42".
    let passed = !r.is_empty() && format!(" {o} ").contains(&format!(" {r} "));
    Score::pass_fail(
        passed,
        if passed {
            "contains the reference".to_owned()
        } else {
            format!("{:?} not found", short(&r))
        },
    )
}

pub fn regex(output: &str, re: &Regex) -> Score {
    match re.find(output) {
        Some(m) => Score::pass_fail(true, format!("matched {:?}", short(m.as_str()))),
        None => Score::pass_fail(false, format!("no match for /{}/", re.as_str())),
    }
}

#[allow(clippy::unwrap_used)] // a constant pattern
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    // -1,234.5 / 1234 / .5 / 3e5; thousands separators only in groups of three.
    Regex::new(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?").unwrap()
});

/// The numbers in `s`, in order.
pub fn numbers(s: &str) -> Vec<f64> {
    NUMBER
        .find_iter(s)
        .filter(|m| m.as_str().chars().any(|c| c.is_ascii_digit()))
        .filter_map(|m| m.as_str().replace(',', "").parse::<f64>().ok())
        .collect()
}

/// `s` read as one number (`"$1,007"`, `"42."`, `"-3.5"`); `None` when it is not only a number.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches(['.', '%'])
        .trim();
    if t.is_empty() {
        return None;
    }
    let m = NUMBER.find(t)?;
    (m.start() == 0 && m.end() == t.len())
        .then(|| t.replace(',', "").parse().ok())
        .flatten()
}

/// The last number in the answer against the reference (after `####` when present, else
/// its last number).
pub fn numeric(output: &str, reference: &str) -> Score {
    let reference = reference.rsplit_once("####").map_or(reference, |(_, r)| r);
    let Some(want) = parse_number(reference).or_else(|| numbers(reference).last().copied()) else {
        return Score::pass_fail(
            false,
            format!("the reference {:?} has no number", short(reference)),
        );
    };
    // Prefer an explicit final answer ("The answer is 42", "#### 42"), else the last number.
    let got = final_answer(output).or_else(|| numbers(output).last().copied());
    match got {
        None => Score::pass_fail(
            false,
            format!("no number in the answer (expected {})", fmt(want)),
        ),
        Some(got) => {
            let passed = (got - want).abs() <= 1e-6 * want.abs().max(1.0);
            Score::pass_fail(passed, format!("got {}, expected {}", fmt(got), fmt(want)))
        }
    }
}

#[allow(clippy::unwrap_used)] // a constant pattern
static FINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:answer\s*(?:is|:)|####)\s*\**\s*\$?\s*(-?[\d,]*\.?\d+)").unwrap()
});

fn final_answer(output: &str) -> Option<f64> {
    let caps = FINAL.captures_iter(output).last()?;
    caps.get(1)?.as_str().replace(',', "").parse().ok()
}

fn fmt(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn short(s: &str) -> String {
    crate::truncate_chars(s, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_normalized() {
        assert!(exact(" Paris\n", "Paris").passed);
        assert!(!exact("paris", "Paris").passed);
        assert!(normalized("The  Paris!", "paris").passed);
        assert!(!normalized("Paris, France", "paris").passed);
    }

    #[test]
    fn contains_matches_whole_words() {
        assert!(contains("I think it is Paris, France.", "paris").passed);
        assert!(!contains("The answer is 42", "4").passed);
        assert!(!contains("anything", "").passed);
    }

    #[test]
    fn regex_matches_anywhere() {
        let re = Regex::new(r"^\d{3}-\d{4}$").unwrap();
        assert!(regex("555-1234", &re).passed);
        assert!(!regex("call 555-1234", &re).passed);
    }

    #[test]
    fn numeric_takes_the_final_answer_or_the_last_number() {
        let cases = [
            ("She has 3 apples and buys 4, so 3 + 4 = 7.", "7", true),
            (
                "The answer is 1,007 dollars. (Checked with 3 steps.)",
                "#### 1007",
                true,
            ),
            ("3 + 4 = 7\n#### 7", "7", true),
            ("It costs $18.00", "18", true),
            ("-5 degrees", "-5", true),
            ("The answer is 8.", "7", false),
            ("no idea", "7", false),
            ("0.5", ".5", true),
            ("12 then 13", "12", false),
        ];
        for (output, reference, want) in cases {
            let s = numeric(output, reference);
            assert_eq!(s.passed, want, "{output:?} vs {reference:?}: {}", s.detail);
        }
        assert!(numeric("x", "no number").detail.contains("has no number"));
    }

    #[test]
    fn parse_number_accepts_only_a_number() {
        assert_eq!(parse_number("$1,234.5"), Some(1234.5));
        assert_eq!(parse_number("42."), Some(42.0));
        assert_eq!(parse_number("Paris"), None);
        assert_eq!(parse_number("4 apples"), None);
    }
}
