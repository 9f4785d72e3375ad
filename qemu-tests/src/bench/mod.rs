//! The benchmarks `cargo xtask bench` runs under QEMU and against the boot server: each
//! returns a [`Report`](crate::report::Report) (a history entry and its figures), which
//! `cargo xtask` prints and records.
//!
//! `initramfs.rs`: the initramfs against Debian's mkinitramfs, kernel start to ready by stage;
//! `boot.rs`: power-on to ready through the whole PXE chain, by stage; `disk.rs`: a disk
//! image's write time against the shell route, its sizes, booting it against PXE;
//! `serve.rs`: the boot server against tftpd-hpa, dnsmasq and nginx, and a boot storm;
//! `rollout.rs`: an overlay edit to ready on the new version through a rollout, and power;
//! `install.rs`: power-on to ready from a disk installed over the network.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::lan::Lan;
use crate::qemu::{Nic, Vm, VmConfig, ovmf};
use crate::server::Server;

pub mod boot;
pub mod disk;
pub mod initramfs;
pub mod install;
pub mod rollout;
pub mod serve;

/// Runs per measurement; figures are medians.
const RUNS: usize = 3;

/// The uptime a first-stage line gives: `ironbake: [   4.52s] ...`.
fn uptime_of(line: &str) -> Option<f64> {
    let start = line.find('[')? + 1;
    let end = line[start..].find("s]")? + start;
    line[start..end].trim().parse().ok()
}

/// Seconds since the Unix epoch, with fractions.
fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The uptime in seconds a ready line gives (`... ready ci-node@V in 25.0 s`).
fn ready_uptime(line: &str) -> Result<f64> {
    line.rsplit(" in ")
        .next()
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .context("reading the ready line")
}

/// Polls `vm`'s console (often: the moment is a measurement) until a line contains `needle`,
/// the ready line; returns when it was seen and the uptime it gives.
fn watch_ready(vm: &mut Vm, needle: &str) -> Result<(SystemTime, f64)> {
    let deadline = Instant::now() + crate::deadline::PXE_READY;
    let (line, seen) = loop {
        let text = vm.console.text();
        if let Some(l) = crate::console::lines(&text)
            .into_iter()
            // A whole line: the console may be caught halfway through writing it.
            .find(|l| l.contains(needle) && l.trim_end().ends_with(" s"))
        {
            break (l.to_string(), SystemTime::now());
        }
        if Instant::now() > deadline || !vm.alive() {
            bail!(
                "no ready line; last console lines:\n{}",
                vm.console.tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((seen, ready_uptime(&line)?))
}

/// One PXE boot of the current `ci-node` published under `out`, through the whole chain
/// (router, boot server, OVMF, iPXE) in a LAN of its own under `dir`: the moments (Unix
/// seconds) of power-on, the server's dhcp, bootloader, script and initrd records, the
/// kernel's start, the first stage's network, fetched overlay and root ready lines, and the
/// ready line.
fn pxe_boot_marks(out: &Path, dir: &Path) -> Result<[f64; 10]> {
    pxe_boot(out, dir, false).map(|b| b.marks)
}

/// One PXE boot, measured.
struct PxeBoot {
    /// See [`pxe_boot_marks`].
    marks: [f64; 10],
    /// With `analyze`: what the node said of systemd's part of the boot (`systemd-analyze
    /// time`, the critical chain, the slowest units), without the line prefix.
    analysis: Vec<String>,
    /// Seconds the layers' transfers took, and their sha256 checks (the first stage's
    /// `fetched NAME: N MiB in X s, sha256 verified in Y s` lines, summed).
    transfer_s: f64,
    hash_s: f64,
}

/// [`pxe_boot_marks`] and more; with `analyze` the node boots with `ironbake.analyze`.
fn pxe_boot(out: &Path, dir: &Path, analyze: bool) -> Result<PxeBoot> {
    let _ = std::fs::remove_dir_all(dir);
    let lan = Lan::new("bboot", dir)?;
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[nodes.bench0]\nmac = \"52:54:00:00:00:41\"\nrecipe = \"ci-node\"\n{}",
            if analyze {
                "kernel-args = \"ironbake.analyze\"\n"
            } else {
                ""
            }
        ),
    )?;
    let server = Server::start(&lan, out, &inventory, dir)?;
    let cfg = VmConfig {
        name: "bench0".into(),
        boot: ovmf(),
        mem_mib: 1536,
        cpus: 2,
        nic: Some(Nic {
            mac: "52:54:00:00:00:41".into(),
            tap: lan.tap()?,
        }),
        disks: vec![],
        links: vec![],
    };
    let power_on = SystemTime::now();
    let mut vm = Vm::start(&lan.ns, &cfg, dir)?;
    let (seen, uptime) = watch_ready(&mut vm, "ironbake: bench0 ready ci-node@")?;
    let boot = server
        .hub
        .boots()
        .into_iter()
        .find(|b| b.mac == "52:54:00:00:00:41")
        .context("the server has no record of the boot")?;
    let start = unix_s(boot.started_wall.context("no start time")?);
    let at = |stage: &str| {
        boot.stages
            .iter()
            .find(|s| s.stage.name() == stage)
            .map(|s| start + s.at_s)
            .with_context(|| format!("no {stage} stage in the server's record"))
    };
    let kernel = unix_s(seen) - uptime;
    let text = vm.console.text();
    let lines = crate::console::lines(&text);
    let up = |needle: &str| {
        lines
            .iter()
            .find(|l| l.starts_with("ironbake: [") && l.contains(needle))
            .and_then(|l| uptime_of(l))
            .with_context(|| format!("no {needle:?} line"))
    };
    let mut analysis = Vec::new();
    if analyze {
        let prefix = "ironbake: bench0 analyze: ";
        let end = format!("{prefix}end");
        vm.console.wait_for(
            "its boot analysis",
            Duration::from_secs(120),
            0,
            || true,
            |l| l == end,
        )?;
        let text = vm.console.text();
        analysis = crate::console::lines(&text)
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|l| *l != "end")
            .map(str::to_string)
            .collect();
    }
    let marks = [
        unix_s(power_on),
        at("dhcp")?,
        at("bootloader")?,
        at("script")?,
        at("initrd")?,
        kernel,
        kernel + up("] network: ")?,
        kernel + up("] fetched overlay.squashfs")?,
        kernel + up("] root ready")?,
        kernel + uptime,
    ];
    let (mut transfer_s, mut hash_s) = (0.0, 0.0);
    for l in lines.iter().filter(|l| l.contains("] fetched ")) {
        let secs = |after: &str| {
            l.split(after)
                .nth(1)
                .and_then(|r| r.split(" s").next())
                .and_then(|n| n.trim().parse::<f64>().ok())
                .with_context(|| format!("no {after:?} in {l:?}"))
        };
        transfer_s += secs(" MiB in ")?;
        hash_s += secs("sha256 verified in ")?;
    }
    Ok(PxeBoot {
        marks,
        analysis,
        transfer_s,
        hash_s,
    })
}

/// `ci-node` built (or found published) under `target/WORK/out` of the project, with the VM
/// tests' package-layer cache.
fn ci_node(project: &Path, work: &str) -> Result<ironbake::Built> {
    let mut paths = ironbake::Paths::in_project(project);
    paths.out = project.join("target").join(work).join("out");
    paths.cache = project.join("target").join("qemu-tests").join("cache");
    ironbake::build(
        &paths,
        "ci-node",
        &ironbake::BuildOptions::default(),
        &ironbake::progress::Progress::new(false),
    )
}
