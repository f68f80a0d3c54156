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

/// Milliseconds since the epoch of a time as [`rfc3339`] writes it; `None`
/// if `text` is not one.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let ms: u64 = frac.get(..3).unwrap_or(frac).parse().ok()?;
    // Days since 1970-01-01 (Howard Hinnant's algorithm, the other way).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = u64::try_from(era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468).ok()?;
    Some((days * 86_400 + h * 3600 + min * 60 + s) * 1000 + ms)
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
    fn times_read_back() {
        for ms in [0, 1_795_000_000_123, 951_782_400_000 /* 2000-02-29 */] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn the_clock_agrees_with_date() {
        let out = std::process::Command::new("date").arg("+%s").output().expect("date(1)");
        let date: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("seconds");
        assert!(now_ms() / 1000 >= date && now_ms() / 1000 <= date + 5);
    }
}
