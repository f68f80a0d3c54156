//! From the file as written to values: each [`Scalar`] interpolated with
//! the stack's variables and typed, an error pointing at where the value
//! was written. The variables are the `.env` file's, overridden by the
//! environment of the process (as docker compose does).
//!
//! So far the building blocks a stack's services need: text, numbers,
//! booleans, argument lists (`command: echo "a b"` split as a shell
//! would, or a list), and `KEY=value` pairs (`environment:`, `labels:`,
//! as a map or a list).

use std::collections::BTreeMap;
use std::str::FromStr;

use serde_saphyr::{Location, Spanned};

use crate::interpolate::{InterpolationError, interpolate};
use crate::model::{MapOrList, ParseError, Scalar, StringOrList, Text};

/// The variables interpolation reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    map: BTreeMap<String, String>,
}

impl Vars {
    /// The `.env` file's variables, overridden by `process`'s (the
    /// environment `shoal stack deploy` runs in).
    pub fn new(
        dotenv: impl IntoIterator<Item = (String, String)>,
        process: impl IntoIterator<Item = (String, String)>,
    ) -> Vars {
        let mut map: BTreeMap<String, String> = dotenv.into_iter().collect();
        map.extend(process);
        Vars { map }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.map.get(name).cloned()
    }
}

/// Resolves the values of one compose file, collecting the warnings
/// docker prints for unset variables.
#[derive(Debug)]
pub struct Resolver<'a> {
    file: &'a str,
    vars: &'a Vars,
    warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    /// A resolver for the file named `file` (for errors).
    pub fn new(file: &'a str, vars: &'a Vars) -> Resolver<'a> {
        Resolver { file, vars, warnings: Vec::new() }
    }

    /// The warnings so far, each once: `The "TAG" variable is not set.
    /// Defaulting to a blank string.`
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// An error at `at`.
    pub fn error(&self, at: &Location, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            message: message.into(),
        }
    }

    /// `text`, interpolated; errors point at `at` (for values inside
    /// lists and maps, which keep no position of their own).
    pub fn expand_at(&mut self, text: &Text, at: &Location) -> Result<String, ParseError> {
        let vars = self.vars;
        match interpolate(&text.0, &|name| vars.get(name)) {
            Ok(done) => {
                for name in done.missing {
                    let warning = format!("The {name:?} variable is not set. Defaulting to a blank string.");
                    if !self.warnings.contains(&warning) {
                        self.warnings.push(warning);
                    }
                }
                Ok(done.value)
            }
            Err(error @ InterpolationError::Required { .. }) => Err(self.error(at, error.to_string())),
            Err(error @ InterpolationError::Format(_)) => Err(self.error(at, error.to_string())),
        }
    }

    /// A scalar's text, interpolated.
    pub fn text(&mut self, value: &Scalar) -> Result<String, ParseError> {
        self.expand_at(&value.value, &value.defined)
    }

    /// A scalar as a `T` once interpolated; `what` names it in the error
    /// (`replicas must be a number, not "many"`).
    pub fn number<T: FromStr>(&mut self, value: &Scalar, what: &str) -> Result<T, ParseError> {
        let text = self.text(value)?;
        text.trim()
            .parse()
            .map_err(|_| self.error(&value.defined, format!("{what} must be a number, not {text:?}")))
    }

    /// A scalar as a boolean once interpolated (`true`/`false`, and YAML
    /// 1.1's `yes`/`no`, `on`/`off` that compose files use).
    pub fn boolean(&mut self, value: &Scalar, what: &str) -> Result<bool, ParseError> {
        let text = self.text(value)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(self.error(&value.defined, format!("{what} must be true or false, not {text:?}"))),
        }
    }

    /// An argument list: a list as it is, a string split as a shell would
    /// (quotes and backslashes, no expansion).
    pub fn arguments(&mut self, value: &Spanned<StringOrList>) -> Result<Vec<String>, ParseError> {
        match &value.value {
            StringOrList::List(items) => {
                items.iter().map(|item| self.expand_at(item, &value.defined)).collect()
            }
            StringOrList::String(text) => {
                let line = self.expand_at(text, &value.defined)?;
                split_words(&line).map_err(|problem| self.error(&value.defined, problem))
            }
        }
    }

    /// A list of values, or one value as a list of one (`env_file:`).
    pub fn list(&mut self, value: &Spanned<StringOrList>) -> Result<Vec<String>, ParseError> {
        match &value.value {
            StringOrList::List(items) => {
                items.iter().map(|item| self.expand_at(item, &value.defined)).collect()
            }
            StringOrList::String(text) => Ok(vec![self.expand_at(text, &value.defined)?]),
        }
    }

    /// `KEY=value` pairs from a map or a list; a key without a value is
    /// `None` (for `environment:`: taken from the process's environment).
    pub fn pairs(&mut self, value: &Spanned<MapOrList>) -> Result<Vec<(String, Option<String>)>, ParseError> {
        let at = &value.defined;
        match &value.value {
            MapOrList::Map(map) => map
                .iter()
                .map(|(key, v)| Ok((key.clone(), v.as_ref().map(|v| self.expand_at(v, at)).transpose()?)))
                .collect(),
            MapOrList::List(items) => items
                .iter()
                .map(|item| {
                    let item = self.expand_at(item, at)?;
                    let (key, v) = match item.split_once('=') {
                        Some((key, v)) => (key.to_owned(), Some(v.to_owned())),
                        None => (item, None),
                    };
                    if key.is_empty() {
                        return Err(
                            self.error(at, format!("{:?} has no key: use KEY=value", item_text(&key, &v)))
                        );
                    }
                    Ok((key, v))
                })
                .collect(),
        }
    }
}

fn item_text(key: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{key}={v}"),
        None => key.to_owned(),
    }
}

/// Splits `line` into words as a POSIX shell would, without expansions:
/// blanks separate words; `'...'` is literal; `"..."` keeps blanks and
/// takes `\"`, `\\` and `\$` as escapes; a backslash outside quotes
/// escapes the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(format!("unclosed single quote in {line:?}")),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(format!("unclosed double quote in {line:?}")),
                        },
                        Some(c) => current.push(c),
                        None => return Err(format!("unclosed double quote in {line:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("a trailing backslash in {line:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse;

    const FILE: &str = r#"
services:
  web:
    image: ${IMAGE:-python3}
    command: python3 -c "print('hi there')" ${EXTRA}
    entrypoint: ["sh", "-c", "exec $$0", "${NAME}"]
    environment:
      REDIS_HOST: redis
      PORT: ${PORT}
      FROM_SHELL:
    labels:
      - tier=front
      - ${NAME}.owner=me
    deploy:
      replicas: ${REPLICAS:-2}
"#;

    fn vars() -> Vars {
        Vars::new(
            [("NAME".to_owned(), "counter".to_owned()), ("PORT".to_owned(), "8000".to_owned())],
            [("PORT".to_owned(), "9000".to_owned())],
        )
    }

    #[test]
    fn values_are_interpolated_and_typed() {
        let file = parse("stack.yml", FILE).unwrap();
        let web = &file.services["web"].value;
        let vars = vars();
        let mut r = Resolver::new("stack.yml", &vars);
        assert_eq!(r.text(web.image.as_ref().unwrap()).unwrap(), "python3");
        assert_eq!(
            r.arguments(web.command.as_ref().unwrap()).unwrap(),
            ["python3", "-c", "print('hi there')"]
        );
        assert_eq!(
            r.arguments(web.entrypoint.as_ref().unwrap()).unwrap(),
            ["sh", "-c", "exec $0", "counter"]
        );
        assert_eq!(
            r.pairs(web.environment.as_ref().unwrap()).unwrap(),
            [
                ("FROM_SHELL".to_owned(), None),
                ("PORT".to_owned(), Some("9000".to_owned())),
                ("REDIS_HOST".to_owned(), Some("redis".to_owned())),
            ],
            "the process's PORT wins over .env's"
        );
        assert_eq!(
            r.pairs(web.labels.as_ref().unwrap()).unwrap(),
            [
                ("tier".to_owned(), Some("front".to_owned())),
                ("counter.owner".to_owned(), Some("me".to_owned()))
            ]
        );
        let replicas = web.deploy.as_ref().unwrap().replicas.as_ref().unwrap();
        assert_eq!(r.number::<u64>(replicas, "replicas").unwrap(), 2);
        assert_eq!(r.warnings(), ["The \"EXTRA\" variable is not set. Defaulting to a blank string."]);
    }

    #[test]
    fn bad_values_point_at_where_they_were_written() {
        let text = "services:\n  web:\n    deploy:\n      replicas: ${REPLICAS:?say how many}\n";
        let file = parse("stack.yml", text).unwrap();
        let replicas = file.services["web"].value.deploy.as_ref().unwrap().replicas.clone().unwrap();
        let vars = Vars::default();
        let mut r = Resolver::new("stack.yml", &vars);
        let err = r.number::<u64>(&replicas, "replicas").unwrap_err();
        assert_eq!(
            err.to_string(),
            "stack.yml:4:17: required variable REPLICAS is missing a value: say how many"
        );

        let vars = Vars::new([("REPLICAS".to_owned(), "many".to_owned())], []);
        let mut r = Resolver::new("stack.yml", &vars);
        let err = r.number::<u64>(&replicas, "replicas").unwrap_err();
        assert_eq!(err.to_string(), "stack.yml:4:17: replicas must be a number, not \"many\"");
        assert!(r.boolean(&replicas, "attachable").unwrap_err().message.contains("true or false"));
    }

    #[test]
    fn words_split_as_a_shell_would() {
        assert_eq!(split_words("  a  b\tc ").unwrap(), ["a", "b", "c"]);
        assert_eq!(split_words(r#"echo "a b" 'c d' e\ f"#).unwrap(), ["echo", "a b", "c d", "e f"]);
        assert_eq!(split_words(r#""say \"hi\" \n""#).unwrap(), [r#"say "hi" \n"#]);
        assert_eq!(split_words("a''b \"\"").unwrap(), ["ab", ""]);
        assert!(split_words("'open").unwrap_err().contains("unclosed single quote"));
        assert!(split_words("\"open").unwrap_err().contains("unclosed double quote"));
        assert!(split_words("end\\").unwrap_err().contains("trailing backslash"));
    }

    proptest::proptest! {
        #[test]
        fn any_line_is_split_or_refused(line in ".{0,48}") {
            let _ = split_words(&line);
        }

        /// Plain words joined by spaces split back into themselves.
        #[test]
        fn plain_words_round_trip(words in proptest::collection::vec("[a-z0-9_./-]{1,8}", 0..6)) {
            proptest::prop_assert_eq!(split_words(&words.join(" ")).unwrap(), words);
        }
    }
}
