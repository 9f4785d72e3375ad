//! `cargo xtask bench boot`: power-on to ready for `ci-node` through the whole PXE chain, by
//! stage. Host-side stages come from the boot server's records (its clock); guest-side ones
//! from the first stage's uptime lines; the two are joined at the kernel's start, which is
//! the moment the ready line appeared on the console minus the uptime it gives.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};

use super::{RUNS, ci_node, pxe_boot_marks};
use crate::report::{Figure, Report, machine, median, qemu_version};

/// The stages between the ten marks [`pxe_boot_marks`] returns.
const STAGES: [&str; 9] = [
    "firmware: power-on to its PXE request answered",
    "DHCP answer to iPXE loaded (TFTP)",
    "iPXE: its DHCP, the node's script",
    "kernel, initramfs and settings over HTTP",
    "kernel starts (EFI stub, decompression)",
    "first stage: drivers and DHCP",
    "image fetch + verify (sha256)",
    "mount, switch_root",
    "systemd to the ready line",
];

/// The goal for power-on to ready, in seconds.
const GOAL_S: f64 = 45.0;

/// Runs the benchmark for the project at `project`.
pub fn run(project: &Path) -> Result<Report> {
    if !crate::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let work = project.join("target").join("bench-boot");
    let built = ci_node(project, "bench-boot")?;
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    let mut totals = Vec::new();
    for run in 0..RUNS {
        let marks = pxe_boot_marks(&work.join("out"), &work.join(format!("run{run}")))?;
        for (i, p) in per.iter_mut().enumerate() {
            p.push(marks[i + 1] - marks[i]);
        }
        let total = marks[STAGES.len()] - marks[0];
        totals.push(total);
        eprintln!("run {}: power-on to ready {total:.1} s", run + 1);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### boot, {} (`cargo xtask bench boot`)\n",
        crate::report::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. QEMU {} with TCG (no KVM), q35, OVMF (Debian's ovmf), 2 vCPUs, 1536 MiB, \
         virtio-net on a tap bridged to the boot server and a dnsmasq router inside network \
         namespaces; `netboot serve` (debug build, in-process); {RUNS} power-on-to-ready boots \
         of `ci-node@{}`, medians per stage.\n",
        machine(),
        qemu_version(),
        built.manifest.version
    );
    let _ = writeln!(md, "| stage | seconds |");
    let _ = writeln!(md, "| --- | ---: |");
    for (name, p) in STAGES.iter().zip(&mut per) {
        let _ = writeln!(md, "| {name} | {:.1} |", median(p));
    }
    let total = median(&mut totals);
    let _ = writeln!(
        md,
        "| **power-on to ready** (goal: under 45 s; the seed's Debian installer: 5 to 10 min) \
         | **{total:.1}** |"
    );
    let figures = vec![Figure::goal(
        "power-on to ready, ci-node over PXE",
        "under 45 s",
        format!("{total:.1} s"),
        total < GOAL_S,
    )];
    Ok(Report::new("boot", md, figures))
}
