//! Loopback throughput of the TCP relays: `splice(2)` against tokio's
//! `copy_bidirectional`, with a direct connection (no relay) for reference.
//!
//! `cargo run --release -p shoal-mesh --example relay_throughput [seconds [rounds]]`
//!
//! Clients and backends are plain threads with blocking sockets; the mesh
//! runs on a tokio runtime of one worker thread, whose CPU time (from
//! `/proc/self/task/*/schedstat`) is the relay's cost. Each run warms up
//! for half a second, then counts the bytes the receivers got over the
//! measured seconds (2 by default); the report gives the median of the
//! rounds (5 by default), which run interleaved.
#![allow(clippy::print_stdout, reason = "a benchmark's output is its report")]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shoal_mesh::{Limits, Mesh, PortKey, PortSpec, Relay, Upstream};

/// The name of the mesh runtime's worker thread.
const RELAY_THREAD: &str = "mesh-relay";
const BUFFER: usize = 256 * 1024;
const WARM_UP: Duration = Duration::from_millis(500);

struct ToBackend(SocketAddr);

impl Upstream for ToBackend {
    fn connect(
        &self,
        _port: &PortKey,
        _client: SocketAddr,
    ) -> impl Future<Output = io::Result<tokio::net::TcpStream>> + Send {
        tokio::net::TcpStream::connect(self.0)
    }

    async fn udp(&self, _port: &PortKey, _client: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        Err(io::Error::other("no udp here"))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Mesh(Relay),
}

struct Scenario {
    name: &'static str,
    connections: usize,
    both_ways: bool,
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<u64>().ok());
    let measure = Duration::from_secs(args.next().flatten().unwrap_or(2));
    let rounds = args.next().flatten().unwrap_or(5) as usize;
    let scenarios = [
        Scenario { name: "1 connection, one way", connections: 1, both_ways: false },
        Scenario { name: "1 connection, both ways", connections: 1, both_ways: true },
        Scenario { name: "8 connections, one way", connections: 8, both_ways: false },
    ];
    let paths = [Path::Direct, Path::Mesh(Relay::Splice), Path::Mesh(Relay::Copy)];
    println!("medians of {rounds} interleaved rounds of {measure:?}");
    println!("{:<26} {:<8} {:>10} {:>16}", "scenario", "relay", "Gbit/s", "relay CPU s/GB");
    for scenario in &scenarios {
        // Interleaved, so that a noisy neighbour hurts every path alike.
        let mut results = vec![(Vec::new(), Vec::new()); paths.len()];
        for _ in 0..rounds {
            for (path, (rates, costs)) in paths.iter().zip(&mut results) {
                let (bytes, cpu) = run(*path, scenario, measure)?;
                rates.push(bytes as f64 * 8.0 / measure.as_secs_f64() / 1e9);
                costs.push(cpu.as_secs_f64() / (bytes as f64 / 1e9));
            }
        }
        for (path, (rates, costs)) in paths.iter().zip(&mut results) {
            let name = match path {
                Path::Direct => "direct",
                Path::Mesh(Relay::Splice) => "splice",
                Path::Mesh(Relay::Copy) => "copy",
            };
            let cost = match path {
                Path::Direct => "-".to_owned(),
                Path::Mesh(_) => format!("{:.3}", median(costs)),
            };
            println!("{:<26} {:<8} {:>10.2} {:>16}", scenario.name, name, median(rates), cost);
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Bytes received over `measure`, and the relay thread's CPU time meanwhile.
fn run(path: Path, scenario: &Scenario, measure: Duration) -> io::Result<(u64, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    let backend = TcpListener::bind("127.0.0.1:0")?;
    let backend_address = backend.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(RELAY_THREAD)
        .enable_all()
        .build()?;
    let mut mesh = None;
    let target = match path {
        Path::Direct => backend_address,
        Path::Mesh(relay) => {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let key = PortKey::tcp(port);
            let opened = runtime.block_on(async {
                let upstream = Arc::new(ToBackend(backend_address));
                Mesh::with_relay(upstream, IpAddr::V4(Ipv4Addr::LOCALHOST), Limits::default(), relay)
            });
            let errors = opened.set(vec![PortSpec { key, proxy_protocol: false }]);
            assert!(errors.is_empty(), "{errors:?}");
            mesh = Some(opened);
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
    };

    for _ in 0..scenario.connections {
        let client = TcpStream::connect(target)?;
        let (server, _) = backend.accept()?;
        for stream in [&client, &server] {
            stream.set_nodelay(true)?;
        }
        threads.push(sender(client.try_clone()?, stop.clone()));
        threads.push(receiver(server.try_clone()?, received.clone()));
        if scenario.both_ways {
            threads.push(sender(server, stop.clone()));
            threads.push(receiver(client, received.clone()));
        }
    }

    thread::sleep(WARM_UP);
    let (bytes_before, cpu_before, started) = (received.load(Ordering::Relaxed), relay_cpu(), Instant::now());
    thread::sleep(measure);
    let bytes = received.load(Ordering::Relaxed) - bytes_before;
    let cpu = relay_cpu().saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    drop(mesh);
    drop(runtime);
    // Scale to exactly `measure`, for the caller's rate.
    let bytes = (bytes as f64 * measure.as_secs_f64() / elapsed.as_secs_f64()) as u64;
    Ok((bytes, cpu))
}

/// Writes until told to stop, then shuts down its side.
fn sender(mut stream: TcpStream, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    thread::spawn(move || {
        let chunk = vec![0x5a_u8; BUFFER];
        while !stop.load(Ordering::Relaxed) {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// Reads until the end, counting.
fn receiver(mut stream: TcpStream, received: Arc<AtomicU64>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = vec![0u8; BUFFER];
        while let Ok(n @ 1..) = stream.read(&mut buffer) {
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    })
}

/// CPU time of the mesh runtime's threads so far.
fn relay_cpu() -> Duration {
    let mut total = 0u64;
    let Ok(tasks) = fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    for task in tasks.flatten() {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(RELAY_THREAD) {
            continue;
        }
        let schedstat = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
    }
    Duration::from_nanos(total)
}
