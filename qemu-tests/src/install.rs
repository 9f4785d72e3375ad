//! A node installed over the network, as the VM test and `cargo xtask bench install` watch
//! it: from power-on through the first stage's install mode to the ready line of its first
//! boot from the disk, each step's console line and when it came.

use std::time::{Duration, Instant};

use anyhow::Result;
use netboot::layout::Manifest;

use crate::qemu::Vm;

/// How long the install itself may take under TCG (the image is over 500 MiB, fetched,
/// checked piece by piece, written and read back).
pub const INSTALL: Duration = Duration::from_secs(900);

/// One step of an install, as the console showed it.
#[derive(Debug, Clone)]
pub struct Step {
    /// What it is.
    pub what: &'static str,
    /// Its console line.
    pub line: String,
    /// Seconds from power-on.
    pub at_s: f64,
}

/// The steps, in order: what to wait for, the text of its line, and how long it may take.
fn steps(node: &str, m: &Manifest) -> Vec<(&'static str, String, Duration)> {
    let v = format!("{}@{}", m.recipe, m.version);
    vec![
        (
            "the boot script (install mode)",
            format!("ironbake: {node} installs {v}"),
            crate::deadline::PXE_READY,
        ),
        (
            "the first stage",
            "first stage ".to_string(),
            crate::deadline::FIRST_STAGE,
        ),
        (
            "the disk found and checked",
            format!("install: {v} ("),
            crate::deadline::READY,
        ),
        (
            "the image written",
            "MiB, the partition table last".to_string(),
            INSTALL,
        ),
        (
            "the image read back",
            "install: read back from the disk: sha256 ".to_string(),
            INSTALL,
        ),
        (
            "the backup table moved",
            "install: backup partition table at the disk's end".to_string(),
            crate::deadline::REPORT,
        ),
        (
            "the settings on the ESP",
            "install: node settings on the ESP".to_string(),
            crate::deadline::READY,
        ),
        (
            "the boot entry",
            "install: next boot: the disk (Boot".to_string(),
            crate::deadline::REPORT,
        ),
        (
            "the server told",
            "install: the boot server has it".to_string(),
            crate::deadline::READY,
        ),
        (
            "the restart",
            "; restarting into the disk".to_string(),
            crate::deadline::REPORT,
        ),
        (
            "the first stage from the disk",
            format!("this disk is node {node}"),
            crate::deadline::READY,
        ),
        (
            "ready from the disk",
            format!("ironbake: {node} ready {v} in "),
            crate::deadline::PXE_READY,
        ),
    ]
}

/// Waits for each step of `node`'s install of `m` and its first boot from the disk, on `vm`
/// powered on at `on`.
pub fn follow(vm: &mut Vm, node: &str, m: &Manifest, on: Instant) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    let mut skip = 0;
    for (what, needle, deadline) in steps(node, m) {
        let (line, at) = vm.wait_line(what, &needle, deadline, skip)?;
        eprintln!(
            "[{node}] {:7.1} s  {what}: {line}",
            on.elapsed().as_secs_f64()
        );
        out.push(Step {
            what,
            line,
            at_s: on.elapsed().as_secs_f64(),
        });
        skip = at + 1;
    }
    Ok(out)
}

/// The seconds from power-on to the step `what`.
pub fn at(steps: &[Step], what: &str) -> f64 {
    steps
        .iter()
        .find(|s| s.what == what)
        .map_or(f64::NAN, |s| s.at_s)
}
