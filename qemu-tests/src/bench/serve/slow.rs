//! Hostile and careless clients against the boot server as it runs by default: one source
//! opens [`ATTEMPTS`] connections and sends a request on none of them (half send part of a
//! request line). The server keeps its share of them, refuses the rest, closes the ones it
//! kept once the header timeout passes, and meanwhile another machine boots as fast as alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::storm::boot_one;
use super::{Bench, SERVER, TFTP_FILE, http_get, median, peak_rss_mb, until_up};

/// Connections the slow source tries to open.
pub const ATTEMPTS: usize = 200;

/// What the slow clients' run measured.
pub struct Slow {
    /// The server's limits, as its start line gives them (`name=value`).
    pub limits: Vec<(String, String)>,
    /// Connections the server kept from the slow source.
    pub held: usize,
    /// Connections it refused with 503.
    pub refused: usize,
    /// How many of the kept ones it closed, and when the last went (seconds after opening).
    pub closed: (usize, f64),
    /// Another machine's boot fetch alone, then while the slow source held its connections.
    pub other_s: (f64, f64),
    /// The server's peak resident memory (VmHWM), MB.
    pub peak_mb: f64,
}

/// The `key=value` fields of the server's start line (its text log).
fn start_fields(log: &str) -> Vec<(String, String)> {
    let Some(line) = log.lines().find(|l| l.contains("netboot serving")) else {
        return vec![];
    };
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| k.starts_with("http_") || k.starts_with("tftp_") || *k == "open_files")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Opens [`ATTEMPTS`] connections from the client namespace (one address), half of them
/// with part of a request line sent; classifies them a second later: (held, refused).
fn open_slow(b: &Bench) -> Result<(Vec<TcpStream>, usize)> {
    let to: SocketAddr = format!("{SERVER}:8080").parse().expect("an address");
    std::thread::scope(|sc| {
        sc.spawn(|| -> Result<(Vec<TcpStream>, usize)> {
            b.c.enter_this_thread()?;
            let mut conns = Vec::new();
            for i in 0..ATTEMPTS {
                let mut c = TcpStream::connect(to).context("connecting")?;
                if i % 2 == 1 {
                    let _ = c.write_all(b"GET /storm/vmlinuz HT");
                }
                conns.push(c);
            }
            std::thread::sleep(Duration::from_secs(1));
            let (mut held, mut refused) = (Vec::new(), 0);
            for mut c in conns {
                c.set_nonblocking(true)?;
                let mut buf = [0u8; 64];
                match c.read(&mut buf) {
                    Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 503") => refused += 1,
                    _ => held.push(c),
                }
            }
            Ok((held, refused))
        })
        .join()
        .expect("the slow client thread")
    })
}

/// Waits (up to a minute) for the server to close every held connection; how many it
/// closed, and the seconds since `opened` when the last went.
fn wait_closed(held: &mut [TcpStream], opened: Instant) -> (usize, f64) {
    let mut closed = vec![false; held.len()];
    let mut last = 0.0;
    while opened.elapsed() < Duration::from_secs(60) && closed.iter().any(|c| !c) {
        for (i, c) in held.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            let mut buf = [0u8; 256];
            match c.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // An answer (408) before the close, or a reset: keep reading until EOF.
                Ok(_) => continue,
                Err(_) => {}
            }
            closed[i] = true;
            last = opened.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (closed.iter().filter(|c| **c).count(), last)
}

/// Runs the slow clients against a fresh `netboot serve`.
pub fn run(b: &Bench) -> Result<Slow> {
    let daemon = b.netboot(8080, "netboot-slow.log")?;
    until_up("netboot", Duration::from_secs(10), || {
        http_get(&b.c, 8080, TFTP_FILE)
    })?;
    let other = &b.nodes[1];
    let alone: Vec<f64> = (0..3)
        .map(|i| boot_one(b, other, 2000 + i).map(|r| r.0))
        .collect::<Result<_>>()?;
    let opened = Instant::now();
    let (mut held, refused) = open_slow(b)?;
    let during: Vec<f64> = (0..3)
        .map(|i| boot_one(b, other, 3000 + i).map(|r| r.0))
        .collect::<Result<_>>()?;
    let closed = wait_closed(&mut held, opened);
    let peak_mb = peak_rss_mb(daemon.child.id()).unwrap_or(f64::NAN);
    let log = std::fs::read_to_string(b.work.join("netboot-slow.log")).unwrap_or_default();
    eprintln!(
        "slow clients: {} held, {refused} refused, {}/{} closed by {:.1} s, peak {peak_mb:.1} MB",
        held.len(),
        closed.0,
        held.len(),
        closed.1
    );
    Ok(Slow {
        limits: start_fields(&log),
        held: held.len(),
        refused,
        closed,
        other_s: (median(alone), median(during)),
        peak_mb,
    })
}
