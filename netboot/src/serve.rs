//! `netboot serve`: starts proxyDHCP, TFTP and HTTP on one address and runs them until
//! shutdown. Every socket is bound before anything is served, so a port in use or a missing
//! root is reported at start, with what to do about it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dhcp;
use crate::hub::Hub;
use crate::layout;
use crate::nodes::Inventories;
use crate::tftp;

/// The server's settings (the `netboot serve` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The published root (`out/`).
    pub root: PathBuf,
    /// The inventory file.
    pub inventory: PathBuf,
    /// Where generated node identities are kept; none: nodes make their own at each boot.
    pub state_dir: Option<PathBuf>,
    /// The address the TFTP and HTTP servers listen on.
    pub bind: Ipv4Addr,
    /// The address nodes are told to use; defaults to `bind`.
    pub advertise: Option<Ipv4Addr>,
    /// HTTP port.
    pub http_port: u16,
    /// TFTP port.
    pub tftp_port: u16,
    /// Run proxyDHCP (ports 67 and 4011)?
    pub dhcp: bool,
    /// The DHCP server port (67; a test may use another).
    pub dhcp_port: u16,
    /// The PXE boot-server port (4011).
    pub pxe_port: u16,
    /// Only answer DHCP on this interface (`SO_BINDTODEVICE`).
    pub interface: Option<String>,
    /// TFTP tuning and limits.
    pub tftp: tftp::Config,
    /// HTTP timeouts and connection caps (fitted to the open-file limit at start).
    pub http: crate::http::Limits,
    /// A registry repository to pull published versions from, now and then.
    pub sync: Option<crate::oci::Source>,
    /// The LAN's other boot servers (`http://ADDRESS:PORT`): nodes fall back to them when a
    /// fetch fails, and report to each.
    pub peers: Vec<String>,
    /// The server whose desired versions, installs and rollouts this one follows (it takes
    /// no fleet changes itself); it is a peer too.
    pub follow: Option<String>,
    /// Where nodes fetch a version's files (kernel, initramfs, layers), when not from this
    /// server: an HTTP cache in front of it, or a mirror holding the same published paths.
    pub files_url: Option<String>,
}

/// Raises this process's soft limit on open files to its hard limit (no privilege needed),
/// so the connection caps, not the default of 1024 descriptors, decide who is served;
/// returns the soft limit in force.
pub fn raise_open_files() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The kernel refuses more than fs.nr_open (1048576 by default), infinity included.
    const MOST: u64 = 1 << 20;
    let l = getrlimit(Resource::Nofile);
    let hard = l.maximum.unwrap_or(MOST).min(MOST);
    let soft = l.current.unwrap_or(MOST).min(MOST);
    if soft < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: l.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    soft
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The root is missing or not a folder.
    #[error(
        "the root {0} is not a folder: build an image first (`cargo xtask build ci-node`) or pass --root"
    )]
    NoRoot(String),
    /// The inventory is malformed.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::LoadError),
    /// No address to give nodes.
    #[error(
        "--bind is 0.0.0.0, so pass --advertise with the address nodes reach this server at (e.g. --advertise 192.168.1.10), or set address under [server] in the inventory"
    )]
    NoAdvertise,
    /// A socket could not be bound.
    #[error("cannot listen on {what} {addr}: {source}{hint}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// A server failed while running.
    #[error("{what} stopped: {source}")]
    Stopped {
        /// Which server.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn bind_hint(e: &std::io::Error, port: u16) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if port < 1024 => {
            " (ports under 1024 need root or CAP_NET_BIND_SERVICE; or use a high port flag)"
        }
        std::io::ErrorKind::AddrInUse => {
            " (another server uses this port; stop it or pick another port)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface has this address; check --bind)",
        _ => "",
    }
}

/// A running server's addresses, for tests and logs.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The HTTP listener.
    pub http: SocketAddr,
    /// The TFTP listener.
    pub tftp: SocketAddr,
    /// The base URL nodes are given.
    pub http_base: String,
}

/// Binds every socket, then serves until `shutdown` completes. `on_bound` is called once all
/// sockets are listening.
pub async fn run(
    cfg: Config,
    hub: Arc<Hub>,
    on_bound: impl FnOnce(&Bound),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if cfg.sync.is_some() && !cfg.root.exists() {
        // Filled by the first sync.
        std::fs::create_dir_all(&cfg.root).map_err(|source| ServeError::Stopped {
            what: "creating the published root",
            source,
        })?;
    }
    if !cfg.root.is_dir() {
        return Err(ServeError::NoRoot(cfg.root.display().to_string()));
    }
    let files =
        Arc::new(
            crate::fsroot::Root::new(&cfg.root).map_err(|source| ServeError::Stopped {
                what: "opening the root",
                source,
            })?,
        );
    let root = files.path().to_path_buf();
    let nodes = Arc::new(Inventories::load(&cfg.inventory, cfg.state_dir.clone())?);
    let listed = nodes.get().server.as_ref().and_then(|s| s.address);
    let advertise = match (cfg.advertise, cfg.bind.is_unspecified(), listed) {
        (Some(a), _, _) => a,
        (None, false, _) => cfg.bind,
        (None, true, Some(a)) => a,
        (None, true, None) => return Err(ServeError::NoAdvertise),
    };
    log_published(&root, &nodes);

    let http_addr = SocketAddr::V4(SocketAddrV4::new(cfg.bind, cfg.http_port));
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "HTTP",
            addr: http_addr.to_string(),
            hint: bind_hint(&source, cfg.http_port),
            source,
        })?;
    let http_local = listener.local_addr().expect("bound");
    let http_base = format!("http://{advertise}:{}", http_local.port());
    let mut peers = cfg.peers.clone();
    peers.extend(cfg.follow.clone());
    nodes.set_servers(&http_base, &peers);
    if let Some(f) = &cfg.files_url {
        nodes.set_files_url(f);
    }

    let tftp_addr = SocketAddr::V4(SocketAddrV4::new(cfg.bind, cfg.tftp_port));
    let tftp_sock = tokio::net::UdpSocket::bind(tftp_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "TFTP",
            addr: tftp_addr.to_string(),
            hint: bind_hint(&source, cfg.tftp_port),
            source,
        })?;
    let tftp_local = tftp_sock.local_addr().expect("bound");

    let dhcp_socks = if cfg.dhcp {
        let bind = |port: u16, what: &'static str| {
            let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            dhcp::bind_port(addr, cfg.interface.as_deref()).map_err(|source| ServeError::Bind {
                what,
                addr: addr.to_string(),
                hint: bind_hint(&source, port),
                source,
            })
        };
        Some((
            bind(cfg.dhcp_port, "proxyDHCP")?,
            bind(cfg.pxe_port, "PXE (4011)")?,
        ))
    } else {
        None
    };

    let nofile = raise_open_files();
    let limits = cfg.http.within(nofile);
    let bound = Bound {
        http: http_local,
        tftp: tftp_local,
        http_base: http_base.clone(),
    };
    tracing::info!(
        http = %http_local,
        tftp = %tftp_local,
        dhcp = cfg.dhcp,
        advertise = %advertise,
        root = %root.display(),
        inventory = %cfg.inventory.display(),
        open_files = nofile,
        http_max_connections = limits.max_connections,
        http_max_per_source = limits.max_per_source,
        http_header_timeout_s = limits.header_timeout.as_secs_f64(),
        http_idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        tftp_max_transfers = cfg.tftp.max_transfers,
        tftp_max_per_source = cfg.tftp.max_per_source,
        "netboot serving"
    );
    on_bound(&bound);

    let mut tasks = tokio::task::JoinSet::new();
    {
        let state = crate::http::AppState::new(
            Arc::clone(&files),
            http_base.clone(),
            Arc::clone(&nodes),
            Arc::clone(&hub),
        );
        let state = match nodes.state() {
            Some(st) => {
                let fleet = crate::fleet::Fleet::new(
                    Arc::clone(st),
                    Arc::clone(&nodes),
                    Arc::clone(&hub),
                    root.clone(),
                )
                .map_err(|source| ServeError::Stopped {
                    what: "loading the rollouts",
                    source,
                })?;
                tracing::info!(
                    token = %st.keys.token_file.display(),
                    "fleet API on: power and rollout requests need the admin token"
                );
                if let Some(leader) = &cfg.follow {
                    fleet.follow(leader);
                    tracing::info!(%leader, "following: fleet changes go to the leader, its desired versions and installs are mirrored here");
                    let (f, leader) = (Arc::clone(&fleet), leader.clone());
                    tasks.spawn(async move { ("following", mirror_loop(f, leader).await) });
                }
                state.with_fleet(fleet)
            }
            None => {
                tracing::warn!(
                    "no --state folder: no fleet API (power, rollouts), and node reports are not signed"
                );
                state
            }
        };
        let app = crate::http::router(state);
        let hub = Arc::clone(&hub);
        tasks.spawn(async move { ("HTTP", crate::http::serve(listener, app, limits, hub).await) });
    }
    {
        let (files, hub, tcfg) = (Arc::clone(&files), Arc::clone(&hub), cfg.tftp.clone());
        tasks.spawn(async move { ("TFTP", tftp::serve(tftp_sock, files, tcfg, hub).await) });
    }
    if let Some(source) = cfg.sync.clone() {
        let root = root.clone();
        tasks.spawn(async move { ("registry sync", sync_loop(source, root).await) });
    }
    if let Some((s67, s4011)) = dhcp_socks {
        let dcfg = dhcp::Config {
            server_ip: advertise,
            http_base: http_base.clone(),
            boot_files: dhcp::BootFiles {
                bios: "ipxe/current/undionly.kpxe".into(),
                efi_x64: "ipxe/current/snponly.efi".into(),
                efi_arm64: None,
            },
        };
        let (dir, hub) = (nodes.directory(), Arc::clone(&hub));
        tasks.spawn(async move {
            (
                "proxyDHCP",
                dhcp::serve(Some(s67), s4011, dcfg, dir, hub).await,
            )
        });
    }
    tokio::select! {
        () = shutdown => {
            tracing::info!("netboot stopping");
            tasks.abort_all();
            Ok(())
        }
        Some(done) = tasks.join_next() => match done {
            Ok((what, Err(source))) => Err(ServeError::Stopped { what, source }),
            Ok((what, Ok(()))) => Err(ServeError::Stopped {
                what,
                source: std::io::Error::other("ended unexpectedly"),
            }),
            Err(e) => Err(ServeError::Stopped {
                what: "a server task",
                source: std::io::Error::other(e.to_string()),
            }),
        },
    }
}

/// How often a following server reads its leader's state.
pub const MIRROR_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Mirrors the leader's desired versions and installs every [`MIRROR_EVERY`]; while the
/// leader cannot be reached the last mirrored state holds (nodes keep booting what they did).
async fn mirror_loop(fleet: Arc<crate::fleet::Fleet>, leader: String) -> std::io::Result<()> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut reachable = true;
    loop {
        let (a, f, url) = (
            agent.clone(),
            Arc::clone(&fleet),
            format!("{leader}/api/v1/state"),
        );
        let done = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let mut r = a
                .get(&url)
                .header("Authorization", format!("Bearer {}", f.state.keys.token))
                .call()
                .map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                200 => {}
                401 => {
                    return Err("the leader refused this server's admin token: copy the \
                                leader's admin-token (and site-key) into this state folder"
                        .into());
                }
                s => return Err(format!("the leader answered {s}")),
            }
            let shared: crate::fleet::Shared = serde_json::from_reader(r.body_mut().as_reader())
                .map_err(|e| format!("the leader's state: {e}"))?;
            f.mirror(&shared)
                .map_err(|e| format!("writing the mirrored state: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match done {
            Ok(changed) => {
                if !reachable {
                    tracing::info!(%leader, "the leader answers again");
                }
                reachable = true;
                if changed {
                    tracing::info!(%leader, "mirrored the leader's desired versions and installs");
                }
            }
            Err(e) if reachable => {
                reachable = false;
                tracing::warn!(%leader, "cannot mirror the leader ({e}); keeping the last state");
            }
            Err(_) => {}
        }
        tokio::time::sleep(MIRROR_EVERY).await;
    }
}

/// Pulls from the registry now and every `source.every`, logging what changed; a failed
/// sync is logged and tried again next time (what is published stays as it was).
async fn sync_loop(source: crate::oci::Source, root: PathBuf) -> std::io::Result<()> {
    loop {
        let (s, r) = (source.clone(), root.clone());
        let done = tokio::task::spawn_blocking(move || {
            s.sync_once(
                &r,
                &mut |line| tracing::info!(registry = %s.reference, "{}", line.trim()),
            )
        })
        .await;
        match done {
            Ok(Ok(report)) => {
                for v in &report.pulled {
                    tracing::info!(registry = %source.reference, version = %v, "pulled and published");
                }
                for (tags, why) in &report.refused {
                    tracing::warn!(registry = %source.reference, tags = %tags, "refused: {why}");
                }
                if let Some(c) = &report.current {
                    tracing::debug!(registry = %source.reference, current = %c, "synced");
                }
            }
            Ok(Err(e)) => tracing::warn!(registry = %source.reference, "sync failed: {e}"),
            Err(e) => tracing::warn!(registry = %source.reference, "sync failed: {e}"),
        }
        tokio::time::sleep(source.every).await;
    }
}

fn log_published(root: &Path, nodes: &Inventories) {
    match layout::list_published(root) {
        Ok(list) => {
            for r in list {
                tracing::info!(
                    recipe = %r.recipe,
                    versions = r.versions.len(),
                    current = r.current.as_deref().unwrap_or("-"),
                    "published"
                );
            }
        }
        Err(e) => tracing::warn!("reading the published root: {e}"),
    }
    if !root.join("ipxe").join("current").exists() {
        tracing::warn!(
            "no ipxe/current under {}: firmware PXE clients will get nothing over TFTP (a build publishes it)",
            root.display()
        );
    }
    let inv = nodes.get();
    tracing::info!(
        nodes = inv.nodes.len(),
        default = inv
            .defaults
            .recipe
            .as_deref()
            .unwrap_or("(none: unknown machines are not booted)"),
        "inventory"
    );
}
