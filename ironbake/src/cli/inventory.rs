//! `inventory add`: a discovered machine becomes a node.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::Global;

/// The inventory of machines.
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Add a node to inventory.toml (comments and layout are kept; the result is checked
    /// before it is written, and written by rename).
    Add(Add),
}

impl InventoryCommand {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        match self {
            InventoryCommand::Add(c) => c.run(global),
        }
    }
}

/// `inventory add MAC NAME`.
#[derive(Debug, Args)]
pub struct Add {
    /// Its MAC address (as the boot server's /api/v1/discovered lists it).
    #[arg(value_name = "mac")]
    mac: String,
    /// Its name, which is also its hostname.
    #[arg(value_name = "name")]
    name: String,
    /// The recipe it boots (default: the inventory's [defaults] recipe).
    #[arg(long, value_name = "recipe")]
    recipe: Option<String>,
}

impl Add {
    fn run(self, global: &Global) -> Result<ExitCode> {
        let paths = global.paths()?;
        let path = paths.project.join("inventory.toml");
        let mac =
            netboot::inventory::add_node(&path, &self.mac, &self.name, self.recipe.as_deref())
                .map_err(anyhow::Error::msg)?;
        println!(
            "inventory.toml: {} is now node {} (a running boot server picks this up at the \
             machine's next request)",
            mac, self.name
        );
        Ok(ExitCode::SUCCESS)
    }
}
