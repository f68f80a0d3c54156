//! Values docker writes the same way in flags and compose files:
//! durations in Go's grammar, sizes, CPUs and ratios. One parser each, for
//! the CLI's flags and for stacks.

/// A duration in docker's (Go's) grammar: a sequence of numbers with units
/// `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`, such as `300ms`, `1m30s`, `1.5h`;
/// `0` alone needs no unit. In milliseconds, rounded.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use a number with a unit (ns, us, ms, s, m, h), such as 500ms, 90s or 1m30s"
        )
    };
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let n: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = tail;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

/// A duration in docker's grammar, in whole seconds (at least one).
pub fn duration_secs(text: &str) -> Result<u64, String> {
    let ms = duration_ms(text)?;
    if ms < 1000 {
        return Err(format!("invalid duration {text:?}: use at least 1s"));
    }
    Ok(ms / 1000)
}

/// A size such as `64M`, `1g`, `512k` or `1048576`, in bytes.
pub fn bytes(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size {text:?}: use a number with an optional unit b, k, m or g, such as 64M");
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
    let (number, scale) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ => (trimmed, 1),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    if n < 0.0 {
        return Err(bad());
    }
    Ok((n * scale as f64) as u64)
}

/// CPUs such as `0.5`, in nano-CPUs.
pub fn cpus(text: &str) -> Result<u64, String> {
    match text.parse::<f64>() {
        Ok(n) if (0.0..=1024.0).contains(&n) => Ok((n * 1e9) as u64),
        _ => Err(format!("invalid number of CPUs {text:?}: use a number such as 0.5")),
    }
}

/// A failure ratio between 0 and 1.
pub fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid failure ratio {text:?}: use a number between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_docker() {
        assert_eq!(duration_ms("5s"), Ok(5000));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("1.5s"), Ok(1500));
        assert_eq!(duration_ms("2160h"), Ok(2160 * 3_600_000));
        assert_eq!(duration_ms("0"), Ok(0));
        for bad in ["5", "5x", "", "s", "1d", "-1s"] {
            assert!(duration_ms(bad).unwrap_err().contains("invalid duration"), "{bad}");
        }
        assert_eq!(duration_secs("90s"), Ok(90));
        assert!(duration_secs("500ms").is_err());
        assert!(duration_secs("0").is_err());
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(bytes("64M"), Ok(64 << 20));
        assert_eq!(bytes("1g"), Ok(1 << 30));
        assert_eq!(bytes("512k"), Ok(512 << 10));
        assert_eq!(bytes("100"), Ok(100));
        assert!(bytes("lots").is_err());
        assert_eq!(cpus("0.5"), Ok(500_000_000));
        assert!(cpus("-1").is_err());
        assert_eq!(ratio("0.2"), Ok(0.2));
        assert!(ratio("2").is_err());
    }
}
