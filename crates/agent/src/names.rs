//! The one validator of the names users give objects.

use crate::error::Error;

/// What is being named: services may not contain `.`, which separates the
/// parts of a task's name (`web.3.<task id>`); networks may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A service.
    Service,
    /// A network.
    Network,
}

/// Checks `name`: up to 63 letters, digits, `-` or `_` (and `.` for a
/// network), starting with a letter or digit.
pub fn check(kind: Kind, name: &str) -> Result<(), Error> {
    let extra = match kind {
        Kind::Service => "-_",
        Kind::Network => "-_.",
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if valid {
        return Ok(());
    }
    let (what, chars) = match kind {
        Kind::Service => ("service", "'-' or '_'"),
        Kind::Network => ("network", "'_', '.' or '-'"),
    };
    Err(Error::Invalid(format!(
        "invalid {what} name {name:?}: use up to 63 letters, digits, {chars}, starting with a letter or digit"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check(Kind::Service, "web_1-a").is_ok());
        assert!(check(Kind::Network, "front.end").is_ok());
        let err = check(Kind::Service, "web.1").unwrap_err().to_string();
        assert!(err.starts_with("invalid service name \"web.1\""), "{err}");
        assert!(check(Kind::Network, "-x").is_err());
        assert!(check(Kind::Network, "").is_err());
        assert!(check(Kind::Service, &"a".repeat(64)).is_err());
    }
}
