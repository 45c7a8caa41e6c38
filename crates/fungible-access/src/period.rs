//! Budget periods as names and reset times, in UTC.

use fungible_store::BudgetPeriod;

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

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 -> (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse: (year, month, day) -> days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
