//! The CLI: docker's verbs, flags and output over the daemon's local API.
//! Each verb module parses its flags, calls the API, and prints; nothing
//! here keeps state. Every list verb prints through [`Listing`], so
//! `--format table|json|TEMPLATE` behaves the same everywhere.

pub mod client;
pub mod debug;
pub mod flags;
pub mod lab;
pub mod network;
pub mod node;
pub mod service;
pub mod stack;
pub mod swarm;
pub mod task;
pub mod volume;

use std::io::Write;

use serde::Serialize;

/// `--label KEY=VALUE` flags as a map (`KEY` alone: an empty value), as
/// docker reads them.
pub fn parse_labels(labels: &[String]) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `--filter label=KEY` and `label=KEY=VALUE` filters: an object passes
/// when it has every label asked (with the value, when one is given).
#[derive(Debug, Default, Clone)]
pub struct LabelFilter(Vec<(String, Option<String>)>);

impl LabelFilter {
    /// Adds the value of a `label=` filter; false if it is empty.
    pub fn add(&mut self, value: &str) -> bool {
        if value.is_empty() {
            return false;
        }
        self.0.push(match value.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (value.to_owned(), None),
        });
        true
    }

    /// Whether `labels` has every label asked.
    pub fn admits(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k).is_some_and(|have| v.as_ref().is_none_or(|v| v == have)))
    }
}

/// Removes each of `names` with `DELETE path(name)`, printing each name
/// removed and each error as docker does (to stderr, going on with the
/// others); fails at the end if any could not be removed.
pub fn remove_each(
    client: &client::Client,
    names: &[String],
    path: impl Fn(&str) -> String,
    what: &str,
) -> anyhow::Result<()> {
    let mut failed = false;
    for name in names {
        match client.call("DELETE", &path(name), None) {
            Ok(_) => writeln!(out(), "{name}")?,
            Err(e) => {
                failed = true;
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{e:#}");
                }
            }
        }
    }
    if failed {
        anyhow::bail!("some {what} could not be removed");
    }
    Ok(())
}

/// Standard output, locked.
pub fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Prints `value` as indented JSON.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut o = out();
    serde_json::to_writer_pretty(&mut o, value)?;
    writeln!(o)?;
    Ok(())
}

/// Prints rows as docker does: columns padded to the widest cell, three
/// spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        text.push_str(line.join("   ").trim_end());
        text.push('\n');
    }
    text
}

/// "Running 2 minutes ago", as docker says how long ago `ms` was.
pub fn ago(ms: u64) -> String {
    let secs = shoal_agent::clock::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0 => "Less than a second ago".into(),
        1 => "1 second ago".into(),
        2..=59 => format!("{secs} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", secs / 60),
        3600..=7199 => "About an hour ago".into(),
        7200..=172_799 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// `Running` from `running`: how docker prints states.
pub fn title(word: &str) -> String {
    let mut s = word.to_owned();
    if let Some(first) = s.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    s
}

/// The first 12 characters of an id, as docker shows ids.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// `--format` of a list verb: docker's default table, `json` (one object
/// per line, docker's field names), or a Go-style template such as
/// `{{.Name}}` or `table {{.ID}}\t{{.Name}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The verb's table.
    Table,
    /// One JSON object per line.
    Json,
    /// A template per row; `table` adds a header line.
    Template {
        /// With a header.
        table: bool,
        /// The template, `\t` and `\n` already turned into tab and newline.
        text: String,
    },
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text {
            "" | "table" => Ok(Format::Table),
            "json" | "{{json .}}" => Ok(Format::Json),
            t if t.contains("{{") => {
                let (table, rest) = match t.strip_prefix("table") {
                    Some(rest) => (true, rest),
                    None => (false, t),
                };
                let text = rest.trim_matches(' ').replace("\\t", "\t").replace("\\n", "\n");
                Ok(Format::Template { table, text })
            }
            other => Err(format!(
                "invalid format {other:?}: use table, json, or a template such as '{{{{.Name}}}}'"
            )),
        }
    }
}

/// The header docker prints for a field: `DesiredState` -> `DESIRED STATE`.
fn header(field: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        if i > 0 && c.is_ascii_uppercase() && (chars[i - 1].is_ascii_lowercase() || next_lower) {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Fills a template from a row's fields.
fn render(template: &str, row: &serde_json::Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end =
            rest[start..].find("}}").ok_or_else(|| anyhow::anyhow!("unclosed {{{{ in --format"))? + start;
        let action = rest[start + 2..end].trim();
        if action == "json ." {
            out.push_str(&row.to_string());
        } else if let Some(field) = action.strip_prefix('.') {
            match row.get(field) {
                Some(serde_json::Value::String(s)) => out.push_str(s),
                Some(v) => out.push_str(&v.to_string()),
                None => anyhow::bail!(
                    "template: can't evaluate field {field}: use one of {}",
                    row.as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                ),
            }
        } else {
            anyhow::bail!(
                "template: unsupported action {{{{{action}}}}}: use {{{{.Field}}}} or {{{{json .}}}}"
            );
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Rows of a list verb and the table it prints by default.
#[derive(Debug)]
pub struct Listing<R> {
    /// The rows, with docker's field names.
    pub rows: Vec<R>,
    /// The default table's headers.
    pub headers: &'static [&'static str],
    /// A row's cells in the default table.
    pub cells: fn(&R) -> Vec<String>,
}

impl<R: Serialize> Listing<R> {
    /// Prints the rows in `format`.
    pub fn print(&self, format: &Format) -> anyhow::Result<()> {
        let mut o = out();
        match format {
            Format::Table => {
                let mut rows = vec![self.headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
                rows.extend(self.rows.iter().map(self.cells));
                write!(o, "{}", table(&rows))?;
            }
            Format::Json => {
                for row in &self.rows {
                    writeln!(o, "{}", serde_json::to_string(row)?)?;
                }
            }
            Format::Template { table: with_header, text } => {
                let values: Vec<serde_json::Value> =
                    self.rows.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
                if *with_header {
                    let mut rows = Vec::new();
                    let fields: Vec<String> = text
                        .split("{{")
                        .skip(1)
                        .filter_map(|a| a.split("}}").next())
                        .map(|a| a.trim().trim_start_matches('.').to_owned())
                        .collect();
                    rows.push(fields.iter().map(|f| header(f)).collect::<Vec<_>>());
                    for v in &values {
                        rows.push(render(text, v)?.split('\t').map(str::to_owned).collect());
                    }
                    // A header line and aligned columns, as docker's tabwriter.
                    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
                    for r in &mut rows {
                        r.resize(width, String::new());
                    }
                    write!(o, "{}", table(&rows))?;
                } else {
                    for v in &values {
                        writeln!(o, "{}", render(text, v)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Row {
        #[serde(rename = "ID")]
        id: String,
        desired_state: String,
        replicas: String,
    }

    #[test]
    fn tables_pad_like_docker() {
        let rows = vec![vec!["ID".into(), "HOSTNAME".into()], vec!["abc *".into(), "node1".into()]];
        assert_eq!(table(&rows), "ID      HOSTNAME\nabc *   node1\n");
    }

    #[test]
    fn formats_parse_like_docker() {
        assert_eq!("json".parse(), Ok(Format::Json));
        assert_eq!("table".parse(), Ok(Format::Table));
        assert_eq!(
            r"table {{.ID}}\t{{.Replicas}}".parse(),
            Ok(Format::Template { table: true, text: "{{.ID}}\t{{.Replicas}}".into() })
        );
        assert!("yaml".parse::<Format>().unwrap_err().contains("use table, json, or a template"));
    }

    #[test]
    fn templates_fill_fields_and_name_bad_ones() {
        let row = serde_json::to_value(Row {
            id: "abc".into(),
            desired_state: "Running".into(),
            replicas: "1/1".into(),
        })
        .unwrap();
        assert_eq!(render("{{.ID}}: {{ .DesiredState }}", &row).unwrap(), "abc: Running");
        assert_eq!(render("{{json .}}", &row).unwrap(), row.to_string());
        let err = render("{{.Nope}}", &row).unwrap_err().to_string();
        assert!(err.contains("can't evaluate field Nope") && err.contains("DesiredState"), "{err}");
        assert_eq!(header("DesiredState"), "DESIRED STATE");
        assert_eq!(header("ID"), "ID");
        assert_eq!(header("TLSStatus"), "TLS STATUS");
    }
}
