//! Helpers shared by Shoal's benchmark programs: medians, and running the
//! standard measuring tools (iperf3, sockperf) between lab namespaces.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use shoal_lab::Lab;

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// Runs `program args` in `netns`, retrying while it fails for up to
/// `patience` (a server may still be starting); returns the last output.
pub fn run_retrying(netns: &str, program: &str, args: &[&str], patience: Duration) -> Output {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let out = Lab::run_in(netns, program, args).unwrap_or_else(|e| panic!("{e}"));
        if out.status.success() || std::time::Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bounded process started in a lab namespace: the lab kills it at teardown
/// if it has not exited by itself.
pub fn spawn_in(lab: &Lab, netns: &str, program: &str, args: &[&str]) -> u32 {
    let mut cmd = Lab::command_in(netns, program);
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    lab.spawn(&mut cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs one iperf3 test from `client` to a one-off server on `server_ip`
/// in `server`, with extra client `args`; returns the client's JSON report.
/// A run that reports no result (the server was not up yet, or was busy) is
/// retried, at most three times. Each run, retries too, takes a port of
/// its own above `port`.
fn iperf(
    lab: &Lab,
    client: &str,
    server: &str,
    server_ip: &str,
    port: u16,
    args: &[&str],
    key: &str,
) -> serde_json::Value {
    // A fresh port for every run: a one-off server of an earlier run on the
    // same port has been seen to refuse the next run's connections.
    static RUNS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = port;
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 400;
        let port = (base + 16 * run).to_string();
        let server_pid = spawn_in(lab, server, "iperf3", &["-s", "-1", "-B", server_ip, "-p", &port]);
        let mut client_args = vec!["-c", server_ip, "-p", &port, "-J"];
        client_args.extend_from_slice(args);
        let out = run_retrying(client, "iperf3", &client_args, Duration::from_secs(5));
        let _ = lab.stop(server_pid, Duration::from_secs(2));
        last = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if out.status.success() && !last["end"][key].is_null() {
            return last;
        }
    }
    panic!("iperf3 to {server_ip} reported no result three times; last error: {}", last["error"])
}

/// One single-stream iperf3 TCP test of `seconds` from `client` to `server_ip`
/// (a server in `server`); returns Gbit/s received.
pub fn iperf_tcp(lab: &Lab, client: &str, server: &str, server_ip: &str, port: u16, seconds: u32) -> f64 {
    iperf_tcp_streams(lab, client, server, server_ip, port, seconds, 1)
}

/// The same with `streams` parallel TCP streams (`-P`); returns their sum.
pub fn iperf_tcp_streams(
    lab: &Lab,
    client: &str,
    server: &str,
    server_ip: &str,
    port: u16,
    seconds: u32,
    streams: u32,
) -> f64 {
    let (seconds, streams) = (seconds.to_string(), streams.to_string());
    let json = iperf(lab, client, server, server_ip, port, &["-t", &seconds, "-P", &streams], "sum_received");
    json["end"]["sum_received"]["bits_per_second"].as_f64().expect("bits_per_second") / 1e9
}

/// CPU time the whole machine spent busy (user, system, interrupts,
/// softirqs, steal), in seconds, from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let ticks: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / clock_ticks()
}

/// CPU time (user and system) of process `pid` and its threads, in
/// seconds, from /proc.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th,
    // stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    (fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)) as f64 / clock_ticks()
}

/// /proc counts CPU time in USER_HZ ticks, 100 a second on Linux whatever
/// the kernel's own tick rate.
fn clock_ticks() -> f64 {
    100.0
}

/// One iperf3 UDP test of `len`-byte datagrams for `seconds`, offered at
/// `bits` a second ("0": unlimited); returns the datagrams sent and lost,
/// and the seconds it lasted.
fn iperf_udp(
    lab: &Lab,
    (client, server, server_ip, port): (&str, &str, &str, u16),
    len: usize,
    bits: &str,
    seconds: u32,
) -> (f64, f64, f64) {
    let (len, seconds) = (len.to_string(), seconds.to_string());
    let args = ["-u", "-b", bits, "-l", &len, "-t", &seconds];
    let json = iperf(lab, client, server, server_ip, port, &args, "sum");
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_f64().expect("packets");
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    (packets, lost, sum["seconds"].as_f64().expect("seconds"))
}

/// One iperf3 UDP test at unlimited rate with `len`-byte datagrams; returns
/// the datagrams per second that arrived, and those sent.
pub fn iperf_udp_pps(
    lab: &Lab,
    client: &str,
    server: &str,
    server_ip: &str,
    port: u16,
    len: usize,
) -> (f64, f64) {
    let (packets, lost, seconds) = iperf_udp(lab, (client, server, server_ip, port), len, "0", 5);
    ((packets - lost) / seconds, packets / seconds)
}

/// The highest rate of `len`-byte UDP datagrams a path carries with under
/// 1 % loss, in datagrams per second (RFC 2544's throughput, coarsely):
/// iperf3 offers 40,000 a second for 2 s, then a quarter more each step,
/// until two steps in a row lose more (one may be the machine's noise); the
/// most that arrived in a step that did not is returned (0 if none did).
/// Unlike an unlimited offer, this does not measure how the machine's CPUs
/// are shared out between a flooding sender and its receiver.
pub fn iperf_udp_lossless_pps(
    lab: &Lab,
    client: &str,
    server: &str,
    server_ip: &str,
    port: u16,
    len: usize,
) -> f64 {
    let mut offered = 40_000.0_f64;
    let (mut best, mut failed) = (0.0_f64, 0);
    while offered < 2e6 && failed < 2 {
        let bits = format!("{}", (offered * len as f64 * 8.0) as u64);
        let (packets, lost, seconds) = iperf_udp(lab, (client, server, server_ip, port), len, &bits, 2);
        if packets == 0.0 || lost / packets > 0.01 {
            failed += 1;
        } else {
            failed = 0;
            best = best.max((packets - lost) / seconds);
        }
        offered *= 1.25;
    }
    best
}

/// One sockperf UDP ping-pong of `seconds`; returns (p50, p99) round-trip
/// latency in microseconds.
pub fn sockperf_rtt(
    lab: &Lab,
    client: &str,
    server: &str,
    server_ip: &str,
    port: u16,
    seconds: u32,
) -> (f64, f64) {
    let ip: Ipv4Addr = server_ip.parse().expect("server_ip is an IPv4 address");
    let server_pid = spawn_in(lab, server, "sockperf", &["server", "-i", server_ip, "-p", &port.to_string()]);
    let listening = netns_tests::wait_until(Duration::from_secs(5), || {
        udp_bound(server_pid, ip, port) || !lab.is_running(server_pid)
    });
    assert!(
        listening && lab.is_running(server_pid),
        "sockperf server on {server_ip}:{port} in {server} did not start (is sockperf installed?)"
    );
    let port = port.to_string();
    let out = Lab::run_in(
        client,
        "sockperf",
        &["ping-pong", "--full-rtt", "-i", server_ip, "-p", &port, "-t", &seconds.to_string(), "-m", "64"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = lab.stop(server_pid, Duration::from_secs(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let percentile = |p: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("percentile {p}")))
            .unwrap_or_else(|| panic!("sockperf printed no percentile {p}:\n{text}"));
        // "sockperf: ---> percentile 50.000 =   14.246", in microseconds.
        line.rsplit('=').next().unwrap().trim().parse().expect("percentile value")
    };
    (percentile("50.000"), percentile("99.000"))
}

/// Whether a UDP socket is bound to `ip:port` (or the wildcard address and
/// `port`) in the network namespace of process `pid`, from its
/// `/proc/PID/net/udp`.
fn udp_bound(pid: u32, ip: Ipv4Addr, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/udp")) else { return false };
    // local_address is "ADDRESS:PORT" in hex: the address as the kernel's
    // u32 in host byte order, the port in host byte order.
    let local = |ip: Ipv4Addr| format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    let wanted = [local(ip), local(Ipv4Addr::UNSPECIFIED)];
    table
        .lines()
        .skip(1)
        .any(|line| line.split_whitespace().nth(1).is_some_and(|l| wanted.iter().any(|w| w == l)))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};

    use super::{median, udp_bound};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_bound_udp_socket_is_seen_until_it_closes() {
        let me = std::process::id();
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(udp_bound(me, Ipv4Addr::LOCALHOST, port));
        assert!(!udp_bound(me, Ipv4Addr::new(127, 0, 0, 2), port), "another address");
        drop(socket);
        assert!(!udp_bound(me, Ipv4Addr::LOCALHOST, port));
        let wildcard = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = wildcard.local_addr().unwrap().port();
        assert!(udp_bound(me, Ipv4Addr::LOCALHOST, port), "the wildcard address covers every address");
    }
}
