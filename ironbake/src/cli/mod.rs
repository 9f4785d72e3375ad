//! The `ironbake` command line: argument types and dispatch only. Each command group has its
//! own file (`build.rs`: build, list, verify; `disk.rs`; `fleet.rs`: power, rollout;
//! `inventory.rs`; `registry.rs`: push; `serve.rs`), each
//! command a struct with `run`. `cargo xtask` forwards these same commands (its own chores
//! aside), so both spell them alike.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::project::{self, Paths};

mod build;
mod disk;
mod fleet;
mod inventory;
mod registry;
mod serve;

/// ironbake: golden images for immutable bare-metal nodes.
#[derive(Debug, Parser)]
#[command(
    name = "ironbake",
    version,
    help_expected = true,
    disable_help_subcommand = true,
    term_width = 80
)]
pub struct Cli {
    /// Where the project and its outputs are, and how much to say.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after its name.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The project folder (recipes/, overlays/, inventory.toml); by default the current
    /// folder or the nearest parent that holds them.
    #[arg(long, global = true, value_name = "dir", env = "IRONBAKE_PROJECT")]
    pub project: Option<PathBuf>,
    /// The published root (relative paths are inside the project).
    #[arg(long, global = true, value_name = "dir", env = "IRONBAKE_OUT")]
    pub out: Option<PathBuf>,
    /// The cache folder: package layers, artifacts (relative paths are inside the project).
    #[arg(long, global = true, value_name = "dir", env = "IRONBAKE_CACHE")]
    pub cache: Option<PathBuf>,
    /// Show debug logs (every command run, every tool line).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

impl Global {
    /// The project folder and the places in it, found from the current folder.
    pub fn paths(&self) -> Result<Paths> {
        let project = project::discover_here(self.project.as_deref())?;
        Ok(self.paths_in(&project))
    }

    /// The places for a known project folder.
    pub fn paths_in(&self, project: &Path) -> Paths {
        let mut paths = Paths::in_project(project);
        if let Some(out) = &self.out {
            paths.out = paths.in_project_dir(out);
        }
        if let Some(cache) = &self.cache {
            paths.cache = paths.in_project_dir(cache);
        }
        paths
    }
}

/// The user's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a recipe and publish it under out/RECIPE/VERSION.
    Build(build::Build),
    /// Show recipes and their published versions.
    List(build::List),
    /// Re-hash a published version and report what differs from its manifest.
    Verify(build::Verify),
    /// Run the boot server on what is published (the same as `netboot serve`; relative
    /// --root and --inventory are inside the project).
    Serve(Box<netboot::cli::ServeArgs>),
    /// The inventory of machines.
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),
    /// Disk images and disks (a recipe with the "disk" output).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Power nodes on (Wake-on-LAN or BMC), off or reboot them (their agent or BMC), or
    /// show their state, through the boot server.
    Power(fleet::Power),
    /// Roll a version out to a recipe's nodes: canaries first, then batches; a node that is
    /// not ready on it in time is put back and the rollout stops.
    Rollout(fleet::Rollout),
    /// Install a node's disk image afresh at its next network boot (a node whose inventory
    /// entry has an `install`; until then it boots from its disk).
    Install(fleet::Install),
    /// Push a published version to an OCI registry (one artifact: its files as layers,
    /// manifest.json as config), for boot servers to `netboot sync` from.
    Push(registry::Push),
}

impl Command {
    /// Does the command set up its own logging (the boot server's event log)?
    pub fn logs_itself(&self) -> bool {
        matches!(self, Command::Serve(_))
    }

    /// Runs the command.
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        match self {
            Command::Build(c) => c.run(global),
            Command::List(c) => c.run(global),
            Command::Verify(c) => c.run(global),
            Command::Serve(c) => serve::run(*c, global),
            Command::Inventory(c) => c.run(global),
            Command::Disk(c) => c.run(global),
            Command::Power(c) => c.run(global),
            Command::Rollout(c) => c.run(global),
            Command::Install(c) => c.run(global),
            Command::Push(c) => c.run(global),
        }
    }
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> Result<ExitCode> {
        self.command.run(&self.global)
    }
}

/// Sets up logging to stderr: warnings by default, debug with `--verbose`, RUST_LOG wins.
pub fn init_tracing(verbose: bool) {
    let default = if verbose { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

/// Lets a closed pipe end the process quietly, as it does a C tool (`ironbake list | head`):
/// Rust ignores SIGPIPE, so printing to a closed pipe would panic instead. Called by `main`
/// before anything else runs.
pub fn quiet_on_closed_pipe() {
    #[allow(unsafe_code)]
    // SAFETY: setting a signal's disposition to its default, before any other thread exists,
    // is async-signal-safe and touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

static INVOKED_AS: OnceLock<&'static str> = OnceLock::new();

/// Says how the user runs these commands (`ironbake`, or `cargo xtask` in the repository),
/// so that messages which suggest a command spell it the same way. Set once, by `main`.
pub fn set_invoked_as(name: &'static str) {
    let _ = INVOKED_AS.set(name);
}

/// How the user runs these commands: `ironbake` unless [`set_invoked_as`] said otherwise.
pub(crate) fn invoked_as() -> &'static str {
    INVOKED_AS.get().copied().unwrap_or("ironbake")
}

/// A size for people: megabytes with one decimal.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed_and_its_help_fits_80_columns() {
        Cli::command().debug_assert();
        let mut stack = vec![Cli::command()];
        while let Some(mut c) = stack.pop() {
            let help = c.render_long_help().to_string();
            for line in help.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "{}: help line over 80 columns: {line:?}",
                    c.get_name()
                );
            }
            stack.extend(c.get_subcommands().cloned());
        }
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let a = Cli::try_parse_from(["ironbake", "--project", "/p", "list"]).unwrap();
        let b = Cli::try_parse_from(["ironbake", "list", "--project", "/p", "--out", "o"]).unwrap();
        assert_eq!(a.global.project.as_deref(), Some(Path::new("/p")));
        let paths = b.global.paths_in(Path::new("/p"));
        assert_eq!(paths.out, Path::new("/p/o"));
        assert_eq!(paths.cache, Path::new("/p/.cache"));
    }
}
