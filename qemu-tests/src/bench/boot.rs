//! `cargo xtask bench boot`: power-on to ready for `ci-node` through the whole PXE chain, by
//! stage. Host-side stages come from the boot server's records (its clock); guest-side ones
//! from the first stage's uptime lines; the two are joined at the kernel's start, which is
//! the moment the ready line appeared on the console minus the uptime it gives. Then ten
//! nodes at once, as `cargo xtask boot ci-node --nodes 10 --check` runs them: the time to all
//! ready and which shared resource runs out first ([`crate::usage`]).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{RUNS, ci_node, pxe_boot};
use crate::report::{Figure, Report, machine, median, qemu_version};

/// The stages between the ten marks [`pxe_boot`] returns.
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
const GOAL_S: f64 = 25.0;
/// The goal for kernel start to ready, in seconds.
const KERNEL_GOAL_S: f64 = 10.0;
/// Nodes booted at once in the second part.
const FLEET: usize = 10;
/// How long the second part waits for every ready line.
const FLEET_TIMEOUT: Duration = Duration::from_secs(1200);

/// Runs the benchmark for the project at `project`.
pub fn run(project: &Path) -> Result<Report> {
    if !crate::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let work = project.join("target").join("bench-boot");
    let built = ci_node(project, "bench-boot")?;
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    let mut totals = Vec::new();
    let mut kernels = Vec::new();
    let mut analyses = Vec::new();
    let (mut transfers, mut hashes) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let b = pxe_boot(&work.join("out"), &work.join(format!("run{run}")), true)?;
        let marks = b.marks;
        transfers.push(b.transfer_s);
        hashes.push(b.hash_s);
        let analysis = b.analysis;
        for (i, p) in per.iter_mut().enumerate() {
            p.push(marks[i + 1] - marks[i]);
        }
        let total = marks[STAGES.len()] - marks[0];
        totals.push(total);
        kernels.push(marks[STAGES.len()] - marks[5]);
        analyses.push((total, analysis));
        eprintln!("run {}: power-on to ready {total:.1} s", run + 1);
    }
    // systemd's own account of the run whose power-on to ready was the median.
    analyses.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, analysis) = &analyses[analyses.len() / 2];
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
        if name.starts_with("image fetch") {
            let _ = writeln!(
                md,
                "| - of which the transfers (HTTP into RAM) | {:.1} |\n\
                 | - of which sha256 (the guest's CPU, emulated) | {:.1} |",
                median(&mut transfers),
                median(&mut hashes)
            );
        }
    }
    let total = median(&mut totals);
    let kernel = median(&mut kernels);
    let _ = writeln!(
        md,
        "| **power-on to ready** (goal: under 25 s; the seed's Debian installer: 5 to 10 min) \
         | **{total:.1}** |"
    );
    let _ = writeln!(
        md,
        "| kernel start to ready (goal: under 10 s) | {kernel:.1} |"
    );
    let _ = writeln!(
        md,
        "\nsystemd's account of the median run (`systemd-analyze time`, `critical-chain`, \
         `blame`, printed by the node booted with `ironbake.analyze`):\n\n```"
    );
    for l in analysis {
        let _ = writeln!(md, "{l}");
    }
    let _ = writeln!(md, "```");
    let fleet = fleet(project, &work)?;
    let _ = writeln!(
        md,
        "\n{FLEET} nodes at once, as `cargo xtask boot ci-node --nodes {FLEET} --check` boots \
         them: the inventory's nodes `ci0` to `ci{}`, one vCPU and 1536 MiB each, on the same \
         LAN and boot server; seconds from the VMs' start. The resources are sampled every \
         second; the one that spent the most seconds at 90% of its limit or more ran out \
         first (the test's bridge is not held to 1 Gbit/s, so a second can go over it).\n",
        FLEET - 1
    );
    let secs: Vec<f64> = fleet.ready.iter().map(|r| r.1).collect();
    let all = secs.iter().copied().fold(0.0, f64::max);
    let first = secs.iter().copied().fold(f64::INFINITY, f64::min);
    let (limit, share) = fleet.usage.first_to_run_out();
    let rows = vec![
        (
            "nodes ready".to_string(),
            format!("{}/{FLEET}", fleet.ready.len()),
        ),
        (
            "first ready / all ready".to_string(),
            format!("{first:.0} s / {all:.0} s"),
        ),
        (
            format!("all ready / one node's power-on to ready ({total:.1} s, above)"),
            format!("{:.1}x", all / total),
        ),
    ]
    .into_iter()
    .chain(
        fleet
            .usage
            .lines()
            .into_iter()
            .map(|l| match l.split_once(": ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l, String::new()),
            }),
    )
    .collect::<Vec<_>>();
    crate::report::figure_table(&mut md, &rows);
    let mut figures = vec![
        Figure::info(
            format!("{FLEET} nodes at once: all ready"),
            format!("{all:.0} s ({:.1}x one node)", all / total),
        ),
        Figure::info(
            format!("{FLEET} nodes at once: first to run out"),
            format!(
                "{limit}, at 90% of its limit or more for {share:.0} of {:.0} s",
                fleet.usage.secs
            ),
        ),
    ];
    figures.extend([
        Figure::goal(
            "power-on to ready, ci-node over PXE",
            "under 25 s",
            format!("{total:.1} s"),
            total < GOAL_S,
        ),
        Figure::goal(
            "kernel start to ready, ci-node over PXE",
            "under 10 s",
            format!("{kernel:.1} s"),
            kernel < KERNEL_GOAL_S,
        ),
    ]);
    Ok(Report::new("boot", md, figures))
}

/// [`FLEET`] inventory nodes booted at once through `cargo xtask boot`'s own code.
fn fleet(project: &Path, work: &Path) -> Result<crate::boot::Outcome> {
    let mut paths = ironbake::Paths::in_project(project);
    paths.out = work.join("out");
    paths.cache = project.join("target").join("qemu-tests").join("cache");
    eprintln!("{FLEET} nodes at once...");
    let opts = crate::boot::Options {
        recipe: "ci-node".into(),
        nodes: FLEET,
        check: true,
        timeout: FLEET_TIMEOUT,
        without: Vec::new(),
        disk: false,
        echo: false,
        paths: Some(paths),
    };
    let outcome = crate::boot::boot(project, &opts)?;
    if outcome.code != ExitCode::SUCCESS {
        bail!(
            "{} of {FLEET} nodes were ready after {} s (their consoles are above)",
            outcome.ready.len(),
            FLEET_TIMEOUT.as_secs()
        );
    }
    Ok(outcome)
}
