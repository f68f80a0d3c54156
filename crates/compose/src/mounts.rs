//! Mounts as `--mount` and compose files write them, one shape for both:
//! the flag's `type=volume,source=data,target=/data[,readonly]` and a
//! compose file's short `volumes:` entry `SOURCE:TARGET[:ro|rw]`.
//!
//! Sources are kept as written: a relative bind source (`./conf`) is the
//! caller's to resolve (against the working directory for the flag, the
//! compose file's directory for a file), as is `~`.

/// What a mount brings into a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountKind {
    /// A named volume of the node (or an anonymous one, without a source).
    Volume,
    /// A path of the node.
    Bind,
    /// A fresh tmpfs.
    Tmpfs,
}

impl std::str::FromStr for MountKind {
    type Err = String;

    /// `volume`, `bind` or `tmpfs`, in any case.
    fn from_str(text: &str) -> Result<MountKind, String> {
        match text.to_ascii_lowercase().as_str() {
            "volume" => Ok(MountKind::Volume),
            "bind" => Ok(MountKind::Bind),
            "tmpfs" => Ok(MountKind::Tmpfs),
            _ => Err(format!("mount type {text:?} is not supported: use volume, bind or tmpfs")),
        }
    }
}

/// A mount before the orchestrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountDesc {
    /// Volume, bind or tmpfs.
    pub kind: MountKind,
    /// The volume's name or the node's path, as written; empty for a tmpfs
    /// or an anonymous volume.
    pub source: String,
    /// The absolute path inside the task.
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

impl MountDesc {
    /// Checks what both forms require: an absolute target, a source for a
    /// bind and none for a tmpfs.
    fn checked(self) -> Result<MountDesc, String> {
        if self.target.is_empty() {
            return Err("target is required".into());
        }
        if !self.target.starts_with('/') {
            return Err(format!("invalid mount target, must be an absolute path: {}", self.target));
        }
        match self.kind {
            MountKind::Volume if !self.source.is_empty() => check_volume_name(&self.source).map(|()| self),
            MountKind::Bind if self.source.is_empty() => Err("source is required for bind mounts".into()),
            MountKind::Tmpfs if !self.source.is_empty() => {
                Err("source is not allowed for tmpfs mounts".into())
            }
            _ => Ok(self),
        }
    }
}

/// Checks a volume name as docker's local driver does.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        return Ok(());
    }
    Err(format!(
        "{name:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" \
         are allowed. If you intended to pass a host directory, use absolute path"
    ))
}

/// Whether a short-form source names a path of the node rather than a
/// volume: absolute, relative (`.`, `..`, `./x`) or in a home (`~`).
pub fn is_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

/// `--mount`: comma-separated `KEY=VALUE` fields, docker's keys: `type`
/// (`volume`, the default, `bind` or `tmpfs`), `source`/`src`,
/// `target`/`dst`/`destination`, `readonly`/`ro` (alone, or `=true|false`).
pub fn parse_mount_flag(text: &str) -> Result<MountDesc, String> {
    let mut mount =
        MountDesc { kind: MountKind::Volume, source: String::new(), target: String::new(), readonly: false };
    for field in text.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            match field.to_ascii_lowercase().as_str() {
                "readonly" | "ro" => mount.readonly = true,
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => mount.kind = value.parse()?,
            "source" | "src" => mount.source = value.to_owned(),
            "target" | "dst" | "destination" => mount.target = value.to_owned(),
            "readonly" | "ro" => {
                mount.readonly = parse_bool(value).ok_or(format!("invalid value for {key}: {value}"))?
            }
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    mount.checked()
}

/// `true`, `false`, `1`, `0` and the other spellings Go's `ParseBool` takes.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A compose file's short `volumes:` entry: `TARGET` (an anonymous volume),
/// or `SOURCE:TARGET[:ro|rw]`, where a SOURCE that is a path (see
/// [`is_path`]) is a bind and anything else a named volume.
pub fn parse_short(text: &str) -> Result<MountDesc, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts[..] {
        [target] => ("", target, None),
        [source, target] => (source, target, None),
        [source, target, mode] => (source, target, Some(mode)),
        _ => return Err(format!("invalid spec: {text}: too many colons")),
    };
    let readonly = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => return Err(format!("invalid mode {other:?} in {text:?}: use ro or rw")),
    };
    if parts.len() > 1 && source.is_empty() {
        return Err(format!("invalid spec: {text}: empty section between colons"));
    }
    let kind = if is_path(source) { MountKind::Bind } else { MountKind::Volume };
    MountDesc { kind, source: source.to_owned(), target: target.to_owned(), readonly }.checked()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(kind: MountKind, source: &str, target: &str, readonly: bool) -> MountDesc {
        MountDesc { kind, source: source.into(), target: target.into(), readonly }
    }

    #[test]
    fn flags_in_dockers_keys() {
        assert_eq!(
            parse_mount_flag("type=volume,source=data,target=/data").unwrap(),
            desc(MountKind::Volume, "data", "/data", false)
        );
        assert_eq!(
            parse_mount_flag("type=bind,src=/srv/conf,dst=/etc/app,readonly").unwrap(),
            desc(MountKind::Bind, "/srv/conf", "/etc/app", true)
        );
        assert_eq!(
            parse_mount_flag("type=tmpfs,destination=/scratch,ro=true").unwrap(),
            desc(MountKind::Tmpfs, "", "/scratch", true)
        );
        assert_eq!(
            parse_mount_flag("target=/cache,readonly=false").unwrap(),
            desc(MountKind::Volume, "", "/cache", false),
            "a volume by default; anonymous without a source"
        );
        assert_eq!(
            parse_mount_flag("type=BIND,source=./x,target=/x").unwrap().source,
            "./x",
            "kept as written"
        );
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (text, wanted) in [
            ("type=volume,source=data", "target is required"),
            ("type=nfs,target=/x", "mount type \"nfs\" is not supported"),
            ("type=bind,target=/x", "source is required"),
            ("type=tmpfs,source=x,target=/x", "source is not allowed for tmpfs"),
            ("target=data", "must be an absolute path: data"),
            ("target=/x,readonly=maybe", "invalid value for readonly: maybe"),
            ("target=/x,size=1m", "unexpected key 'size' in 'size=1m'"),
            ("target=/x,rw", "invalid field 'rw' must be a key=value pair"),
        ] {
            let err = parse_mount_flag(text).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn short_forms() {
        assert_eq!(parse_short("data:/data").unwrap(), desc(MountKind::Volume, "data", "/data", false));
        assert_eq!(parse_short("data:/data:ro").unwrap(), desc(MountKind::Volume, "data", "/data", true));
        assert_eq!(
            parse_short("/srv/www:/www:rw").unwrap(),
            desc(MountKind::Bind, "/srv/www", "/www", false)
        );
        assert_eq!(
            parse_short("./conf:/etc/conf:ro").unwrap(),
            desc(MountKind::Bind, "./conf", "/etc/conf", true)
        );
        assert_eq!(parse_short("../up:/up").unwrap().kind, MountKind::Bind);
        assert_eq!(parse_short("~/x:/x").unwrap().kind, MountKind::Bind);
        assert_eq!(
            parse_short("/var/lib/data").unwrap(),
            desc(MountKind::Volume, "", "/var/lib/data", false)
        );
        for (bad, wanted) in [
            ("data:/data:rx", "invalid mode \"rx\""),
            ("a:b:c:d", "too many colons"),
            (":/x", "empty section"),
            ("data:rel", "must be an absolute path: rel"),
            ("", "target is required"),
        ] {
            let err = parse_short(bad).unwrap_err();
            assert!(err.contains(wanted), "{bad}: {err}");
        }
    }
}
