//! `cargo xtask bench initramfs`: the initramfs's size against Debian's mkinitramfs for the
//! same kernel, and the time from kernel start to the ready line under QEMU, by stage.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use netboot::layout::Manifest;

use super::{RUNS, ci_node, ready_uptime, uptime_of};
use crate::httpd::{Behaviour, Httpd};
use crate::lan::{self, Lan};
use crate::qemu::{Boot, Nic, Vm, VmConfig};
use crate::report::{Figure, Report, machine, median, qemu_version};

const PORT: u16 = 8080;

/// The stages of a boot, as the first stage prints them.
const STAGES: &[(&str, &str)] = &[
    ("kernel to first stage", "first stage "),
    ("drivers", "] drivers: "),
    ("DHCP", "] network: "),
    ("fetch + verify base", "] fetched base.squashfs"),
    ("fetch + verify overlay", "] fetched overlay.squashfs"),
    ("mount, switch_root", "] root ready"),
];

/// The goal for kernel start to ready, in seconds.
const READY_GOAL_S: f64 = 10.0;
/// The goal for the initramfs's size, in MB.
const SIZE_GOAL_MB: f64 = 8.0;

/// Runs the benchmark for the project at `project`.
pub fn run(project: &Path) -> Result<Report> {
    if !crate::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let work = project.join("target").join("bench-initramfs");
    let built = ci_node(project, "bench-initramfs")?;
    let m = &built.manifest;
    let ours = std::fs::metadata(built.dir.join("initrd.img"))?.len();
    let cache = project.join("target").join("qemu-tests").join("cache");
    let (anchor, anchor_s) = mkinitramfs(&cache, m, &work)?;
    let out = built.dir.parent().and_then(Path::parent).context("out/")?;
    let mut stages = boots(&built.dir, out, m, &work)?;
    Ok(report(m, ours, anchor, anchor_s, &mut stages))
}

/// The anchor: Debian's initramfs-tools for the same kernel, in a copy of the image's tree;
/// its size and seconds.
fn mkinitramfs(cache: &Path, m: &Manifest, work: &Path) -> Result<(u64, f64)> {
    let tree = work.join("anchor-root");
    let _ = ironbake::base::remove_tree(&tree);
    std::fs::create_dir_all(work)?;
    let cached = ironbake::base::cache_root(cache)
        .join(&m.debian.base_sha256)
        .join("rootfs");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&cached)
        .arg(&tree)
        .status()?;
    if !cp.success() {
        bail!("copying the image's tree");
    }
    let t = std::time::Instant::now();
    let mk = Command::new("chroot")
        .arg(&tree)
        .args(["mkinitramfs", "-o", "/tmp/anchor.img", &m.kernel.release])
        .output()
        .context("running mkinitramfs in the image")?;
    let anchor_s = t.elapsed().as_secs_f64();
    if !mk.status.success() {
        bail!(
            "mkinitramfs failed: {}",
            String::from_utf8_lossy(&mk.stderr)
        );
    }
    let anchor = std::fs::metadata(tree.join("tmp/anchor.img"))?.len();
    ironbake::base::remove_tree(&tree)?;
    Ok((anchor, anchor_s))
}

/// [`RUNS`] boots of the version in `vdir` (served from `out`) with the same VM as the tests
/// (no per-node settings, nothing broken on purpose): per stage, then systemd, then the
/// total, the seconds of each run.
fn boots(vdir: &Path, out: &Path, m: &Manifest, work: &Path) -> Result<Vec<Vec<f64>>> {
    let url = format!("http://{}:{PORT}", lan::SERVER_IP);
    let append = netboot::layout::boot_cmdline(m, &url, "bench", &url);
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len() + 2];
    for run in 0..RUNS {
        let dir = work.join(format!("run{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        let lan = Lan::new("bench", &dir)?;
        let _server = Httpd::start(&lan.ns, PORT, out, Behaviour::default())?;
        let cfg = VmConfig {
            name: "bench".into(),
            boot: Boot::Kernel {
                kernel: vdir.join("vmlinuz"),
                initrd: vdir.join("initrd.img"),
                append: append.clone(),
            },
            mem_mib: 1536,
            cpus: 2,
            nic: Some(Nic {
                mac: "52:54:00:00:00:09".into(),
                tap: lan.tap()?,
            }),
            disks: vec![],
            links: vec![],
        };
        let mut vm = Vm::start(&lan.ns, &cfg, &dir)?;
        let (line, _) = vm.wait_line(
            "the ready line",
            " ready ci-node@",
            crate::deadline::READY,
            0,
        )?;
        let secs = ready_uptime(&line)?;
        let text = vm.console.text();
        let lines = crate::console::lines(&text);
        let mut prev = 0.0;
        for (i, (_, needle)) in STAGES.iter().enumerate() {
            let at = lines
                .iter()
                .find(|l| l.starts_with("ironbake: [") && l.contains(needle))
                .and_then(|l| uptime_of(l))
                .with_context(|| format!("no {needle:?} line"))?;
            per_stage[i].push(at - prev);
            prev = at;
        }
        per_stage[STAGES.len()].push(secs - prev);
        per_stage[STAGES.len() + 1].push(secs);
        eprintln!("run {}: ready in {secs:.1} s", run + 1);
    }
    Ok(per_stage)
}

fn report(m: &Manifest, ours: u64, anchor: u64, anchor_s: f64, stages: &mut [Vec<f64>]) -> Report {
    let layers_mb = m
        .layers
        .iter()
        .filter_map(|l| m.outputs.iter().find(|o| &o.path == l))
        .map(|o| o.size)
        .sum::<u64>()
        / 1_000_000;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### initramfs, {} (`cargo xtask bench initramfs`)\n",
        crate::report::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. QEMU {} with TCG (no KVM), 2 vCPUs, 1536 MiB, virtio-net on a tap device \
         bridged, inside network namespaces, to the server and to a plain DHCP router \
         (dnsmasq); {RUNS} boots of `ci-node@{}` ({layers_mb} MB of layers), medians.\n",
        machine(),
        qemu_version(),
        m.version,
    );
    let (ours_mb, ratio) = (ours as f64 / 1e6, ours as f64 / anchor as f64);
    let _ = writeln!(md, "| initramfs | size (MB) | vs Debian's mkinitramfs |");
    let _ = writeln!(md, "| --- | ---: | ---: |");
    let _ = writeln!(
        md,
        "| ironbake `initrd.img` (default drivers) | {ours_mb:.1} | {ratio:.2}x |"
    );
    let _ = writeln!(
        md,
        "| Debian mkinitramfs, same kernel, same run ({anchor_s:.0} s to build) | {:.1} | 1.00x |\n",
        anchor as f64 / 1e6
    );
    let _ = writeln!(md, "| stage (kernel start to ready) | seconds |");
    let _ = writeln!(md, "| --- | ---: |");
    let n = STAGES.len();
    for (i, (name, _)) in STAGES.iter().enumerate() {
        let _ = writeln!(md, "| {name} | {:.1} |", median(&mut stages[i]));
    }
    let _ = writeln!(
        md,
        "| systemd to the ready line | {:.1} |",
        median(&mut stages[n])
    );
    let ready = median(&mut stages[n + 1]);
    let _ = writeln!(
        md,
        "| **kernel start to ready** (goal: under 10 s; reference point 12.2 s) | **{ready:.1}** |"
    );
    let figures = vec![
        Figure::goal(
            "initrd.img size",
            "at most 8 MB",
            format!("{ours_mb:.1} MB"),
            ours_mb <= SIZE_GOAL_MB,
        ),
        Figure::info("initrd.img / Debian's mkinitramfs", format!("{ratio:.2}x")),
        Figure::goal(
            "kernel start to ready",
            "under 10 s",
            format!("{ready:.1} s"),
            ready < READY_GOAL_S,
        ),
    ];
    Report::new("initramfs", md, figures)
}
