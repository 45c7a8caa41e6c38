//! Personal data and secrets in text: e-mail addresses, phone numbers, payment card numbers
//! (Luhn-checked, so order numbers stay), IBANs (checksum-checked) and API keys, found and
//! replaced by a placeholder naming the kind (`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`,
//! `[SECRET]`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

/// A kind of personal data or secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    Secret,
    Email,
    Card,
    Iban,
    Phone,
}

impl PiiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Secret => "secret",
            PiiKind::Email => "email",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::Phone => "phone",
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Secret => "[SECRET]",
            PiiKind::Email => "[EMAIL]",
            PiiKind::Card => "[CARD]",
            PiiKind::Iban => "[IBAN]",
            PiiKind::Phone => "[PHONE]",
        }
    }
}

/// The patterns, tried in this order: a secret can contain what looks like a phone number,
/// and an IBAN holds runs of digits a card or phone pattern would also take.
static PATTERNS: LazyLock<Vec<(PiiKind, Regex)>> = LazyLock::new(|| {
    let pattern = |kind, re: &str| (kind, Regex::new(re).expect("a valid built-in pattern"));
    vec![
        pattern(
            PiiKind::Secret,
            concat!(
                r"\b(?:sk-(?:proj-|ant-(?:api[0-9][0-9]-)?)?[A-Za-z0-9_\-]{20,}",
                r"|AKIA[0-9A-Z]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{36,}",
                r"|github_pat_[A-Za-z0-9_]{40,}",
                r"|xox[abprs]-[A-Za-z0-9\-]{10,}",
                r"|AIza[0-9A-Za-z_\-]{35}",
                r"|glpat-[A-Za-z0-9_\-]{20,}",
                r"|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})",
                r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{20,}=*",
            ),
        ),
        pattern(PiiKind::Email, r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"),
        pattern(PiiKind::Iban, r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        // Grouped 4-4-4-x and Amex's 4-6-5, or 13 to 19 digits in a row; card numbers start
        // with 2 to 6 (so millisecond timestamps, which start with 1, stay).
        pattern(
            PiiKind::Card,
            r"\b[2-6][0-9]{3}[ \-][0-9]{4}[ \-][0-9]{4}[ \-][0-9]{1,7}\b|\b3[0-9]{3}[ \-][0-9]{6}[ \-][0-9]{5}\b|\b[2-6][0-9]{12,18}\b",
        ),
        pattern(
            PiiKind::Phone,
            concat!(
                // International (+country), national with a trunk 0, North American.
                r"\+[0-9]{1,3}[ .\-]?(?:\(?[0-9]{1,4}\)?[ .\-]?){1,4}[0-9]{2,4}\b",
                r"|\b0[0-9]{1,4}[ .\-][0-9]{2,4}[ .\-][0-9]{2,4}(?:[ .\-][0-9]{2,4})?\b",
                r"|\([0-9]{3}\) ?[0-9]{3}[ .\-][0-9]{4}\b|\b[0-9]{3}[.\-][0-9]{3}[.\-][0-9]{4}\b",
            ),
        ),
    ]
});

/// What a scrub replaced, per kind.
pub type PiiCounts = BTreeMap<PiiKind, usize>;

/// `text` with every match replaced by its placeholder, and what was replaced. Matches that
/// fail their checksum (cards, IBANs) or have too few digits (phones) stay.
pub fn scrub(text: &str, counts: &mut PiiCounts) -> String {
    let mut out = text.to_owned();
    for (kind, re) in PATTERNS.iter() {
        if !re.is_match(&out) {
            continue;
        }
        let mut replaced = String::with_capacity(out.len());
        let mut last = 0;
        for m in re.find_iter(&out) {
            if !valid(*kind, m.as_str()) {
                continue;
            }
            replaced.push_str(&out[last..m.start()]);
            replaced.push_str(kind.placeholder());
            last = m.end();
            *counts.entry(*kind).or_default() += 1;
        }
        replaced.push_str(&out[last..]);
        out = replaced;
    }
    out
}

fn valid(kind: PiiKind, found: &str) -> bool {
    let digits: Vec<u32> = found.chars().filter_map(|c| c.to_digit(10)).collect();
    match kind {
        PiiKind::Card => luhn(&digits),
        PiiKind::Iban => iban_checksum(found),
        // Nine digits at least: dates (8 digits: 05.03.2024) are not phone numbers.
        PiiKind::Phone => (9..=15).contains(&digits.len()),
        PiiKind::Secret | PiiKind::Email => true,
    }
}

fn luhn(digits: &[u32]) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1.
fn iban_checksum(found: &str) -> bool {
    let compact: Vec<char> = found.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) || !compact.iter().all(char::is_ascii_alphanumeric) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(compact[..4].iter());
    let mut remainder: u64 = 0;
    for c in rearranged {
        let value = match c.to_digit(36) {
            Some(v) => u64::from(v),
            None => return false,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(text: &str) -> (String, PiiCounts) {
        let mut counts = PiiCounts::new();
        (scrub(text, &mut counts), counts)
    }

    #[test]
    fn each_kind_is_replaced_and_counted() {
        let (text, counts) = scrubbed(
            "Mail jane.doe+work@example.co.uk or call +44 20 7946 0958. Card 4111 1111 1111 1111, \
             IBAN GB82 WEST 1234 5698 7654 32, key sk-proj-abcdefghijklmnopqrstuvwx1234.",
        );
        assert_eq!(text, "Mail [EMAIL] or call [PHONE]. Card [CARD], IBAN [IBAN], key [SECRET].");
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [(PiiKind::Secret, 1), (PiiKind::Email, 1), (PiiKind::Card, 1), (PiiKind::Iban, 1), (PiiKind::Phone, 1)]
        );
    }

    #[test]
    fn numbers_that_fail_their_checks_stay() {
        // Not Luhn-valid, a bad IBAN checksum, a year, a short order number, a version.
        let input = "Order 4111 1111 1111 1112, GB00 WEST 1234 5698 7654 32, in 2024, #12345, v1.2.3";
        let (text, counts) = scrubbed(input);
        assert_eq!(text, input);
        assert!(counts.is_empty());
    }

    #[test]
    fn dates_timestamps_other_scripts_and_a_card_with_its_code() {
        // Dates and millisecond timestamps are not phones or cards; digits of other scripts
        // neither panic nor match; a card followed by its code is still found.
        let input = "on 05.03.2024 or 01-02-2024 at 1765000000000, GB\u{0967}\u{0968} WEST 1234 5698 7654 32";
        let (text, counts) = scrubbed(input);
        assert_eq!(text, input);
        assert!(counts.is_empty(), "{counts:?}");
        let (text, _) = scrubbed("card 4111 1111 1111 1111 123, call 020 7946 0958");
        assert_eq!(text, "card [CARD] 123, call [PHONE]");
        let (text, _) = scrubbed("amex 3782 822463 10005 and 4111111111111111");
        assert_eq!(text, "amex [CARD] and [CARD]");
    }

    #[test]
    fn other_secret_shapes() {
        for secret in [
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
            "xoxb-1234567890-abcdefghij",
            "AIzaSyA-1234567890abcdefghijklmnopqrstu",
            "Bearer abcdefghijklmnopqrstuvwxyz012345",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        ] {
            let (text, counts) = scrubbed(&format!("token: {secret} end"));
            assert_eq!(text, "token: [SECRET] end", "{secret}");
            assert_eq!(counts[&PiiKind::Secret], 1);
        }
    }
}
