//! `cargo xtask`: this repository's chores (test tiers, setup, benchmarks, VM boots,
//! formatting), and ironbake's own commands forwarded as they are, so `cargo xtask build
//! core-node` is `ironbake build core-node` run from the repository.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use ironbake::exec::Tool;
use ironbake::progress::Progress;
use ironbake::{cli, host, project};

mod bench;
mod record;
#[cfg(test)]
mod tidy;

/// ironbake's repository chores, and ironbake's commands.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    help_expected = true,
    disable_help_subcommand = true,
    term_width = 80
)]
struct Xtask {
    /// Where the project and its outputs are, and how much to say.
    #[command(flatten)]
    global: cli::Global,
    /// What to do.
    #[command(subcommand)]
    command: Chore,
}

/// A chore of this repository, or one of ironbake's commands.
#[derive(Debug, Subcommand)]
enum Chore {
    /// Run every test tier: unit (with the tidy checks), tool-backed builds, QEMU boots.
    Test(Test),
    /// Install the host tools the pipeline and its tests need.
    Setup(Setup),
    /// Measure against the anchors; print the figures and record them in BENCHMARKS.md.
    Bench(bench::Bench),
    /// Build a recipe if needed and PXE-boot its inventory nodes in QEMU VMs on a virtual
    /// LAN (a router with plain DHCP, the boot server, a bridge), streaming their consoles.
    Boot(Boot),
    /// Format the workspace's code (`cargo fmt`).
    Fmt(Fmt),
    #[command(flatten)]
    Product(cli::Command),
}

/// `test [ARGS...]`.
#[derive(Debug, Args)]
struct Test {
    /// Extra arguments for `cargo test` after `--` (e.g. a test name filter).
    #[arg(trailing_var_arg = true, value_name = "args")]
    args: Vec<String>,
}

/// `setup`.
#[derive(Debug, Args)]
struct Setup {}

/// `fmt`.
#[derive(Debug, Args)]
struct Fmt {}

/// `boot RECIPE`.
#[derive(Debug, Args)]
struct Boot {
    /// The recipe (its nodes in inventory.toml are booted).
    #[arg(value_name = "recipe")]
    recipe: String,
    /// How many of the recipe's inventory nodes to boot at once.
    #[arg(long, value_name = "n", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    nodes: u16,
    /// Exit 0 once every node is ready, non-zero with its last console lines on timeout.
    #[arg(long)]
    check: bool,
    /// With --check: how long to wait for every ready line.
    #[arg(long, value_name = "seconds", default_value_t = 600)]
    timeout: u64,
    /// Boot the recipe's disk image instead of PXE.
    #[arg(long)]
    disk: bool,
    /// Leave one of the recipe's overlays out of the build (as `build --without`).
    #[arg(long, value_name = "overlay")]
    without: Vec<String>,
}

/// The test tiers, in order: what each runs and needs.
const TIERS: [(&str, &[&str]); 3] = [
    (
        "tier a: unit tests and tidy checks (pure, no tools but shellcheck and rustfmt)",
        &["--workspace", "--lib", "--bins"],
    ),
    (
        "tier b: builds and tool checks (mmdebstrap, mksquashfs, unsquashfs, cpio; root)",
        &["-p", "ironbake", "-p", "netboot", "--test", "*"],
    ),
    (
        "tier c: QEMU boot tests (qemu-system-x86_64, network namespaces; root)",
        &["-p", "qemu-tests", "--test", "*"],
    ),
];

/// The repository: the project folder this command runs in.
fn repository(global: &cli::Global) -> Result<PathBuf> {
    project::discover_here(global.project.as_deref())
}

/// `cargo`, as cargo named itself when it ran this command.
fn cargo() -> Tool {
    Tool::new(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

impl Test {
    fn run(self, global: &cli::Global) -> Result<ExitCode> {
        let progress = Progress::new(false);
        host::ensure(&[host::BUILD, host::TEST].concat(), &progress)?;
        let root = repository(global)?;
        host::SUSHY_TOOLS.ensure(&root.join("target").join("tools"), &progress)?;
        for (name, args) in TIERS {
            progress.println(&format!("==> {name}"));
            cargo()
                .arg("test")
                .args(args)
                .args(["--", "--test-threads=2"])
                .args(&self.args)
                .current_dir(&root)
                .run_attached()
                .map_err(|e| anyhow::anyhow!("{name}: failed ({e:#})"))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Boot {
    fn run(self, global: &cli::Global) -> Result<ExitCode> {
        host::ensure(&[host::BUILD, host::TEST].concat(), &Progress::new(false))?;
        let opts = qemu_tests::boot::Options {
            recipe: self.recipe,
            nodes: usize::from(self.nodes),
            check: self.check,
            timeout: Duration::from_secs(self.timeout),
            without: self.without,
            disk: self.disk,
            echo: true,
            paths: None,
        };
        qemu_tests::boot::run(&repository(global)?, &opts)
    }
}

impl Chore {
    fn run(self, global: &cli::Global) -> Result<ExitCode> {
        match self {
            Chore::Test(t) => t.run(global),
            Chore::Setup(_) => {
                let progress = Progress::new(false);
                host::ensure(&[host::BUILD, host::TEST].concat(), &progress)?;
                let root = repository(global)?;
                host::SUSHY_TOOLS.ensure(&root.join("target").join("tools"), &progress)?;
                println!("host tools: all present");
                Ok(ExitCode::SUCCESS)
            }
            Chore::Bench(b) => b.run(&repository(global)?),
            Chore::Boot(b) => b.run(global),
            Chore::Fmt(_) => {
                cargo()
                    .args(["fmt", "--all"])
                    .current_dir(&repository(global)?)
                    .run_attached()?;
                Ok(ExitCode::SUCCESS)
            }
            Chore::Product(c) => c.run(global),
        }
    }
}

fn main() -> ExitCode {
    cli::quiet_on_closed_pipe();
    cli::set_invoked_as("cargo xtask");
    let x = Xtask::parse();
    let logs_itself = matches!(&x.command, Chore::Product(c) if c.logs_itself());
    if !logs_itself {
        cli::init_tracing(x.global.verbose);
    }
    match x.command.run(&x.global) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
