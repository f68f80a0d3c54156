//! Reading question names as the directory spells them.
//!
//! The directory keys are lowercase ASCII without the trailing dot. A wire
//! label may hold any byte, a dot included, so a name is only handed to the
//! directory when its text form is unambiguous: printable ASCII labels without
//! dots or backslashes. Anything else is not ours and goes upstream.

use std::net::Ipv4Addr;

use hickory_proto::rr::Name;

use crate::Proto;

/// The name in the directory's spelling: labels lowercased and joined by dots,
/// no trailing dot. `None` for the root or a label the directory cannot hold.
pub(crate) fn directory_name(name: &Name) -> Option<String> {
    join_labels(name.iter())
}

/// Labels joined in the directory's spelling (see [`directory_name`]).
pub(crate) fn join_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut text = String::new();
    for label in labels {
        if label.is_empty() || !label.iter().all(|&b| b.is_ascii_graphic() && b != b'.' && b != b'\\') {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    }
    (!text.is_empty()).then_some(text)
}

/// The address of a reverse name `d.c.b.a.in-addr.arpa`, or `None` when the
/// name is not exactly that shape (a partial zone like `b.a.in-addr.arpa` is
/// not an address and goes upstream).
pub(crate) fn reverse_v4(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let [d, c, b, a, in_addr, arpa] = labels.as_slice() else {
        return None;
    };
    if !in_addr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// One decimal octet label: 1 to 3 digits, at most 255.
fn octet(label: &[u8]) -> Option<u8> {
    if label.is_empty() || label.len() > 3 || !label.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = label.iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    u8::try_from(value).ok()
}

/// The parts of an SRV name `_<port>._<tcp|udp>.<service>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrvName {
    /// The port as written, without the underscore: `80` or `http`.
    pub(crate) port: String,
    pub(crate) proto: Proto,
    /// The service in the directory's spelling.
    pub(crate) service: String,
}

/// Splits an SRV name, or `None` when the name is not of that shape.
pub(crate) fn srv_name(name: &Name) -> Option<SrvName> {
    let mut labels = name.iter();
    let port = labels.next()?.strip_prefix(b"_")?;
    let proto = labels.next()?;
    let proto = if proto.eq_ignore_ascii_case(b"_tcp") {
        Proto::Tcp
    } else if proto.eq_ignore_ascii_case(b"_udp") {
        Proto::Udp
    } else {
        return None;
    };
    let port = join_labels(std::iter::once(port))?;
    let service = join_labels(labels)?;
    Some(SrvName { port, proto, service })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn directory_name_lowercases_and_drops_the_root() {
        assert_eq!(directory_name(&name("Tasks.WEB.")).as_deref(), Some("tasks.web"));
        assert_eq!(directory_name(&name("web")).as_deref(), Some("web"));
        assert_eq!(directory_name(&Name::root()), None);
    }

    #[test]
    fn directory_name_refuses_labels_with_dots_or_spaces() {
        let dotted = Name::from_labels(vec![&b"we.b"[..], &b"x"[..]]).unwrap();
        assert_eq!(directory_name(&dotted), None);
        let spaced = Name::from_labels(vec![&b"we b"[..]]).unwrap();
        assert_eq!(directory_name(&spaced), None);
    }

    #[test]
    fn reverse_reads_the_octets_backwards() {
        assert_eq!(reverse_v4(&name("4.3.2.10.IN-ADDR.ARPA.")), Some(Ipv4Addr::new(10, 2, 3, 4)));
        assert_eq!(reverse_v4(&name("3.2.10.in-addr.arpa.")), None);
        assert_eq!(reverse_v4(&name("256.3.2.10.in-addr.arpa.")), None);
        assert_eq!(reverse_v4(&name("x.3.2.10.in-addr.arpa.")), None);
        assert_eq!(reverse_v4(&name("4.3.2.10.ip6.arpa.")), None);
    }

    #[test]
    fn srv_name_splits_port_proto_and_service() {
        let parts = srv_name(&name("_HTTP._Tcp.Stack_Web.")).unwrap();
        assert_eq!(parts, SrvName { port: "http".into(), proto: Proto::Tcp, service: "stack_web".into() });
        assert_eq!(srv_name(&name("_53._udp.dns")).unwrap().proto, Proto::Udp);
        assert_eq!(srv_name(&name("_53._sctp.dns")), None);
        assert_eq!(srv_name(&name("53._udp.dns")), None);
        assert_eq!(srv_name(&name("_._udp.dns")), None);
        assert_eq!(srv_name(&name("_53._udp")), None);
    }
}
