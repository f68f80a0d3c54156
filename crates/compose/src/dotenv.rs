//! `.env` files, as docker compose reads the one next to a compose file
//! (and `env_file:` entries):
//!
//! - one `KEY=VALUE` per line, `export KEY=VALUE` too; blank lines and
//!   lines starting with `#` are skipped;
//! - an unquoted value is trimmed and ends at ` #` (an inline comment);
//! - a `'single quoted'` value is taken as it is;
//! - a `"double quoted"` value understands `\n`, `\t`, `\\` and `\"`;
//! - `KEY` alone, or `KEY=`, sets KEY to the empty string.
//!
//! Values are not interpolated here; a later key of the same name wins.

/// Why a `.env` file could not be read: the line (from 1) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct DotenvError {
    pub line: usize,
    pub problem: String,
}

/// The variables of a `.env` file's text, in order of appearance.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |problem: String| DotenvError { line: index + 1, problem };
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key.trim_end(), value.trim_start()),
            None => (line, ""),
        };
        if !valid_key(key) {
            return Err(fail(format!(
                "{key:?} is not a variable name: use letters, digits, `_`, `.` and `-`, not starting with a digit"
            )));
        }
        let value = unquote(value).map_err(fail)?;
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_owned(), value));
    }
    Ok(vars)
}

fn valid_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn unquote(value: &str) -> Result<String, String> {
    if let Some(body) = value.strip_prefix('\'') {
        let end = body.find('\'').ok_or("a single-quoted value is not closed")?;
        return after_quote(&body[end + 1..]).map(|()| body[..end].to_owned());
    }
    if let Some(body) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return after_quote(&body[i + 1..]).map(|()| out),
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, other)) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("a double-quoted value is not closed".into());
    }
    let value = value.find(" #").map_or(value, |at| &value[..at]);
    Ok(value.trim_end().to_owned())
}

/// After a closing quote only spaces and a comment may follow.
fn after_quote(rest: &str) -> Result<(), String> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected {rest:?} after the closing quote"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse_dotenv(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn one(line: &str) -> String {
        let vars = pairs(line);
        assert_eq!(vars.len(), 1, "{line:?}: {vars:?}");
        vars[0].1.clone()
    }

    #[test]
    fn keys_values_comments_and_blank_lines() {
        let text = "# the stack's settings\n\nREDIS_HOST=redis\nexport PORT = 8000\n  TAG=v1 # pinned\nEMPTY=\nALONE\n";
        assert_eq!(
            pairs(text),
            [
                ("REDIS_HOST".into(), "redis".into()),
                ("PORT".into(), "8000".into()),
                ("TAG".into(), "v1".into()),
                ("EMPTY".into(), String::new()),
                ("ALONE".into(), String::new()),
            ]
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(one("A='a #b $c \\n'"), "a #b $c \\n");
        assert_eq!(one("A=\"line\\none\\t\\\"q\\\"\""), "line\none\t\"q\"");
        assert_eq!(one("A=\"x\" # comment"), "x");
        assert_eq!(one("A=a#b"), "a#b");
        assert_eq!(one("A=a=b"), "a=b");
    }

    #[test]
    fn a_later_key_wins() {
        assert_eq!(pairs("A=1\nB=2\nA=3\n"), [("B".into(), "2".into()), ("A".into(), "3".into())]);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = parse_dotenv("A=1\n1BAD=x\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("line 2: \"1BAD\" is not a variable name"), "{err}");
        assert_eq!(parse_dotenv("A='open\n").unwrap_err().problem, "a single-quoted value is not closed");
        assert_eq!(parse_dotenv("A=\"open\n").unwrap_err().problem, "a double-quoted value is not closed");
        assert!(parse_dotenv("A='x' y\n").unwrap_err().problem.contains("after the closing quote"));
        assert!(parse_dotenv("with space=1\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_or_refused(text in "(.{0,40}\n){0,5}") {
            let _ = parse_dotenv(&text);
        }
    }
}
