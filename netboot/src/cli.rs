//! The `netboot` command line: `serve` (whose flags `ironbake serve` shares), `list`,
//! `verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use clap::ValueEnum;

use crate::layout;

/// How log lines look.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// ironbake's boot server: serves the images `cargo xtask build` published.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The published root, as `cargo xtask build` writes it.
    #[arg(long, value_name = "dir", default_value = "out")]
    pub root: PathBuf,
    /// The inventory: which MAC boots what, per-node variables.
    #[arg(long, value_name = "file", default_value = "inventory.toml")]
    pub inventory: PathBuf,
    /// Keep generated node identities (machine-id) here, so they survive reboots.
    #[arg(long, value_name = "dir")]
    pub state: Option<PathBuf>,
    /// Address the TFTP and HTTP servers listen on.
    #[arg(long, value_name = "ip", default_value = "0.0.0.0")]
    pub bind: std::net::Ipv4Addr,
    /// Address nodes reach this server at (default: --bind, else the inventory's [server] address).
    #[arg(long, value_name = "ip")]
    pub advertise: Option<std::net::Ipv4Addr>,
    /// HTTP port.
    #[arg(long, value_name = "port", default_value_t = 80)]
    pub http_port: u16,
    /// TFTP port.
    #[arg(long, value_name = "port", default_value_t = 69)]
    pub tftp_port: u16,
    /// Do not run proxyDHCP (the router itself points PXE clients at this server).
    #[arg(long)]
    pub no_dhcp: bool,
    /// DHCP server port for proxyDHCP.
    #[arg(long, value_name = "port", default_value_t = 67)]
    pub dhcp_port: u16,
    /// PXE boot-server port.
    #[arg(long, value_name = "port", default_value_t = 4011)]
    pub pxe_port: u16,
    /// Answer DHCP only on this network interface.
    #[arg(long, value_name = "name")]
    pub interface: Option<String>,
    /// Largest TFTP window granted (RFC 7440).
    #[arg(long, value_name = "blocks", default_value_t = 16)]
    pub tftp_max_window: u16,
    /// Largest TFTP block size granted (RFC 2348).
    #[arg(long, value_name = "bytes", default_value_t = 1468)]
    pub tftp_max_blksize: u16,
    /// TFTP transfers at once, in all.
    #[arg(long, value_name = "n", default_value_t = 256)]
    pub tftp_max_transfers: usize,
    /// TFTP transfers at once to one source address.
    #[arg(long, value_name = "n", default_value_t = 16)]
    pub tftp_max_per_source: usize,
    /// Seconds a client has to send a request's headers (from connecting, or from the first
    /// byte of a later request).
    #[arg(long, value_name = "seconds", default_value_t = 10.0)]
    pub http_header_timeout: f64,
    /// Seconds with nothing read or written after which an HTTP connection is closed (a slow
    /// download that keeps moving is never cut).
    #[arg(long, value_name = "seconds", default_value_t = 30.0)]
    pub http_idle_timeout: f64,
    /// HTTP connections at once, in all (lowered to what the open-file limit allows).
    #[arg(long, value_name = "n", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// HTTP connections at once from one source address (at most three quarters of the
    /// total, so one source cannot take them all).
    #[arg(long, value_name = "n", default_value_t = 64)]
    pub http_max_per_source: usize,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Pull published versions from this registry repository (REGISTRY/REPO[:TAG]) at
    /// start and every --sync-every seconds; each recipe's `current` follows TAG (default
    /// latest).
    #[arg(long, value_name = "ref")]
    pub sync_from: Option<String>,
    /// Seconds between syncs.
    #[arg(
        long,
        value_name = "seconds",
        default_value_t = 60,
        requires = "sync_from"
    )]
    pub sync_every: u64,
    /// How to reach the registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Another boot server on this LAN (http://ADDRESS:PORT; repeatable): nodes fall back
    /// to it when a fetch fails and report to it too. Give the servers the same site key
    /// (state folder `site-key`) and the same published versions.
    #[arg(long, value_name = "url", value_parser = server_url)]
    pub peer: Vec<String>,
    /// Follow the boot server at this URL: mirror its desired versions and installs, refuse
    /// fleet changes (they go to it). Also a peer.
    #[arg(long, value_name = "url", value_parser = server_url, requires = "state")]
    pub follow: Option<String>,
    /// Nodes fetch a version's files (kernel, initramfs, layers) from this base URL: an
    /// HTTP cache in front of a server (versioned paths are immutable), or a mirror of
    /// `out/`. Scripts, settings and reports stay with this server.
    #[arg(long, value_name = "url", value_parser = server_url)]
    pub files_url: Option<String>,
}

/// A boot server's URL, `http://HOST:PORT`, with nothing after it.
fn server_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or("a boot server's URL is http://ADDRESS:PORT")?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err("a boot server's URL is http://ADDRESS:PORT, with no path".into());
    }
    Ok(format!("http://{rest}"))
}

/// How to reach a registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Registry credentials: a TOML file holding `token`, or `username` and `password`
    /// (mode 0600).
    #[arg(long, value_name = "file")]
    pub registry_auth: Option<PathBuf>,
    /// Speak plain HTTP to a registry that is not on this machine (HTTPS otherwise; a
    /// registry on loopback is always plain HTTP).
    #[arg(long)]
    pub registry_insecure: bool,
}

impl RegistryArgs {
    /// The source these flags and a reference describe.
    pub fn source(
        &self,
        reference: &str,
        every: std::time::Duration,
    ) -> Result<crate::oci::Source, crate::oci::OciError> {
        crate::oci::Source::new(
            reference,
            self.registry_auth.as_deref(),
            self.registry_insecure,
            every,
        )
    }
}

impl ServeArgs {
    /// The server settings these flags describe.
    pub fn config(&self) -> Result<crate::serve::Config, crate::oci::OciError> {
        Ok(crate::serve::Config {
            root: self.root.clone(),
            inventory: self.inventory.clone(),
            state_dir: self.state.clone(),
            bind: self.bind,
            advertise: self.advertise,
            http_port: self.http_port,
            tftp_port: self.tftp_port,
            dhcp: !self.no_dhcp,
            dhcp_port: self.dhcp_port,
            pxe_port: self.pxe_port,
            interface: self.interface.clone(),
            tftp: crate::tftp::Config {
                max_window: self.tftp_max_window,
                max_blksize: self.tftp_max_blksize,
                max_transfers: self.tftp_max_transfers,
                max_per_source: self.tftp_max_per_source,
                ..Default::default()
            },
            http: crate::http::Limits {
                header_timeout: std::time::Duration::from_secs_f64(self.http_header_timeout),
                idle_timeout: std::time::Duration::from_secs_f64(self.http_idle_timeout),
                max_connections: self.http_max_connections,
                max_per_source: self.http_max_per_source,
            },
            sync: self
                .sync_from
                .as_deref()
                .map(|r| {
                    self.registry
                        .source(r, std::time::Duration::from_secs(self.sync_every.max(1)))
                })
                .transpose()?,
            peers: self.peer.clone(),
            follow: self.follow.clone(),
            files_url: self.files_url.clone(),
        })
    }

    /// Sets up logging and serves until Ctrl-C.
    pub fn run(&self) -> Result<(), Box<dyn std::error::Error>> {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let hub = std::sync::Arc::new(crate::hub::Hub::new());
        let filter = tracing_subscriber::EnvFilter::try_from_env("NETBOOT_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let text = match self.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_target(false)
                // Colours only for a person at a terminal, never into a file or the journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        };
        // The nodes' pages keep what is logged about each node at info and above, whatever
        // NETBOOT_LOG shows. A caller that set up logging already keeps its own.
        let _ = tracing_subscriber::registry()
            .with(text.with_filter(filter))
            .with(
                hub.logs
                    .layer()
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .try_init();
        let cfg = self.config()?;
        // File reads run on tokio's blocking pool; a few threads keep up with the network, and
        // a hundred (tokio's default cap is 512) would each cost memory.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .max_blocking_threads(16)
            .enable_all()
            .build()?;
        rt.block_on(crate::serve::run(cfg, hub, |_| {}, async {
            // Ctrl-C, or systemd stopping the service.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }))?;
        Ok(())
    }
}

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
    /// Pull versions from a registry into the published root, each checked against its
    /// digests and published whole (a broken download never appears).
    Sync {
        /// The repository, REGISTRY/REPO[:TAG]; each recipe's `current` follows TAG
        /// (default latest).
        #[arg(long, value_name = "ref")]
        from: String,
        /// The published root.
        #[arg(long, value_name = "dir", default_value = "out")]
        root: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
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

/// The `netboot` command: parses its arguments, runs, says what went wrong. Both `netboot`
/// binaries (this crate's, and the one the VM harness builds to run as a separate, unprivileged
/// process) are this one function.
pub fn main() -> ExitCode {
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
        Command::Sync {
            from,
            root,
            registry,
        } => {
            let source = registry.source(&from, std::time::Duration::ZERO)?;
            let report = source.sync_once(&root, &mut |line| println!("{line}"))?;
            for v in &report.present {
                println!("{v}: already here");
            }
            for v in &report.pulled {
                println!("{v}: pulled and published");
            }
            match &report.current {
                Some(c) => println!("current: {c}"),
                None if report.followed_found => {
                    println!("`current` left as it was: the followed tag's artifact was refused")
                }
                None => println!(
                    "the repository has no tag {}: `current` left as it was",
                    source
                        .reference
                        .tag
                        .as_deref()
                        .unwrap_or(crate::oci::DEFAULT_TAG)
                ),
            }
            for (tags, why) in &report.refused {
                eprintln!("refused {tags}: {why}");
            }
            Ok(if report.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
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
