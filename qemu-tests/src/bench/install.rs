//! `cargo xtask bench install`: power-on to ready from the disk for a node with a blank disk
//! installed over the network (PXE, the first stage's install mode, a restart into the
//! disk), by step, against the 5 to 10 minutes the homelab's preseeded Debian installer took
//! per machine.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};

use super::RUNS;
use crate::install::{Step, at, follow};
use crate::lan::Lan;
use crate::qemu::{Nic, Vm, VmConfig, ovmf_retrying};
use crate::report::{Figure, Report, machine, median, qemu_version};
use crate::server::Server;

/// The seed's figure for a preseeded Debian install over PXE, per machine after the first.
const SEED_S: (f64, f64) = (300.0, 600.0);

/// Runs the benchmark for the project at `project`.
pub fn run(project: &Path) -> Result<Report> {
    if !crate::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let work = project.join("target").join("bench-install");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let paths = crate::fixture::disk_project("bench-install-out");
    let built = ironbake::build(
        &paths,
        "ci-node",
        &ironbake::BuildOptions::default(),
        &ironbake::progress::Progress::new(false),
    )?;
    let m = built.manifest;
    let image = m
        .outputs
        .iter()
        .find(|o| o.path == netboot::layout::DISK_IMAGE)
        .map(|o| o.size)
        .unwrap_or(0);
    let mut runs = Vec::new();
    for run in 0..RUNS {
        let dir = work.join(format!("run{run}"));
        std::fs::create_dir_all(&dir)?;
        let steps = one(&paths.out, &m, image, &dir)?;
        eprintln!(
            "run {}: power-on to ready from the disk {:.1} s",
            run + 1,
            at(&steps, "ready from the disk")
        );
        runs.push(steps);
    }
    Ok(report(&m.version, image, &runs))
}

/// One install of `m` onto a blank disk 1 GiB larger than the image, in a LAN of its own.
fn one(out: &Path, m: &netboot::layout::Manifest, image: u64, dir: &Path) -> Result<Vec<Step>> {
    let lan = Lan::new("binst", dir)?;
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[nodes.bench0]\nmac = \"52:54:00:00:00:51\"\nrecipe = \"ci-node\"\n\
             version = \"{}\"\ninstall = {{ disk = \"/dev/disk/by-id/virtio-bench0\" }}\n",
            m.version
        ),
    )?;
    let _server = Server::start(&lan, out, &inventory, dir)?;
    let disk = dir.join("bench0.disk");
    std::fs::File::create_new(&disk)?.set_len(image + (1 << 30))?;
    let cfg = VmConfig {
        name: "bench0".into(),
        boot: ovmf_retrying(),
        mem_mib: 1024,
        cpus: 2,
        nic: Some(Nic {
            mac: "52:54:00:00:00:51".into(),
            tap: lan.tap()?,
        }),
        disks: vec![disk.clone()],
        links: vec![],
    };
    let on = Instant::now();
    let mut vm = Vm::start(&lan.ns, &cfg, dir)?;
    let steps = follow(&mut vm, "bench0", m, on)?;
    drop(vm);
    let _ = std::fs::remove_file(&disk);
    Ok(steps)
}

fn report(version: &str, image: u64, runs: &[Vec<Step>]) -> Report {
    let med = |what: &str| median(&mut runs.iter().map(|s| at(s, what)).collect::<Vec<_>>());
    let script = med("the boot script (install mode)");
    let checked = med("the disk found and checked");
    let written = med("the image written");
    let read_back = med("the image read back");
    let restart = med("the restart");
    let ready = med("ready from the disk");
    let mib = image as f64 / f64::from(1u32 << 20);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### install, {} (`cargo xtask bench install`)\n",
        crate::report::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. `ci-node@{version}` with the disk-boot overlay and the `disk` output \
         ({mib:.0} MiB image). QEMU {} with TCG, q35, OVMF (retrying its boot order), 2 vCPUs, \
         1024 MiB, a blank sparse virtio disk 1 GiB larger than the image, the boot server \
         in-process on a LAN of namespaces; {RUNS} runs, medians, seconds from power-on. The \
         seed's way (Debian's installer, preseeded, over PXE) took 5 to 10 minutes a machine \
         on the homelab's hardware; ours runs emulated.\n",
        machine(),
        qemu_version()
    );
    let rows = vec![
        (
            "boot script fetched (firmware, iPXE)".to_string(),
            format!("{script:.1} s"),
        ),
        (
            "disk found and checked (kernel, first stage)".into(),
            format!("{checked:.1} s"),
        ),
        (
            "image written (fetched, checked per piece, written)".into(),
            format!(
                "{written:.1} s ({:.1} MiB/s)",
                mib / (written - checked).max(0.1)
            ),
        ),
        (
            "image read back and checked".into(),
            format!("{read_back:.1} s"),
        ),
        (
            "table moved, settings, boot entry, report; restart".into(),
            format!("{restart:.1} s"),
        ),
        (
            "**ready from the disk**".into(),
            format!("**{ready:.1} s**"),
        ),
        (
            "**seed's preseeded install (300-600 s) / ours**".into(),
            format!("**{:.1}-{:.1}x**", SEED_S.0 / ready, SEED_S.1 / ready),
        ),
    ];
    crate::report::figure_table(&mut md, &rows);
    let figures = vec![
        Figure::info(
            "power-on to ready from disk, installed over the network",
            format!("{ready:.1} s"),
        ),
        Figure::info(
            "seed's preseeded install / ours",
            format!("{:.1}-{:.1}x", SEED_S.0 / ready, SEED_S.1 / ready),
        ),
    ];
    Report::new("install", md, figures)
}
