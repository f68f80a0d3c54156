//! The CLI's side of the local API: HTTP/1.1 over the daemon's unix socket,
//! found through `-H unix:///path` or `SHOAL_HOST`, like `DOCKER_HOST`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// Turns `unix:///path` (or a bare path) into a socket path.
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if !path.starts_with('/') {
        bail!("invalid host {host:?}: use unix:///path/to/shoal.sock");
    }
    Ok(PathBuf::from(path))
}

/// A connection target for API calls.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the daemon at `host`.
    pub fn new(host: &str) -> anyhow::Result<Client> {
        Ok(Client { socket: socket_path(host)? })
    }

    /// Calls `method path` with an optional JSON body; returns the JSON
    /// answer, or the daemon's error message as the error.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let text = self.call_text(method, path, body)?;
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).context("the daemon answered something that is not JSON")
    }

    /// `GET path`, decoded.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let value = self.call("GET", path, None)?;
        serde_json::from_value(value)
            .with_context(|| format!("the daemon answered GET {path} with an unexpected shape"))
    }

    /// `POST path` with `body`, decoded.
    pub fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let value = self.call("POST", path, Some(&serde_json::to_value(body)?))?;
        serde_json::from_value(value)
            .with_context(|| format!("the daemon answered POST {path} with an unexpected shape"))
    }

    /// Like [`call`](Self::call), returning the body as text.
    pub fn call_text(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<String> {
        let mut stream = UnixStream::connect(&self.socket).with_context(|| {
            format!(
                "cannot connect to the shoal daemon at unix://{}: is `shoal daemon` running? (set -H or SHOAL_HOST to reach another)",
                self.socket.display()
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, payload) = raw.split_once("\r\n\r\n").context("incomplete answer from the daemon")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("the daemon's answer has no status")?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| payload.trim().to_owned());
            bail!("Error response from daemon: {message}");
        }
        Ok(payload.to_owned())
    }
}
