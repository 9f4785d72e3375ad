//! ironbake's own boot server (`netboot serve`), run in-process on a thread that has joined a
//! LAN's namespace, with its log in a file of the test. Stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use netboot::hub::Hub;

use crate::lan::{Lan, SERVER_IP};
use crate::netns::Netns;

/// The HTTP port the server listens on in tests.
pub const HTTP_PORT: u16 = 8080;

/// A running boot server.
pub struct Server {
    /// Its shared state: boot progress, discovered machines, counters.
    pub hub: Arc<Hub>,
    /// Its log file.
    pub log: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    ns_file: PathBuf,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("log", &self.log).finish()
    }
}

impl Server {
    /// Starts `netboot serve` for `root` and `inventory` on the LAN's server address, with
    /// proxyDHCP on the bridge, TFTP on port 69 and HTTP on [`HTTP_PORT`]; returns once every
    /// socket is bound.
    pub fn start(lan: &Lan, root: &Path, inventory: &Path, dir: &Path) -> Result<Server> {
        let cfg = netboot::serve::Config {
            root: root.to_path_buf(),
            inventory: inventory.to_path_buf(),
            state_dir: Some(dir.join("netboot-state")),
            bind: SERVER_IP.parse().expect("valid"),
            advertise: None,
            http_port: HTTP_PORT,
            tftp_port: 69,
            dhcp: true,
            dhcp_port: 67,
            pxe_port: 4011,
            interface: Some("br0".into()),
            tftp: netboot::tftp::Config::default(),
            http: netboot::http::Limits::default(),
            sync: None,
            peers: Vec::new(),
            follow: None,
            files_url: None,
        };
        Self::start_with(&lan.ns, cfg, dir)
    }

    /// Starts the server with `cfg` inside `ns`.
    pub fn start_with(ns: &Netns, cfg: netboot::serve::Config, dir: &Path) -> Result<Server> {
        let log = dir.join("netboot.log");
        let file = std::fs::File::create(&log)?;
        let hub = Arc::new(Hub::new());
        let ns_file = PathBuf::from(format!("/run/netns/{}", ns.name()));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let hub2 = Arc::clone(&hub);
        let ns2 = ns_file.clone();
        let thread = std::thread::Builder::new()
            .name(crate::usage::SERVER_THREAD.into())
            .spawn(move || {
                use tracing_subscriber::layer::SubscriberExt as _;
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_target(false)
                    .with_max_level(tracing::Level::DEBUG)
                    .finish()
                    .with(hub2.logs.layer());
                let _guard = tracing::subscriber::set_default(subscriber);
                let joined = std::fs::File::open(&ns2)
                    .context("opening the LAN namespace")
                    .and_then(|f| {
                        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")
                    });
                if let Err(e) = joined {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .thread_name(crate::usage::SERVER_THREAD)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e.into()));
                        return;
                    }
                };
                let tx = bound_tx.clone();
                let r = rt.block_on(netboot::serve::run(
                    cfg,
                    hub2,
                    move |_| {
                        let _ = tx.send(Ok(()));
                    },
                    async move {
                        let _ = stop_rx.await;
                    },
                ));
                if let Err(e) = r {
                    tracing::error!("netboot stopped: {e}");
                    let _ = bound_tx.send(Err(anyhow::anyhow!("netboot serve: {e}")));
                }
            })
            .context("starting the server's thread")?;
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("the server thread ended before binding"),
        }
        Ok(Server {
            hub,
            log,
            stop: Some(stop_tx),
            thread: Some(thread),
            ns_file,
        })
    }

    /// `GET path` from the server's own HTTP port, from inside its namespace.
    pub fn get(&self, path: &str) -> Result<String> {
        get_in(&self.ns_file, path)
    }

    /// The first line a TCP service at `addr` sends (an SSH banner), read from inside the
    /// server's namespace.
    pub fn banner(&self, addr: std::net::SocketAddr) -> Result<String> {
        banner_in(&self.ns_file, addr)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `f` on a thread inside the server's namespace (a client of its API).
    pub fn in_lan<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let ns = self.ns_file.clone();
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&ns)?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
    }

    /// Waits (up to `deadline`) until the server hears every one of `nodes`' agents, ready
    /// on `version`.
    pub fn wait_agents(
        &self,
        nodes: &[&str],
        version: &str,
        deadline: std::time::Duration,
    ) -> Result<()> {
        let end = std::time::Instant::now() + deadline;
        loop {
            let f: serde_json::Value = serde_json::from_str(&self.get("/api/v1/fleet")?)?;
            let all = nodes.iter().all(|n| {
                f.as_array().into_iter().flatten().any(|e| {
                    e["name"] == *n
                        && e["alive"] == true
                        && e["live"]["ready"] == "yes"
                        && e["live"]["version"] == version
                })
            });
            if all {
                return Ok(());
            }
            if std::time::Instant::now() > end {
                bail!(
                    "the server does not hear every agent ready on {version}: {f:#}\n{}",
                    crate::console::last_lines(&self.log_text(), 30)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// A client of the server's fleet API with its admin token (use it from [`Self::in_lan`]).
    pub fn fleet_client(&self, dir: &Path) -> Result<ironbake::fleet::Client> {
        let token = ironbake::fleet::read_token(&dir.join("netboot-state").join("admin-token"))?;
        Ok(ironbake::fleet::Client::new(
            &format!("http://{SERVER_IP}:{HTTP_PORT}"),
            token,
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET path` from the boot server's HTTP port, from inside the namespace at `ns`.
fn get_in(ns: &Path, path: &str) -> Result<String> {
    let addr = std::net::SocketAddr::new(SERVER_IP.parse().expect("valid"), HTTP_PORT);
    http_get_in(ns, addr, path)
}

/// The body of `GET path` from `addr`, asked from inside the namespace at `ns`.
pub fn http_get_in(ns: &Path, addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let ns = ns.to_path_buf();
    let path = path.to_string();
    std::thread::spawn(move || -> Result<String> {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        write!(
            s,
            // HTTP/1.0: a whole body, never chunked.
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .context("no HTTP body")?;
        Ok(body)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the GET thread panicked"))?
}

/// The first line a TCP service at `addr` sends, read from inside the namespace at `ns`.
fn banner_in(ns: &Path, addr: std::net::SocketAddr) -> Result<String> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || -> Result<String> {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let s = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line)?;
        Ok(line.trim_end().to_string())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
}

/// The user and group the unprivileged server runs as: no account of this machine's (a
/// number only), as a system user of its own would be.
pub const UNPRIVILEGED: u32 = 64_321;

/// `netboot serve` as a process of its own inside the LAN, run the way `netboot.service`
/// runs it: as an unprivileged user ([`UNPRIVILEGED`]), with `CAP_NET_BIND_SERVICE` and no
/// other capability (ambient, permitted and bounding sets), no new privileges, the state
/// folder its only writable place (it owns it; `out/` and the inventory belong to root).
/// Killed on drop.
pub struct Process {
    child: std::process::Child,
    /// Its log (standard output and error).
    pub log: PathBuf,
    ns_file: PathBuf,
}

impl Process {
    /// Starts the `netboot` binary at `program` for `root` and `inventory` on the LAN's
    /// server address, as [`Server::start`] does in-process; returns once it says it serves.
    pub fn start_unprivileged(
        program: &Path,
        lan: &Lan,
        root: &Path,
        inventory: &Path,
        dir: &Path,
    ) -> Result<Process> {
        let state = dir.join("netboot-state");
        std::fs::create_dir_all(&state)?;
        std::os::unix::fs::chown(&state, Some(UNPRIVILEGED), Some(UNPRIVILEGED))
            .context("giving the state folder to the server's user")?;
        let log = dir.join("netboot.log");
        let out = std::fs::File::create(&log)?;
        let id = UNPRIVILEGED.to_string();
        let child = lan
            .ns
            .command("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
            .args([
                "--inh-caps=-all,+net_bind_service",
                "--ambient-caps=-all,+net_bind_service",
            ])
            .args([
                "--bounding-set=-all,+net_bind_service",
                "--no-new-privs",
                "--",
            ])
            .arg(program)
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--inventory")
            .arg(inventory)
            .arg("--state")
            .arg(&state)
            .args(["--bind", SERVER_IP, "--interface", "br0"])
            .args(["--http-port", &HTTP_PORT.to_string(), "--tftp-port", "69"])
            .env("NETBOOT_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting netboot under setpriv (util-linux)")?;
        let mut p = Process {
            child,
            log,
            ns_file: PathBuf::from(format!("/run/netns/{}", lan.ns.name())),
        };
        p.wait_serving()?;
        Ok(p)
    }

    /// Starts `program serve ARGS` as root inside `ns`, its output in `log`; returns once it
    /// says it serves (a test that needs a second server on the LAN, or to kill one).
    pub fn start_in(ns: &Netns, program: &Path, args: &[String], log: PathBuf) -> Result<Process> {
        let out = std::fs::File::create(&log)?;
        let child = ns
            .command(&program.display().to_string())
            .arg("serve")
            .args(args)
            .env("NETBOOT_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting netboot")?;
        let mut p = Process {
            child,
            log,
            ns_file: PathBuf::from(format!("/run/netns/{}", ns.name())),
        };
        p.wait_serving()?;
        Ok(p)
    }

    /// Returns once it logs that it serves; fails if it stops or takes over 30 s.
    fn wait_serving(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        while !self.log_text().contains("netboot serving") {
            if let Some(status) = self.child.try_wait()? {
                bail!("netboot stopped ({status}):\n{}", self.log_text());
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                bail!("netboot did not start in 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills it at once (SIGKILL: no goodbye to anyone, as a power cut would).
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// `GET path` from `addr`, from inside its namespace.
    pub fn get_from(&self, addr: std::net::SocketAddr, path: &str) -> Result<String> {
        http_get_in(&self.ns_file, addr, path)
    }

    /// Its process id (`ip netns exec` and `setpriv` both exec, so this is netboot's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` from its HTTP port, from inside its namespace.
    pub fn get(&self, path: &str) -> Result<String> {
        get_in(&self.ns_file, path)
    }

    /// The first line a TCP service at `addr` sends, read from inside the namespace.
    pub fn banner(&self, addr: std::net::SocketAddr) -> Result<String> {
        banner_in(&self.ns_file, addr)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
