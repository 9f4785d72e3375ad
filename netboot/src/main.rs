//! `netboot`: the boot server's command line. A shim over the `netboot` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use netboot::layout;

/// How log lines look.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// ironbake's boot server: serves the images `cargo xtask build` published.
#[derive(Debug, Parser)]
#[command(name = "netboot", version, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot nodes: proxyDHCP, TFTP for the bootloader, HTTP for the rest.
    Serve(Box<ServeArgs>),
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

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The published root, as `cargo xtask build` writes it.
    #[arg(long, value_name = "dir", default_value = "out")]
    root: PathBuf,
    /// The inventory: which MAC boots what, per-node variables.
    #[arg(long, value_name = "file", default_value = "inventory.toml")]
    inventory: PathBuf,
    /// Keep generated node identities (machine-id) here, so they survive reboots.
    #[arg(long, value_name = "dir")]
    state: Option<PathBuf>,
    /// Address the TFTP and HTTP servers listen on.
    #[arg(long, value_name = "ip", default_value = "0.0.0.0")]
    bind: std::net::Ipv4Addr,
    /// Address nodes reach this server at (default: --bind; needed when --bind is 0.0.0.0).
    #[arg(long, value_name = "ip")]
    advertise: Option<std::net::Ipv4Addr>,
    /// HTTP port.
    #[arg(long, value_name = "port", default_value_t = 80)]
    http_port: u16,
    /// TFTP port.
    #[arg(long, value_name = "port", default_value_t = 69)]
    tftp_port: u16,
    /// Do not run proxyDHCP (the router itself points PXE clients at this server).
    #[arg(long)]
    no_dhcp: bool,
    /// DHCP server port for proxyDHCP.
    #[arg(long, value_name = "port", default_value_t = 67)]
    dhcp_port: u16,
    /// PXE boot-server port.
    #[arg(long, value_name = "port", default_value_t = 4011)]
    pxe_port: u16,
    /// Answer DHCP only on this network interface.
    #[arg(long, value_name = "name")]
    interface: Option<String>,
    /// Largest TFTP window granted (RFC 7440).
    #[arg(long, value_name = "blocks", default_value_t = 16)]
    tftp_max_window: u16,
    /// Largest TFTP block size granted (RFC 2348).
    #[arg(long, value_name = "bytes", default_value_t = 1468)]
    tftp_max_blksize: u16,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn serve(a: ServeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETBOOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match a.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let cfg = netboot::serve::Config {
        root: a.root,
        inventory: a.inventory,
        state_dir: a.state,
        bind: a.bind,
        advertise: a.advertise,
        http_port: a.http_port,
        tftp_port: a.tftp_port,
        dhcp: !a.no_dhcp,
        dhcp_port: a.dhcp_port,
        pxe_port: a.pxe_port,
        interface: a.interface,
        tftp: netboot::tftp::Config {
            max_window: a.tftp_max_window,
            max_blksize: a.tftp_max_blksize,
            ..Default::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let hub = std::sync::Arc::new(netboot::hub::Hub::new());
    rt.block_on(netboot::serve::run(cfg, hub, |_| {}, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(ExitCode::SUCCESS)
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
        Command::Serve(a) => serve(*a),
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
