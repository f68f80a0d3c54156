//! Variable interpolation in compose values, with the compose
//! specification's grammar:
//!
//! | form | value |
//! |---|---|
//! | `$VAR`, `${VAR}` | VAR's value; empty (and reported missing) if unset |
//! | `${VAR:-default}` | `default` if VAR is unset or empty |
//! | `${VAR-default}` | `default` if VAR is unset |
//! | `${VAR:?message}` | an error with `message` if VAR is unset or empty |
//! | `${VAR?message}` | an error with `message` if VAR is unset |
//! | `${VAR:+other}` | `other` if VAR is set and not empty, else empty |
//! | `${VAR+other}` | `other` if VAR is set, else empty |
//! | `$$` | a literal `$` |
//!
//! Defaults, messages and replacements are interpolated in turn, so
//! `${A:-${B}}` works. A `$` followed by anything else is an error that
//! says to escape it, as docker's is.

use std::fmt;

/// An interpolated value and the variables it used that were not set (the
/// caller warns: `The "VAR" variable is not set. Defaulting to a blank
/// string.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    pub value: String,
    pub missing: Vec<String>,
}

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// `${VAR:?message}` or `${VAR?message}` with VAR unset (or empty).
    #[error("required variable {name} is missing a value: {message}")]
    Required { name: String, message: String },
    /// A `$` that starts nothing valid, or an unclosed `${`.
    #[error("invalid interpolation format for {0:?}: you may need to escape any $ with another $")]
    Format(String),
}

/// Interpolates `text` with the variables `lookup` knows.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    let mut out = Interpolated { value: String::with_capacity(text.len()), missing: Vec::new() };
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.value.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let bad = || InterpolationError::Format(text.to_owned());
        if let Some(tail) = after.strip_prefix('$') {
            out.value.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(bad)?;
            let value = braced(&body[..end], lookup, &mut out.missing).map_err(|e| match e {
                InterpolationError::Format(_) => bad(),
                required => required,
            })?;
            out.value.push_str(&value);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(bad());
            }
            let name = &after[..len];
            out.value.push_str(&variable(name, lookup, &mut out.missing));
            rest = &after[len..];
        }
    }
    out.value.push_str(rest);
    Ok(out)
}

/// The length of the variable name `text` starts with: a letter or `_`,
/// then letters, digits and `_`.
fn name_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if !bytes.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') {
        return 0;
    }
    bytes.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count()
}

/// The index of the `}` closing a `${`, counting nested `${ ... }`.
fn closing_brace(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// A variable's value, empty (and noted missing) when it is unset.
fn variable(name: &str, lookup: &dyn Fn(&str) -> Option<String>, missing: &mut Vec<String>) -> String {
    lookup(name).unwrap_or_else(|| {
        if !missing.iter().any(|m| m == name) {
            missing.push(name.to_owned());
        }
        String::new()
    })
}

/// The value of what is between `${` and `}`.
fn braced(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> Result<String, InterpolationError> {
    let len = name_len(inner);
    let format = || InterpolationError::Format(inner.to_owned());
    if len == 0 {
        return Err(format());
    }
    let (name, op) = inner.split_at(len);
    if op.is_empty() {
        return Ok(variable(name, lookup, missing));
    }
    let (empty_counts, op) = match op.strip_prefix(':') {
        Some(op) => (true, op),
        None => (false, op),
    };
    let mut chars = op.chars();
    let kind = chars.next().ok_or_else(format)?;
    let word = chars.as_str();
    let value = lookup(name);
    let unset = value.as_deref().is_none_or(|v| empty_counts && v.is_empty());
    // The word is interpolated only when it is used.
    let expand = |word: &str, missing: &mut Vec<String>| -> Result<String, InterpolationError> {
        let done = interpolate(word, lookup)?;
        for m in done.missing {
            if !missing.contains(&m) {
                missing.push(m);
            }
        }
        Ok(done.value)
    };
    match kind {
        '-' if unset => expand(word, missing),
        '-' => Ok(value.unwrap_or_default()),
        '?' if unset => {
            Err(InterpolationError::Required { name: name.to_owned(), message: expand(word, missing)? })
        }
        '?' => Ok(value.unwrap_or_default()),
        '+' if unset => Ok(String::new()),
        '+' => expand(word, missing),
        _ => Err(format()),
    }
}

impl fmt::Display for Interpolated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "NAME" => Some("web".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8000".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        interpolate(text, &vars).unwrap_or_else(|e| panic!("{text}: {e}")).value
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(ok("no variables"), "no variables");
        assert_eq!(ok("$NAME"), "web");
        assert_eq!(ok("${NAME}:${PORT}"), "web:8000");
        assert_eq!(ok("$NAME-x"), "web-x");
        assert_eq!(ok("a$NAME.b"), "aweb.b");
        assert_eq!(ok("cost: $$5"), "cost: $5");
        assert_eq!(ok("$$NAME"), "$NAME");
    }

    #[test]
    fn unset_variables_are_blank_and_reported_once() {
        let done = interpolate("${GONE}/$GONE/${ALSO}", &vars).unwrap();
        assert_eq!(done.value, "//");
        assert_eq!(done.missing, ["GONE", "ALSO"]);
    }

    #[test]
    fn defaults_with_and_without_colon() {
        assert_eq!(ok("${GONE:-dflt}"), "dflt");
        assert_eq!(ok("${GONE-dflt}"), "dflt");
        assert_eq!(ok("${EMPTY:-dflt}"), "dflt");
        assert_eq!(ok("${EMPTY-dflt}"), "");
        assert_eq!(ok("${NAME:-dflt}"), "web");
        assert_eq!(ok("${GONE:-}"), "");
        assert_eq!(ok("${GONE:-a b:c}"), "a b:c");
        // A used default is interpolated; nested defaults work.
        assert_eq!(ok("${GONE:-${NAME}}"), "web");
        assert_eq!(ok("${GONE:-${ALSO:-x}-y}"), "x-y");
        let done = interpolate("${NAME:-${UNUSED}}", &vars).unwrap();
        assert!(done.missing.is_empty(), "an unused default asks for nothing: {done:?}");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            interpolate("${GONE:?set GONE first}", &vars),
            Err(InterpolationError::Required { name: "GONE".into(), message: "set GONE first".into() })
        );
        assert!(interpolate("${EMPTY:?x}", &vars).is_err());
        assert_eq!(ok("${EMPTY?x}"), "");
        assert_eq!(ok("${NAME:?x}"), "web");
        let err = interpolate("${GONE?}", &vars).unwrap_err().to_string();
        assert_eq!(err, "required variable GONE is missing a value: ");
    }

    #[test]
    fn alternatives() {
        assert_eq!(ok("${NAME:+set}"), "set");
        assert_eq!(ok("${EMPTY:+set}"), "");
        assert_eq!(ok("${EMPTY+set}"), "set");
        assert_eq!(ok("${GONE+set}"), "");
    }

    #[test]
    fn malformed_forms_say_to_escape() {
        for text in ["$", "a $ b", "${", "${NAME", "${}", "${1X}", "${NAME:}", "${NAME%x}", "$-"] {
            let err = interpolate(text, &vars).unwrap_err();
            assert_eq!(err, InterpolationError::Format(text.into()), "{text}");
            assert!(err.to_string().contains("escape any $ with another $"), "{err}");
        }
    }

    proptest::proptest! {
        /// Text without `$` comes back as it is; any text never panics.
        #[test]
        fn dollarless_text_is_unchanged(text in "[^$]{0,64}") {
            proptest::prop_assert_eq!(interpolate(&text, &vars).unwrap().value, text);
        }

        #[test]
        fn any_text_is_interpolated_or_refused(text in ".{0,64}") {
            let _ = interpolate(&text, &vars);
        }

        /// Escaping every `$` gives the text back.
        #[test]
        fn escaped_text_round_trips(text in ".{0,64}") {
            let escaped = text.replace('$', "$$");
            proptest::prop_assert_eq!(interpolate(&escaped, &vars).unwrap().value, text);
        }
    }
}
