//! `power`, `rollout` and `install`: the fleet commands, asked of a running boot server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::Global;
use crate::fleet::{self, Client};

/// Which boot server, and its admin token.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The boot server's URL (default: http:// and the inventory's [server] address).
    #[arg(long, value_name = "url", env = "IRONBAKE_SERVER")]
    server: Option<String>,
    /// The file holding the server's admin token (made in its state folder).
    #[arg(
        long,
        value_name = "file",
        env = "IRONBAKE_TOKEN_FILE",
        default_value = fleet::DEFAULT_TOKEN_FILE
    )]
    token_file: PathBuf,
}

impl ServerArgs {
    fn client(&self, global: &Global) -> Result<Client> {
        let server = match &self.server {
            Some(s) => s.clone(),
            None => {
                let paths = global.paths().ok();
                paths
                    .and_then(|p| fleet::default_server(&p.project.join("inventory.toml")))
                    .context(
                        "which boot server? pass --server http://ADDRESS[:PORT] (or set \
                         address under [server] in inventory.toml)",
                    )?
            }
        };
        Ok(Client::new(&server, fleet::read_token(&self.token_file)?))
    }
}

/// What to do to the nodes' power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PowerAction {
    /// Wake-on-LAN, or the BMC's power on; then wait until each is ready.
    On,
    /// The agent's clean power-off (else the BMC's soft off); wait until each is off.
    Off,
    /// The agent's clean reboot (else the BMC's reset); wait until each is ready again.
    Reboot,
    /// Last heard from, version running, and the BMC's power state.
    Status,
}

/// `power on|off|reboot|status NODE...|--recipe R|--all`.
#[derive(Debug, Args)]
pub struct Power {
    /// What to do.
    #[arg(value_enum)]
    action: PowerAction,
    /// The nodes, by name.
    #[arg(value_name = "node")]
    nodes: Vec<String>,
    /// Every node of this recipe.
    #[arg(long, value_name = "recipe")]
    recipe: Option<String>,
    /// Every node of the inventory.
    #[arg(long)]
    all: bool,
    /// Seconds to wait for each node to be seen as asked (0: do not wait).
    #[arg(long, value_name = "seconds", default_value_t = 300)]
    wait: u64,
    #[command(flatten)]
    server: ServerArgs,
}

impl Power {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        if self.nodes.is_empty() && self.recipe.is_none() && !self.all {
            bail!("name the nodes, or pass --recipe NAME or --all");
        }
        let c = self.server.client(global)?;
        let action = match self.action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Reboot => "reboot",
            PowerAction::Status => "status",
        };
        let ok = fleet::power(
            &c,
            &fleet::PowerRequest {
                action: action.into(),
                nodes: self.nodes,
                recipe: self.recipe,
                all: self.all,
                wait: Duration::from_secs(self.wait),
            },
            &mut std::io::stdout(),
        )?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// `install NODE...`: a fresh install at each node's next network boot.
#[derive(Debug, Args)]
pub struct Install {
    /// The nodes, by name (each must have an `install` in the inventory).
    #[arg(value_name = "node", required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

impl Install {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        let c = self.server.client(global)?;
        fleet::install(&c, &self.nodes, &mut std::io::stdout())?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `rollout RECIPE[@VERSION]`, or `rollout --resume ID` / `--abort ID`.
#[derive(Debug, Args)]
pub struct Rollout {
    /// The recipe and version to roll out (the recipe's current when no @VERSION).
    #[arg(value_name = "recipe[@version]", required_unless_present_any = ["resume", "abort"])]
    target: Option<String>,
    /// The nodes, comma-separated (default: every node of the recipe).
    #[arg(long, value_name = "a,b", value_delimiter = ',')]
    nodes: Vec<String>,
    /// How many nodes go first, one batch on their own.
    #[arg(long, value_name = "n", default_value_t = 1)]
    canary: usize,
    /// How many nodes may be restarting at once after the canaries.
    #[arg(long, value_name = "k", default_value_t = 1)]
    max_unavailable: usize,
    /// Seconds from a node's restart to its ready report on the new version.
    #[arg(long, value_name = "seconds", default_value_t = 300)]
    timeout: u64,
    /// Resume a paused rollout (one the boot server was stopped during).
    #[arg(long, value_name = "id", conflicts_with_all = ["target", "abort"])]
    resume: Option<String>,
    /// Stop a rollout (a node being updated is put back first).
    #[arg(long, value_name = "id", conflicts_with = "target")]
    abort: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

impl Rollout {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        let c = self.server.client(global)?;
        let out = &mut std::io::stdout();
        let ok = if let Some(id) = &self.resume {
            fleet::resume(&c, id, out)?
        } else if let Some(id) = &self.abort {
            fleet::abort(&c, id, out)?
        } else {
            let target = self.target.as_deref().expect("clap requires it");
            let (recipe, version) = match target.split_once('@') {
                Some((r, v)) => (r.to_string(), Some(v.to_string())),
                None => (target.to_string(), None),
            };
            fleet::rollout(
                &c,
                &fleet::RolloutRequest {
                    recipe,
                    version,
                    nodes: self.nodes,
                    canary: self.canary,
                    max_unavailable: self.max_unavailable,
                    timeout_s: self.timeout,
                },
                out,
            )?
        };
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
