//! `cargo xtask bench`: figures measured against the anchor tools in the same run, printed,
//! and recorded in BENCHMARKS.md (the table of current figures updated in place, the run's
//! record added to its benchmark's history). `build` is measured here; the others by the VM
//! harness (`qemu_tests::bench`), called directly.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use ironbake::host;
use ironbake::progress::Progress;

mod build;

/// What a benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Cold build vs mmdebstrap + mksquashfs by hand; rebuild after an overlay edit; sizes.
    Build,
    /// initrd.img size vs Debian's mkinitramfs; kernel start to ready under QEMU, by stage.
    Initramfs,
    /// The boot server: TFTP vs tftpd-hpa and dnsmasq, HTTP vs nginx, a 100-node boot storm.
    Serve,
    /// Power-on to ready for ci-node through the whole PXE chain under QEMU, by stage.
    Boot,
    /// A disk image: write time vs sgdisk + mkfs.fat + mtools + dd, sizes, and power-on to
    /// ready from disk vs PXE.
    Disk,
    /// An overlay edit -> build -> rollout -> ready, for one node and the three core nodes;
    /// power off and Wake-on-LAN power on of the three.
    Rollout,
    /// Power-on to ready from the disk for a blank-disk node installed over the network, by
    /// step, against the preseeded installer's 5 to 10 minutes.
    Install,
    /// The fleet page: the size it adds to netboot; the server's memory during the boot
    /// storm with the page open in 10 headless browsers.
    Page,
}

/// `bench WHAT`.
#[derive(Debug, Args)]
pub struct Bench {
    /// What to measure.
    #[arg(value_enum, value_name = "what")]
    what: What,
    /// Recipes to measure (build; default: ci-node and core-node).
    #[arg(long, value_name = "recipe")]
    recipe: Vec<String>,
    /// Leave an overlay out of the measured builds (as `build --without`).
    #[arg(long, value_name = "overlay")]
    without: Vec<String>,
    /// Print the figures only; do not record them in BENCHMARKS.md.
    #[arg(long)]
    no_record: bool,
}

impl Bench {
    /// Runs the benchmark in the repository at `root`.
    pub fn run(self, root: &Path) -> Result<ExitCode> {
        let progress = Progress::new(false);
        let report = match self.what {
            What::Build => {
                host::ensure(host::BUILD, &progress)?;
                ironbake::require_root()?;
                build::run(root, &self.recipe, &self.without, &progress)?
            }
            What::Serve => {
                host::ensure(
                    &[host::BUILD, host::TEST, host::BENCH_SERVE].concat(),
                    &progress,
                )?;
                // The server is measured as users run it: a release build.
                super::cargo()
                    .args(["build", "--release", "--quiet", "-p", "netboot"])
                    .current_dir(root)
                    .run_attached()?;
                qemu_tests::bench::serve::run(root)?
            }
            What::Disk => {
                host::ensure(
                    &[host::BUILD, host::TEST, host::BENCH_DISK].concat(),
                    &progress,
                )?;
                qemu_tests::bench::disk::run(root)?
            }
            What::Rollout => {
                host::ensure(&[host::BUILD, host::TEST].concat(), &progress)?;
                qemu_tests::bench::rollout::run(root)?
            }
            What::Page => {
                host::ensure(
                    &[host::BUILD, host::TEST, host::BENCH_SERVE].concat(),
                    &progress,
                )?;
                // Without the page first, kept aside; then the build users run.
                let release = root.join("target").join("release");
                let without = release.join("netboot-without-page");
                super::cargo()
                    .args(["build", "--release", "--quiet", "-p", "netboot"])
                    .arg("--no-default-features")
                    .current_dir(root)
                    .run_attached()?;
                std::fs::copy(release.join("netboot"), &without)?;
                super::cargo()
                    .args(["build", "--release", "--quiet", "-p", "netboot"])
                    .current_dir(root)
                    .run_attached()?;
                qemu_tests::bench::serve::page::run(root, &release.join("netboot"), &without)?
            }
            What::Install => {
                host::ensure(&[host::BUILD, host::TEST].concat(), &progress)?;
                qemu_tests::bench::install::run(root)?
            }
            What::Initramfs => qemu_tests::bench::initramfs::run(root)?,
            What::Boot => qemu_tests::bench::boot::run(root)?,
        };
        print!("\n{}", report.markdown);
        if !self.no_record {
            let path = root.join("BENCHMARKS.md");
            crate::record::write(&path, &report)?;
            println!("recorded in {}", path.display());
        }
        if let Some(why) = report.failed {
            bail!("{why}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
