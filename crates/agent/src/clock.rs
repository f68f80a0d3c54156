//! The one wall clock of the agent and the CLI: milliseconds since the
//! Unix epoch, and their RFC 3339 form (what docker prints).

/// Now.
pub fn now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-26T10:00:00.123000000Z` for `ms` since the epoch (UTC), as
/// docker prints times.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123000000Z");
    }

    #[test]
    fn the_clock_agrees_with_date() {
        let out = std::process::Command::new("date").arg("+%s").output().expect("date(1)");
        let date: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("seconds");
        assert!(now_ms() / 1000 >= date && now_ms() / 1000 <= date + 5);
    }
}
