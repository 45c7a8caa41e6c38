//! Budget periods as names and reset times, in UTC.

use fungible_store::BudgetPeriod;
use fungible_types::date::{civil_from_days, days_from_civil};

const DAY_MS: i64 = 86_400_000;

/// The period `now_ms` falls in: its name (`2026-11-30`, `2026-11`, `total`) and when the
/// next one starts (`None` for `total`).
pub fn window(period: BudgetPeriod, now_ms: i64) -> (String, Option<i64>) {
    let days = now_ms.div_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    match period {
        BudgetPeriod::Daily => (format!("{y:04}-{m:02}-{d:02}"), Some((days + 1) * DAY_MS)),
        BudgetPeriod::Monthly => {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                format!("{y:04}-{m:02}"),
                Some(days_from_civil(ny, nm, 1) * DAY_MS),
            )
        }
        BudgetPeriod::Total => ("total".to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_named_and_reset_in_utc() {
        // 2026-11-30T01:32:39Z
        let now = 1_796_002_359_000;
        let (name, reset) = window(BudgetPeriod::Daily, now);
        assert_eq!(name, "2026-11-30");
        assert_eq!(reset, Some(1_796_083_200_000)); // 2026-12-01T00:00:00Z
        let (name, reset) = window(BudgetPeriod::Monthly, now);
        assert_eq!(name, "2026-11");
        assert_eq!(reset, Some(1_796_083_200_000));
        assert_eq!(window(BudgetPeriod::Total, now), ("total".into(), None));
        // December rolls into January of the next year; leap days exist.
        let (name, reset) = window(BudgetPeriod::Monthly, 1_798_675_200_000); // 2026-12-31
        assert_eq!(name, "2026-12");
        assert_eq!(reset, Some(1_798_761_600_000)); // 2027-01-01
        assert_eq!(window(BudgetPeriod::Daily, 951_782_400_000).0, "2000-02-29");
        assert_eq!(window(BudgetPeriod::Daily, 0).0, "1970-01-01");
    }
}
