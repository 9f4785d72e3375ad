//! `netboot`: the boot server's command line. A shim over the `netboot` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netboot::layout;

#[derive(Debug, Parser)]
#[command(name = "netboot", version, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot nodes: proxyDHCP, TFTP for the bootloader, HTTP for the rest.
    Serve(Box<netboot::cli::ServeArgs>),
    /// List the published recipes and versions under a root.
    List {
        /// The published root, as `cargo xtask build` writes it.
        #[arg(long, value_name = "dir", default_value = "out")]
        root: PathBuf,
    },
    /// Re-hash a published version against its manifest.
    Verify {
        /// The published root.
        #[arg(long, value_name = "dir", default_value = "out")]
        root: PathBuf,
        /// RECIPE or RECIPE@VERSION (default: the version `current` points at).
        #[arg(value_name = "recipe[@version]")]
        target: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve(a) => {
            a.run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List { root } => {
            for r in layout::list_published(&root)? {
                for v in &r.versions {
                    let mark = if r.current.as_deref() == Some(v) {
                        "  (current)"
                    } else {
                        ""
                    };
                    println!("{}@{}{}", r.recipe, v, mark);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { root, target } => {
            let (recipe, version) = match target.split_once('@') {
                Some((r, v)) => (r.to_string(), v.to_string()),
                None => {
                    let dir = root.join(&target);
                    let v = layout::read_current(&dir)?
                        .ok_or_else(|| format!("{} has no current version", dir.display()))?;
                    (target.clone(), v)
                }
            };
            let (_, problems) = layout::verify(&root.join(&recipe).join(&version))?;
            if problems.is_empty() {
                println!("{recipe}@{version}: intact");
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &problems {
                    println!("{recipe}@{version}: {p}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
