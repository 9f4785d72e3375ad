//! The boot storm: [`NODES`] simulated nodes fetch a bootloader over TFTP and a kernel, an
//! initramfs and an image over HTTP, all at once, against one node alone; every node must
//! finish, with the server's limits as they are by default (the nodes come from
//! [`super::SOURCES`] addresses, ten to an address).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    Bench, RUNS, STORM, TFTP_FILE, http_get, mbps, median, peak_rss_mb, tftp_get, until_up,
};
use crate::netns::Netns;

/// How many nodes boot at once.
pub const NODES: usize = 100;

/// What the storm measured.
pub struct Storm {
    /// Nodes that fetched everything.
    pub finished: usize,
    /// Failed fetches that were tried again.
    pub retries: u32,
    /// One node alone: seconds and MB/s.
    pub single: (f64, f64),
    /// Wall time of the storm.
    pub wall_s: f64,
    /// Aggregate MB/s during the storm.
    pub aggregate: f64,
    /// Completion times of the nodes that finished, sorted.
    pub done: Vec<f64>,
    /// The server's peak resident memory (VmHWM), MB.
    pub peak_mb: f64,
}

impl Storm {
    /// The `p`th percentile of completion times.
    pub fn pct(&self, p: f64) -> f64 {
        self.done
            .get(((p * self.done.len() as f64).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Bytes one node fetches.
pub fn node_bytes() -> usize {
    STORM.iter().map(|(_, l)| l).sum()
}

/// One node's boot: every file in turn, each failed fetch retried after 1 s (ten times at
/// most); its seconds and retries.
pub(super) fn boot_one(b: &Bench, ns: &Netns, i: usize) -> Result<(f64, u32)> {
    let t = Instant::now();
    let mut retries = 0;
    let dest = b.scratch.join(format!("node{i}.efi"));
    for (k, (f, _)) in STORM.iter().enumerate() {
        let mut tries = 0;
        loop {
            let r = if k == 0 {
                tftp_get(ns, f, Some(4), &dest)
            } else {
                http_get(ns, 8080, f)
            };
            match r {
                Ok(_) => break,
                Err(e) if tries >= 10 => return Err(e.context(format!("node {i}: {f}"))),
                Err(_) => {
                    tries += 1;
                    retries += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&dest);
    Ok((t.elapsed().as_secs_f64(), retries))
}

/// Runs the storm against a fresh `netboot serve` on the LAN link.
pub fn run(b: &Bench) -> Result<Storm> {
    run_with(b, 0, "netboot-storm.log", None).map(|(s, _)| s)
}

/// The storm with the server under a Raspberry Pi-like CPU budget ([`super::pi`]).
pub fn run_pi(b: &Bench) -> Result<Storm> {
    let budget = super::pi::Budget::new()?;
    run_with(b, 0, "netboot-storm-pi.log", Some(&budget)).map(|(s, _)| s)
}

/// Runs the storm against a fresh `netboot serve` on the LAN link (its log in `log`), with
/// the fleet page open in `pages` headless Chromium browsers from the first node on (after
/// the one-node runs); also how many pages were still live, with every inventory row,
/// after the storm. With `budget`, the server runs under it from its start.
pub fn run_with(
    b: &Bench,
    pages: usize,
    log: &str,
    budget: Option<&super::pi::Budget>,
) -> Result<(Storm, usize)> {
    let daemon = b.netboot(8080, log)?;
    if let Some(budget) = budget {
        budget.hold(daemon.child.id())?;
    }
    until_up("netboot", Duration::from_secs(10), || {
        http_get(&b.c, 8080, TFTP_FILE)
    })?;
    let single: Vec<f64> = (0..RUNS)
        .map(|i| boot_one(b, &b.nodes[0], i).map(|r| r.0))
        .collect::<Result<_>>()?;
    let single_s = median(single);
    let single_mbps = mbps(node_bytes(), single_s);
    eprintln!("one node alone: {single_s:.2} s ({single_mbps:.0} MB/s)");
    let browsers = super::page::open(b, pages)?;
    let t = Instant::now();
    let results: Vec<Result<(f64, u32)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..NODES)
            .map(|i| sc.spawn(move || boot_one(b, &b.nodes[i % b.nodes.len()], 1000 + i)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("node thread panicked")))
            })
            .collect()
    });
    let wall_s = t.elapsed().as_secs_f64();
    let peak_mb = peak_rss_mb(daemon.child.id()).unwrap_or(f64::NAN);
    let live = super::page::still_live(&browsers);
    drop(browsers);
    for r in results.iter().filter(|r| r.is_err()) {
        eprintln!("storm failure: {:#}", r.as_ref().unwrap_err());
    }
    let ok: Vec<(f64, u32)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let mut done: Vec<f64> = ok.iter().map(|r| r.0).collect();
    done.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let aggregate = mbps(node_bytes() * ok.len(), wall_s);
    eprintln!(
        "storm: {}/{NODES} nodes in {wall_s:.1} s, {aggregate:.0} MB/s, peak RSS {peak_mb:.1} MB",
        ok.len()
    );
    Ok((
        Storm {
            finished: ok.len(),
            retries: ok.iter().map(|r| r.1).sum(),
            single: (single_s, single_mbps),
            wall_s,
            aggregate,
            done,
            peak_mb,
        },
        live,
    ))
}
