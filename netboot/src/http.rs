//! The HTTP server: everything after the bootloader. On axum/hyper (no hand-rolled parser).
//!
//! | path | what |
//! | --- | --- |
//! | `GET /boot.ipxe?mac=M`, `GET /boot/M.ipxe` | the node's iPXE script, from the inventory |
//! | `GET /nodes/M/settings.img` | the node's settings archive (rendered node templates) |
//! | `POST /api/v1/ready` | a node reports it reached multi-user |
//! | `GET /api/v1/nodes` | each node's latest boot, stage by stage |
//! | `GET /api/v1/discovered` | machines seen that the inventory does not list |
//! | `GET /metrics` | Prometheus counters and stage times |
//! | `GET /api/v1/prometheus/targets` | the nodes' exporters, for Prometheus' `http_sd_configs` ([`crate::telemetry`]) |
//! | `GET /`, `GET /node/NAME`, `/-/...` | the fleet page ([`crate::page`], the `page` feature) |
//! | `GET`/`HEAD` anything else | a file under the root ([`crate::fsroot`] rules) |
//!
//! Files are served with `Content-Length` always, single and multiple byte ranges (206,
//! `multipart/byteranges`, 416), strong ETags from the published digests (`SHA256SUMS` of the
//! version folder) with `If-None-Match` and `If-Range`, and `Cache-Control: immutable` for
//! versioned paths (`no-cache` under `current`, which moves).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;

use crate::boot;
use crate::fsroot::{self, PathError};
use crate::hub::{Hub, Metrics, Stage, normalize_mac};
use crate::layout;
use crate::nodes::Inventories;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The served root's path (published versions are looked up there).
    root: PathBuf,
    /// The served root, under which every file is opened.
    files: Arc<fsroot::Root>,
    http_base: String,
    nodes: Arc<Inventories>,
    hub: Arc<Hub>,
    /// The fleet API, when the server has a state folder.
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Parsed `SHA256SUMS` by folder (published folders never change).
    sums: Mutex<HashMap<PathBuf, Arc<BTreeMap<String, String>>>>,
    /// Digests computed for files no `SHA256SUMS` lists, by (path, size, mtime).
    computed: Mutex<HashMap<(PathBuf, u64, i64), String>>,
}

impl AppState {
    /// State for a server of `files`, reachable by nodes at `http_base`.
    pub fn new(
        files: Arc<fsroot::Root>,
        http_base: String,
        nodes: Arc<Inventories>,
        hub: Arc<Hub>,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                root: files.path().to_path_buf(),
                files,
                http_base: http_base.trim_end_matches('/').to_string(),
                nodes,
                hub,
                fleet: None,
                sums: Mutex::new(HashMap::new()),
                computed: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl AppState {
    /// The same state with the fleet API ([`crate::fleet::api`]) mounted.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Fleet>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_fleet before the state is shared")
            .fleet = Some(fleet);
        self
    }
}

/// The router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`. With a
/// fleet, `POST /api/v1/ready` takes only signed reports (see [`crate::fleet::auth`]);
/// without one (no state folder), the image's plain report is recorded as it comes.
pub fn router(state: AppState) -> Router {
    let fleet = state.inner.fleet.clone();
    let mut r = Router::new()
        .route("/boot.ipxe", get(script_by_query))
        .route("/boot/{file}", get(script_by_path))
        .route("/nodes/{mac}/settings.img", get(settings))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/discovered", get(discovered))
        .route("/metrics", get(metrics))
        .route("/api/v1/prometheus/targets", get(targets));
    if fleet.is_none() {
        r = r.route("/api/v1/ready", post(ready));
    }
    #[cfg(feature = "page")]
    let page = crate::page::Page::new(
        state.inner.root.clone(),
        Arc::clone(&state.inner.nodes),
        Arc::clone(&state.inner.hub),
        fleet.clone(),
    );
    let r = r.fallback(file).with_state(state);
    #[cfg(feature = "page")]
    let r = r.merge(crate::page::router(page));
    match fleet {
        Some(f) => r.merge(crate::fleet::api::router(f)),
        None => r,
    }
}

/// How much response data hyper buffers per connection before it stops pulling the body: with
/// hyper's default (about 400 KiB), a hundred nodes fetching at once would hold 40 MB here.
/// A body chunk ([`CHUNK`]) is still written whole.
const MAX_BUF: usize = 8 * 1024;

/// How long clients may take and how many connections they may hold. Defaults suit a LAN
/// whose clients are iPXE and the first stage (they send a request at once and fetch files
/// one after the other), and a misbehaving device rather than an attacker.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From a connection's start (or the first byte of a later request) to the end of the
    /// request's headers.
    pub header_timeout: Duration,
    /// Nothing read or written on a connection for this long closes it (a keep-alive client
    /// that went quiet, a client that stopped reading a download). A slow client that keeps
    /// reading is never cut.
    pub idle_timeout: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_per_source: 64,
        }
    }
}

/// File descriptors each connection may hold: its socket and the file it is sending.
const FDS_PER_CONNECTION: u64 = 2;
/// File descriptors kept for everything else (TFTP transfers, logs, the inventory).
const FDS_KEPT: u64 = 64;

impl Limits {
    /// These limits within what `nofile` file descriptors allow, each source kept to three
    /// quarters of the total at most, so one source can never take every connection.
    pub fn within(&self, nofile: u64) -> Limits {
        let fit = (nofile.saturating_sub(FDS_KEPT) / FDS_PER_CONNECTION).max(4) as usize;
        let total = self.max_connections.min(fit).max(1);
        let per_source = self.max_per_source.min(total - total / 4).max(1);
        Limits {
            max_connections: total,
            max_per_source: per_source,
            ..self.clone()
        }
    }
}

/// Open connections, in all and by source address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Open`], given back when it closes however it closes.
struct Admitted {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
    hub: Arc<Hub>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total -= 1;
        if let Some(n) = o.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.by_source.remove(&self.ip);
            }
        }
        self.hub
            .metrics
            .http_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admits a connection from `ip`, or says which cap it met.
fn admit(
    open: &Arc<Mutex<Open>>,
    ip: IpAddr,
    limits: &Limits,
    hub: &Arc<Hub>,
) -> Result<Admitted, &'static str> {
    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
    if o.total >= limits.max_connections {
        return Err("the server has as many connections as it takes");
    }
    let n = o.by_source.entry(ip).or_insert(0);
    if *n >= limits.max_per_source {
        return Err("this address has as many connections as one source may");
    }
    *n += 1;
    o.total += 1;
    hub.metrics.http_connections.fetch_add(1, Ordering::Relaxed);
    Ok(Admitted {
        open: Arc::clone(open),
        ip,
        hub: Arc::clone(hub),
    })
}

/// What a refused connection is told, without reading its request: HTTP/1.1 503 with
/// `Retry-After` (iPXE and wget retry), then the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 31\r\n\r\ntoo many connections; try again\n";

/// A connection's socket, noting the moment anything was last read or written.
struct Watched {
    stream: tokio::net::TcpStream,
    last: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
}

impl Watched {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener`: HTTP/1.1 with keep-alive (what iPXE and the first stage speak),
/// each connection's peer address given to the handlers as `ConnectInfo`, within `limits`
/// (which [`Limits::within`] has fitted to the file descriptors the process may open).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    hub: Arc<Hub>,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: wait a little, keep serving the others.
            Err(e) => {
                tracing::warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match admit(&open, peer.ip(), &limits, &hub) {
            Ok(a) => a,
            Err(why) => {
                Metrics::inc(&hub.metrics.http_refused);
                tracing::warn!(%peer, "HTTP connection refused: {why}");
                // The socket buffer of a new connection takes this whole; never wait on it.
                let _ = stream.try_write(BUSY);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            admitted,
        ));
    }
}

/// Serves one connection until it ends, its headers take too long, or it goes idle.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    admitted: Admitted,
) {
    use tower::ServiceExt as _;
    let epoch = tokio::time::Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Watched {
        stream,
        last: Arc::clone(&last),
        epoch,
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "HTTP connection: {e}");
                }
                return;
            }
            _ = tick.tick() => {
                let quiet = (epoch.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= idle_ms {
                    Metrics::inc(&admitted.hub.metrics.http_idle_closed);
                    tracing::debug!(%peer, quiet_ms = quiet, "HTTP connection closed: idle");
                    return;
                }
            }
        }
    }
}

pub(crate) fn count(hub: &Hub, status: StatusCode) {
    Metrics::inc(&hub.metrics.http_requests);
    if status.is_client_error() || status.is_server_error() {
        Metrics::inc(&hub.metrics.http_errors);
    }
}

fn text(hub: &Hub, status: StatusCode, body: String) -> Response {
    count(hub, status);
    Metrics::add(&hub.metrics.http_bytes, body.len() as u64);
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn json<T: serde::Serialize>(hub: &Hub, value: &T) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into()) + "\n";
    count(hub, StatusCode::OK);
    Metrics::add(&hub.metrics.http_bytes, body.len() as u64);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

async fn script_by_query(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
) -> Response {
    script(&st, peer, q.mac.as_deref().unwrap_or(""))
}

async fn script_by_path(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    script(&st, peer, file.strip_suffix(".ipxe").unwrap_or(""))
}

fn script(st: &AppState, peer: SocketAddr, mac: &str) -> Response {
    let s = &st.inner;
    let Some(mac) = normalize_mac(mac) else {
        tracing::warn!(%peer, mac, "boot script asked for without a valid MAC address");
        return text(
            &s.hub,
            StatusCode::BAD_REQUEST,
            "ironbake: ask for /boot.ipxe?mac=${mac} (a MAC address like 52:54:00:12:34:56)\n"
                .into(),
        );
    };
    s.hub.learn_ip(peer.ip(), &mac);
    if s.nodes.name_of(&mac).is_none() && s.hub.discovered(&mac, "", "", "") {
        tracing::info!(%peer, %mac, "unknown machine asked for a boot script");
    }
    match s.nodes.target(&s.root, &mac) {
        Ok(Some(t)) => {
            let settings_url = format!("{}/nodes/{mac}/settings.img", s.http_base);
            let inv = s.nodes.get();
            let node = inv.nodes.get(&t.name);
            let install = node.and_then(|n| n.install.clone());
            let args = node.and_then(|n| n.kernel_args.clone()).unwrap_or_default();
            let Some(install) = install else {
                let body = boot::ipxe_script(
                    &t.manifest,
                    &s.nodes.servers(&s.http_base),
                    &t.name,
                    &mac,
                    &settings_url,
                    &args,
                );
                s.hub.stage(
                    &mac,
                    Some(&t.name),
                    Stage::Script,
                    &format!("{}@{}", t.manifest.recipe, t.manifest.version),
                );
                tracing::info!(%peer, %mac, node = %t.name, recipe = %t.manifest.recipe, version = %t.manifest.version, "boot script");
                return text(&s.hub, StatusCode::OK, body);
            };
            install_script(s, peer, &mac, &t, &install, &settings_url, &args)
        }
        Ok(None) => {
            tracing::info!(%peer, %mac, "boot script refused: unknown machine and the inventory boots none");
            text(
                &s.hub,
                StatusCode::OK,
                boot::ipxe_refusal(
                    &mac,
                    "not in the inventory, and its [defaults] boot no recipe",
                ),
            )
        }
        Err(e) => {
            tracing::error!(%peer, %mac, "boot script: {e}");
            text(
                &s.hub,
                StatusCode::OK,
                boot::ipxe_refusal(&mac, &e.for_client()),
            )
        }
    }
}

/// What a node whose inventory entry has an `install` boots: its disk when its install is
/// recorded, else the first stage in install mode.
fn install_script(
    s: &Inner,
    peer: SocketAddr,
    mac: &str,
    t: &crate::nodes::Target,
    install: &crate::inventory::Install,
    settings_url: &str,
    kernel_args: &str,
) -> Response {
    let m = &t.manifest;
    let Some(state) = s.nodes.state() else {
        let why = "installing onto a disk needs the server's state folder (--state): the node \
                   proves it is done with its node key, kept there";
        tracing::error!(%peer, %mac, node = %t.name, "boot script: {why}");
        return text(&s.hub, StatusCode::OK, boot::ipxe_refusal(mac, why));
    };
    if let Some(done) = state.installs.get(&t.name) {
        let what = format!("{}@{} on {}", done.recipe, done.version, done.disk);
        s.hub.stage(
            mac,
            Some(&t.name),
            Stage::Script,
            &format!("boot from disk: {what}"),
        );
        tracing::info!(%peer, %mac, node = %t.name, installed = %what, "boot script: installed, boot from the disk");
        return text(
            &s.hub,
            StatusCode::OK,
            boot::ipxe_boot_disk(&t.name, mac, &what),
        );
    }
    match boot::ipxe_install_script(
        m,
        &s.nodes.servers(&s.http_base),
        &t.name,
        mac,
        settings_url,
        kernel_args,
        install,
    ) {
        Ok(body) => {
            s.hub.stage(
                mac,
                Some(&t.name),
                Stage::Script,
                &format!("install {}@{} onto {}", m.recipe, m.version, install.word()),
            );
            tracing::info!(%peer, %mac, node = %t.name, recipe = %m.recipe, version = %m.version, disk = %install.word(), "boot script: install onto the node's disk");
            text(&s.hub, StatusCode::OK, body)
        }
        Err(why) => {
            tracing::error!(%peer, %mac, node = %t.name, "boot script: {why}");
            text(&s.hub, StatusCode::OK, boot::ipxe_refusal(mac, &why))
        }
    }
}

#[derive(Debug, Deserialize)]
struct SettingsQuery {
    /// `1`: the archive alone, without the padding that puts it after the initramfs (what a
    /// disk's ESP carries).
    alone: Option<String>,
}

async fn settings(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(mac): axum::extract::Path<String>,
    Query(q): Query<SettingsQuery>,
) -> Response {
    let alone = q.alone.as_deref() == Some("1");
    let s = &st.inner;
    let Some(mac) = normalize_mac(&mac) else {
        return text(
            &s.hub,
            StatusCode::BAD_REQUEST,
            "not a MAC address\n".into(),
        );
    };
    let t = match s.nodes.target(&s.root, &mac) {
        Ok(Some(t)) => t,
        Ok(None) => return text(&s.hub, StatusCode::NOT_FOUND, "unknown machine\n".into()),
        Err(e) => {
            tracing::error!(%peer, %mac, "settings: {e}");
            let body = format!("{}\n", e.for_client());
            return text(&s.hub, StatusCode::INTERNAL_SERVER_ERROR, body);
        }
    };
    // The archive holds the node's identity (host key, node key, secrets): a peer on the LAN
    // whose own link-layer address is another machine's does not get it. (One that forges
    // its MAC does: see the README's security notes.)
    if let Some(seen) = Hub::neighbour_mac(peer.ip())
        && seen != mac
    {
        tracing::warn!(%peer, %mac, node = %t.name, peer_mac = %seen, "settings archive refused: asked for another machine's settings");
        return text(
            &s.hub,
            StatusCode::FORBIDDEN,
            "these settings belong to another machine\n".into(),
        );
    }
    let made = if alone {
        s.nodes.settings_alone(&t)
    } else {
        s.nodes.settings(&t)
    };
    match made {
        Ok(bytes) => {
            count(&s.hub, StatusCode::OK);
            Metrics::add(&s.hub.metrics.http_bytes, bytes.len() as u64);
            if !alone {
                s.hub
                    .stage(&mac, Some(&t.name), Stage::Initrd, "settings.img");
            }
            tracing::info!(%peer, %mac, node = %t.name, bytes = bytes.len(), "settings archive");
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(%peer, %mac, node = %t.name, "settings archive: {e}");
            let body = format!("{}\n", e.for_client());
            text(&s.hub, StatusCode::INTERNAL_SERVER_ERROR, body)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReadyReport {
    node: String,
    recipe: String,
    version: String,
    uptime_s: f64,
}

async fn ready(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let s = &st.inner;
    let Ok(r) = serde_json::from_slice::<ReadyReport>(&body) else {
        return text(
            &s.hub,
            StatusCode::BAD_REQUEST,
            "expected {\"node\", \"recipe\", \"version\", \"uptime_s\"}\n".into(),
        );
    };
    let mac = s
        .nodes
        .mac_of(&r.node)
        .or_else(|| s.hub.mac_for_ip(peer.ip()))
        .unwrap_or_else(|| format!("ip:{}", peer.ip()));
    s.hub.learn_ip(peer.ip(), &mac);
    s.hub.stage(
        &mac,
        Some(&r.node),
        Stage::Ready,
        &format!("{}@{} in {:.1} s", r.recipe, r.version, r.uptime_s),
    );
    tracing::info!(%peer, %mac, node = %r.node, recipe = %r.recipe, version = %r.version, uptime_s = r.uptime_s, "node ready");
    text(&s.hub, StatusCode::OK, "ok\n".into())
}

async fn nodes(State(st): State<AppState>) -> Response {
    json(&st.inner.hub, &st.inner.hub.boots())
}

async fn discovered(State(st): State<AppState>) -> Response {
    json(&st.inner.hub, &st.inner.hub.discovered_list())
}

async fn targets(State(st): State<AppState>) -> Response {
    let s = &st.inner;
    let inv = s.nodes.get();
    let boots: HashMap<String, crate::hub::BootRecord> = s
        .hub
        .boots()
        .into_iter()
        .map(|b| (b.mac.clone(), b))
        .collect();
    let seen: Vec<crate::telemetry::Seen> = inv
        .nodes
        .iter()
        .map(|(name, n)| {
            let boot = boots.get(&n.mac);
            // What it runs: its agent's word, else its last ready, else what it boots now.
            let version = s
                .fleet
                .as_ref()
                .and_then(|f| f.live_of(name).version)
                .or_else(|| boot.and_then(crate::hub::BootRecord::ready_version))
                .or_else(|| {
                    s.nodes
                        .target(&s.root, &n.mac)
                        .ok()
                        .flatten()
                        .map(|t| t.manifest.version.clone())
                });
            let exporter = version.as_deref().is_some_and(|v| {
                s.nodes
                    .published_manifest(&s.root, &n.recipe, v)
                    .is_some_and(|m| {
                        m.overlays
                            .iter()
                            .any(|o| o.name == crate::telemetry::OVERLAY)
                    })
            });
            crate::telemetry::Seen {
                name: name.clone(),
                recipe: n.recipe.clone(),
                version,
                ip: boot
                    .and_then(|b| b.ip.as_deref())
                    .and_then(|ip| ip.parse().ok()),
                exporter,
            }
        })
        .collect();
    json(&s.hub, &crate::telemetry::groups(&seen))
}

async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.inner.hub.render_metrics();
    count(&st.inner.hub, StatusCode::OK);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// `%XX` decoding of a request path; `None` for bad escapes or non-UTF-8 results.
pub fn percent_decode(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("ipxe") | Some("txt") | Some("j2") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ if path.file_name().is_some_and(|n| n == layout::SHA256SUMS) => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

impl Inner {
    /// The published digest of an opened file: from the nearest `SHA256SUMS` above where it
    /// really is that lists it (read beneath the root too), else computed from the open file
    /// once and remembered by (where, size, mtime).
    fn digest(&self, o: &fsroot::Opened) -> std::io::Result<String> {
        if let Some(real) = &o.real {
            let mut dir = real.parent();
            while let Some(d) = dir {
                if let Some(h) = self.sums_of(d).and_then(|sums| {
                    let rel = real.strip_prefix(d).expect("under d").to_string_lossy();
                    sums.get(rel.as_ref()).cloned()
                }) {
                    return Ok(h);
                }
                dir = d.parent();
            }
        }
        let key = (o.real.clone().unwrap_or_default(), o.size, o.mtime);
        if o.real.is_some()
            && let Some(h) = self
                .computed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
        {
            return Ok(h.clone());
        }
        let (h, _) = layout::sha256_reader(o.file.try_clone()?)?;
        if o.real.is_some() {
            self.computed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, h.clone());
        }
        Ok(h)
    }

    /// The parsed `SHA256SUMS` of folder `d` (relative to the root), if it has one; published
    /// folders never change, so each is read once.
    fn sums_of(&self, d: &Path) -> Option<Arc<BTreeMap<String, String>>> {
        let mut cache = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(d) {
            return Some(Arc::clone(s));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut self.files.open_own(&d.join(layout::SHA256SUMS))?,
            &mut text,
        )
        .ok()?;
        let map: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, p)| (p.to_string(), h.to_string()))
            .collect();
        let map = Arc::new(map);
        cache.insert(d.to_path_buf(), Arc::clone(&map));
        Some(map)
    }
}

/// One piece of a response body.
#[derive(Debug)]
enum Piece {
    Bytes(Bytes),
    File { start: u64, len: u64 },
}

/// A body that streams `pieces`, reading file ranges in [`CHUNK`]-byte chunks, counting bytes, and
/// calling `done` when the last byte has been handed to hyper.
fn stream_body(
    file: std::fs::File,
    pieces: VecDeque<Piece>,
    hub: Arc<Hub>,
    done: Option<Box<dyn FnOnce() + Send>>,
) -> Body {
    struct St {
        file: std::fs::File,
        pieces: VecDeque<Piece>,
        hub: Arc<Hub>,
        done: Option<Box<dyn FnOnce() + Send>>,
    }
    impl St {
        /// Calls `done` once the last byte is out: hyper stops polling a body whose
        /// Content-Length has been sent, so the end of the stream may never be seen.
        fn finish_if_done(&mut self) {
            let left = self.pieces.iter().any(|p| match p {
                Piece::Bytes(b) => !b.is_empty(),
                Piece::File { len, .. } => *len > 0,
            });
            if !left && let Some(done) = self.done.take() {
                done();
            }
        }
    }
    let st = St {
        file,
        pieces,
        hub,
        done,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            let Some(piece) = st.pieces.front_mut() else {
                if let Some(done) = st.done.take() {
                    done();
                }
                return None;
            };
            match piece {
                Piece::Bytes(b) => {
                    let b = std::mem::take(b);
                    st.pieces.pop_front();
                    Metrics::add(&st.hub.metrics.http_bytes, b.len() as u64);
                    st.finish_if_done();
                    return Some((Ok::<Bytes, std::io::Error>(b), st));
                }
                Piece::File { start, len } => {
                    if *len == 0 {
                        st.pieces.pop_front();
                        continue;
                    }
                    let want = (*len).min(CHUNK);
                    // A read on this task, as nginx does: boot artifacts are read again and
                    // again and sit in the page cache, where a read is a copy; a hop to a
                    // thread pool per chunk cost more than the copy (measured). The buffer is
                    // not zeroed first: the read fills it.
                    let mut buf = Vec::with_capacity(want as usize);
                    let read = std::io::Seek::seek(&mut st.file, std::io::SeekFrom::Start(*start))
                        .and_then(|_| {
                            std::io::Read::read_to_end(
                                &mut std::io::Read::take(&st.file, want),
                                &mut buf,
                            )
                        });
                    match read {
                        Ok(0) => {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "file shrank while being served",
                            );
                            return Some((Err(e), st));
                        }
                        Ok(n) => {
                            *start += n as u64;
                            *len -= n as u64;
                            Metrics::add(&st.hub.metrics.http_bytes, n as u64);
                            st.finish_if_done();
                            return Some((Ok(Bytes::from(buf)), st));
                        }
                        Err(e) => return Some((Err(e), st)),
                    }
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// How much of a file one read takes: large enough that the hop to tokio's blocking pool is
/// paid rarely, small enough that a hundred nodes fetching at once stay within a few MB.
const CHUNK: u64 = 128 * 1024;

/// How many ranges one request may ask for; more and the Range header is ignored (a full 200).
const MAX_RANGES: usize = 16;

async fn file(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let s = &st.inner;
    if method != Method::GET && method != Method::HEAD {
        count(&s.hub, StatusCode::METHOD_NOT_ALLOWED);
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let raw = uri.path();
    let Some(name) = percent_decode(raw) else {
        tracing::warn!(%peer, path = raw, "refused: bad percent-encoding");
        return text(
            &s.hub,
            StatusCode::BAD_REQUEST,
            "bad percent-encoding\n".into(),
        );
    };
    let opened = match s.files.open(&name) {
        Ok(o) => o,
        Err(e) => {
            let status = match e {
                PathError::NotFound | PathError::NotAFile => StatusCode::NOT_FOUND,
                PathError::Unreadable => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::FORBIDDEN,
            };
            if status == StatusCode::NOT_FOUND {
                tracing::debug!(%peer, path = %name, "not found");
            } else {
                tracing::warn!(%peer, path = %name, "refused: {e}");
            }
            return text(&s.hub, status, format!("{e}\n"));
        }
    };
    let size = opened.size;
    let digest = match s.digest(&opened) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(%peer, path = %name, "reading to hash: {e}");
            return text(
                &s.hub,
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the file\n".into(),
            );
        }
    };
    let etag = format!("\"{digest}\"");
    let moving = name.split('/').any(|c| c == "current");
    let cache = if moving {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    let mut base = HeaderMap::new();
    base.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    base.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let hit = inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag);
        if hit {
            count(&s.hub, StatusCode::NOT_MODIFIED);
            return (StatusCode::NOT_MODIFIED, base).into_response();
        }
    }

    // Range, unless If-Range names another version of the file.
    let range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let ranges = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_ok => match http_range_header::parse_range_header(r) {
            Ok(parsed) if parsed.ranges.len() > MAX_RANGES => None,
            Ok(parsed) => match parsed.validate(size) {
                Ok(v) if size > 0 => Some(v),
                Err(http_range_header::RangeUnsatisfiableError::FileSuffixOutOfBounds)
                    if size > 0 =>
                {
                    Some(vec![0..=size - 1])
                }
                _ => {
                    count(&s.hub, StatusCode::RANGE_NOT_SATISFIABLE);
                    let mut h = base;
                    h.insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                    );
                    return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
                }
            },
            // A malformed Range header is ignored (RFC 9110 14.2).
            Err(_) => None,
        },
        _ => None,
    };

    let ctype = content_type(Path::new(&name));
    let (status, pieces, len) = match &ranges {
        None => (
            StatusCode::OK,
            VecDeque::from([Piece::File {
                start: 0,
                len: size,
            }]),
            size,
        ),
        Some(v) if v.len() == 1 => {
            let r = &v[0];
            base.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start(), r.end()))
                    .expect("ascii"),
            );
            let len = r.end() - r.start() + 1;
            (
                StatusCode::PARTIAL_CONTENT,
                VecDeque::from([Piece::File {
                    start: *r.start(),
                    len,
                }]),
                len,
            )
        }
        Some(v) => {
            let boundary = format!("ironbake-{}", &digest[..16]);
            let mut pieces = VecDeque::new();
            let mut len = 0u64;
            for r in v {
                let head = format!(
                    "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                    r.start(),
                    r.end()
                );
                len += head.len() as u64 + (r.end() - r.start() + 1);
                pieces.push_back(Piece::Bytes(Bytes::from(head)));
                pieces.push_back(Piece::File {
                    start: *r.start(),
                    len: r.end() - r.start() + 1,
                });
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            len += tail.len() as u64;
            pieces.push_back(Piece::Bytes(Bytes::from(tail)));
            base.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
                    .expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, pieces, len)
        }
    };
    if !base.contains_key(header::CONTENT_TYPE) {
        base.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    }
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    count(&s.hub, status);
    if method == Method::HEAD {
        return (status, base, Body::empty()).into_response();
    }
    let f = opened.file;

    // Boot progress: the kernel and initramfs when their fetch starts, the image when a layer
    // has been sent in full (the first stage fetches layers whole, resuming with ranges).
    let file_name = name.rsplit('/').next().unwrap_or_default().to_string();
    let stage = match file_name.as_str() {
        boot::KERNEL => Some(Stage::Kernel),
        boot::INITRD => Some(Stage::Initrd),
        n if n.ends_with(".squashfs") => Some(Stage::Image),
        layout::DISK_IMAGE | layout::DISK_CHUNKS => Some(Stage::Installing),
        _ => None,
    };
    let mut done: Option<Box<dyn FnOnce() + Send>> = None;
    if let Some(stage) = stage
        && let Some(mac) = s.hub.mac_for_ip(peer.ip())
    {
        let name = s.nodes.name_of(&mac);
        if stage == Stage::Image {
            let hub = Arc::clone(&s.hub);
            let end_served = ranges
                .as_ref()
                .is_none_or(|v| v.last().is_some_and(|r| *r.end() + 1 == size));
            if end_served {
                done = Some(Box::new(move || {
                    hub.stage(&mac, name.as_deref(), Stage::Image, &file_name);
                }));
            }
        } else {
            s.hub.stage(&mac, name.as_deref(), stage, &file_name);
        }
    }
    tracing::debug!(%peer, path = %name, status = status.as_u16(), bytes = len, "file");
    (
        status,
        base,
        stream_body(f, pieces, Arc::clone(&s.hub), done),
    )
        .into_response()
}
