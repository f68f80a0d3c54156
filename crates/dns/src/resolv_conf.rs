//! The node's upstream resolvers, read from its `/etc/resolv.conf`.

use std::net::{IpAddr, SocketAddr};

/// glibc reads at most three `nameserver` lines (MAXNS); so do we.
pub const MAX_UPSTREAMS: usize = 3;

/// The `nameserver` addresses of a resolv.conf, on port 53, in file order.
///
/// Loopback (127.0.0.0/8, ::1) and unspecified addresses are skipped: inside
/// a task's namespace they would name the task itself, not the node's stub
/// resolver (systemd-resolved's 127.0.0.53 is the usual case; the node's
/// real upstreams are then in `/run/systemd/resolve/resolv.conf`). Link-local
/// IPv6 addresses with a zone (`fe80::1%eth0`) are skipped as well, since the
/// zone names an interface of the node. At most [`MAX_UPSTREAMS`] are kept.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .filter(|addr| !is_local(addr))
        .take(MAX_UPSTREAMS)
        .map(|addr| SocketAddr::new(addr, 53))
        .collect()
}

fn is_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::upstreams_from_resolv_conf;

    #[test]
    fn keeps_the_first_three_reachable_nameservers_in_order() {
        let text = "\
# generated
search example.com
nameserver 127.0.0.53
nameserver 10.0.0.2 # office
nameserver ::1
nameserver ::ffff:127.0.0.1
   nameserver\t2001:db8::53
; nameserver 10.9.9.9
nameserver fe80::1%eth0
nameserver not-an-address
nameserver 192.0.2.1
nameserver 192.0.2.2
options ndots:0
";
        let upstreams: Vec<String> = upstreams_from_resolv_conf(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(upstreams, ["10.0.0.2:53", "[2001:db8::53]:53", "192.0.2.1:53"]);
    }

    #[test]
    fn a_stub_only_file_gives_no_upstreams() {
        assert!(upstreams_from_resolv_conf("nameserver 127.0.0.53\noptions edns0 trust-ad\n").is_empty());
        assert!(upstreams_from_resolv_conf("").is_empty());
    }
}
