//! Published ports as `-p` and compose files write them, one parser for
//! both: the short form `[PUBLISHED:]TARGET[/PROTOCOL]` (with ranges,
//! `8000-8001:80-81`), and the flag's long form
//! `published=8080,target=80[,protocol=udp][,mode=host][,name=http]`
//! with Shoal's `proxy-protocol=v2` and `traffic-policy=local`.

/// A published port before the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// 0: the manager picks one from 30000-32767.
    pub published: u16,
    pub target: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ingress` or `host`.
    pub mode: String,
    /// Send a PROXY protocol v2 header first.
    pub proxy_protocol: bool,
    /// Only to tasks on the node that took the connection.
    pub local_only: bool,
    pub name: Option<String>,
}

impl Publish {
    fn new(published: u16, target: u16, protocol: &str) -> Publish {
        Publish {
            published,
            target,
            protocol: protocol.to_owned(),
            mode: "ingress".to_owned(),
            proxy_protocol: false,
            local_only: false,
            name: None,
        }
    }

    fn checked(self) -> Result<Publish, String> {
        if self.target == 0 {
            return Err("the target port must be 1 to 65535".into());
        }
        if !matches!(self.protocol.as_str(), "tcp" | "udp") {
            return Err(format!("protocol {:?} is not tcp or udp", self.protocol));
        }
        if !matches!(self.mode.as_str(), "ingress" | "host") {
            return Err(format!("mode {:?} is not ingress or host", self.mode));
        }
        Ok(self)
    }
}

/// `[PUBLISHED:]TARGET[/PROTOCOL]`, each port a number or a range
/// `FIRST-LAST` (a published range as long as the target's, or one
/// published port for one target). Without PUBLISHED the manager picks.
pub fn parse_short(text: &str) -> Result<Vec<Publish>, String> {
    let (ports, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let (published, target) = match ports.split_once(':') {
        Some((published, target)) => (Some(published), target),
        None => (None, ports),
    };
    if target.contains(':') {
        return Err("a host address is not supported: published ports listen on every address".into());
    }
    let targets = range(target)?;
    let published = match published {
        Some(p) => range(p)?,
        None => vec![0; targets.len()],
    };
    if published.len() != targets.len() {
        return Err(format!("{} published ports for {} target ports", published.len(), targets.len()));
    }
    published.into_iter().zip(targets).map(|(p, t)| Publish::new(p, t, protocol).checked()).collect()
}

/// `published=8080,target=80[,protocol=udp][,mode=host][,name=N]
/// [,proxy-protocol=v2|none][,traffic-policy=local|cluster]`.
pub fn parse_long(text: &str) -> Result<Publish, String> {
    let mut port = Publish::new(0, 0, "tcp");
    for field in text.split(',') {
        let (key, value) = field.split_once('=').ok_or_else(|| format!("{field:?} is not KEY=VALUE"))?;
        let number = || value.parse::<u16>().map_err(|_| format!("{key} {value:?} is not a port"));
        match (key, value) {
            ("published", _) => port.published = number()?,
            ("target", _) => port.target = number()?,
            ("protocol", _) => port.protocol = value.to_owned(),
            ("mode", _) => port.mode = value.to_owned(),
            ("name", _) => port.name = Some(value.to_owned()),
            ("proxy-protocol", "v2") => port.proxy_protocol = true,
            ("proxy-protocol", "none") => port.proxy_protocol = false,
            ("traffic-policy", "local") => port.local_only = true,
            ("traffic-policy", "cluster") => port.local_only = false,
            ("proxy-protocol" | "traffic-policy", _) => return Err(format!("{key} {value:?} is not known")),
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    port.checked()
}

/// `80` or `8000-8002`.
fn range(text: &str) -> Result<Vec<u16>, String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if first > last {
                return Err(format!("the range {text:?} ends before it starts"));
            }
            Ok((first..=last).collect())
        }
        None => Ok(vec![port(text)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(text: &str) -> Vec<(u16, u16, String)> {
        parse_short(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .into_iter()
            .map(|p| (p.published, p.target, p.protocol))
            .collect()
    }

    #[test]
    fn short_forms() {
        assert_eq!(short("8080:80"), [(8080, 80, "tcp".into())]);
        assert_eq!(short("5353:53/udp"), [(5353, 53, "udp".into())]);
        assert_eq!(short("80"), [(0, 80, "tcp".into())], "the manager picks the published port");
        assert_eq!(short("8000-8001:80-81"), [(8000, 80, "tcp".into()), (8001, 81, "tcp".into())]);
        assert_eq!(short("9000-9001"), [(0, 9000, "tcp".into()), (0, 9001, "tcp".into())]);
        for bad in
            ["8080:http", "70000:80", "8080:80/sctp", "0", "127.0.0.1:8080:80", "8000-8002:80-81", "9-8", ""]
        {
            assert!(parse_short(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_forms() {
        let p = parse_long("published=53,target=5353,protocol=udp,mode=host,name=dns").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str(), p.mode.as_str()), (53, 5353, "udp", "host"));
        assert_eq!(p.name.as_deref(), Some("dns"));
        let p = parse_long("published=8000,target=80,proxy-protocol=v2,traffic-policy=local").unwrap();
        assert!(p.proxy_protocol && p.local_only);
        assert_eq!(parse_long("target=80").unwrap().published, 0);
        for bad in [
            "published=1,target=2,proxy-protocol=v1",
            "published=1,target=2,mode=bridge",
            "published=9000",
            "published=x,target=80",
            "published=1,target=2,colour=red",
            "target",
        ] {
            assert!(parse_long(bad).is_err(), "{bad}");
        }
    }
}
