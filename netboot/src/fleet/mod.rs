//! Running the fleet: each node's agent reports to the boot server and takes its commands
//! (reboot, power off) over a long poll, so nodes need no open port; the server powers
//! machines on by Wake-on-LAN or their BMC ([`power`]), keeps each node's desired version
//! ([`desired`]) and rolls versions out ([`rollout`]). Who may do what is in [`auth`].
//!
//! A node's agent sends `key=value` lines (see [`parse_message`]) to `POST /api/v1/agent`:
//!
//! ```text
//! node=machine0        kind=heartbeat|ready|ack|installed|refused   nonce=<from /api/v1/agent/nonce>
//! boot=<kernel boot_id>  recipe=ci-node  version=0.1.0-abcdef0123  uptime=12.3
//! state=<systemctl is-system-running>  ready=yes|no|failed  failed=<failed units>
//! log=<a line of a failed unit's journal>   (repeated, at most MAX_LOG)
//! id=<the command acknowledged>             (kind=ack)
//! disk=<the disk the image went onto>       (kind=installed, from the first stage)
//! why=<why the first stage stopped>         (kind=refused; written=yes when it had written)
//! not_persisted=<the persisted folders in RAM on this boot, for want of a data partition>
//! ```
//!
//! and gets back `nonce=...`, `command=none|reboot|poweroff` and `id=N`, signed. A heartbeat
//! is held up to [`HOLD`] until a command is queued for the node.

pub mod api;
pub mod auth;
pub mod desired;
pub mod installs;
pub mod power;
pub mod redfish;
pub mod rollout;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::hub::{Hub, Stage};
use crate::nodes::Inventories;

/// How long a heartbeat is held when no command is queued (under the HTTP idle timeout).
pub const HOLD: Duration = Duration::from_secs(20);
/// A node heard from within this long is "up" (its agent will get a command at once).
pub const ALIVE: Duration = Duration::from_secs(HOLD.as_secs() + 15);
/// The most log lines a report may carry (more are dropped), and their length.
pub const MAX_LOG: usize = 20;
const MAX_LOG_LINE: usize = 300;
/// The largest message body accepted.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The server's keys and desired versions, in its state folder.
#[derive(Debug)]
pub struct State {
    /// The folder.
    pub dir: PathBuf,
    /// Token and site key.
    pub keys: auth::Keys,
    /// Desired versions.
    pub desired: desired::Desired,
    /// Nodes installed on their own disk.
    pub installs: installs::Installs,
}

impl State {
    /// Loads (or makes) the state in `dir`.
    pub fn load(dir: &Path) -> std::io::Result<State> {
        std::fs::create_dir_all(dir)?;
        Ok(State {
            dir: dir.to_path_buf(),
            keys: auth::Keys::load(dir)?,
            desired: desired::Desired::load(dir)?,
            installs: installs::load(dir)?,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// "I am here; anything for me?" (held until a command or [`HOLD`]).
    Heartbeat,
    /// The node reached multi-user.
    Ready,
    /// The node took command `id` and is carrying it out.
    Ack,
    /// The node's first stage wrote its disk image onto `disk` and verified it.
    Installed,
    /// The node's first stage refused to install (`why`) and wrote nothing.
    Refused,
}

/// A node's message, parsed (not yet verified).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The node's name.
    pub node: String,
    /// The nonce it was given.
    pub nonce: String,
    /// What it is.
    pub kind: Kind,
    /// The kernel's boot id (new at every boot).
    pub boot: String,
    /// The recipe running.
    pub recipe: String,
    /// The version running.
    pub version: String,
    /// Seconds since the kernel started.
    pub uptime_s: f64,
    /// systemd's state (`systemctl is-system-running`).
    pub state: String,
    /// Has multi-user been reached (`yes`), not yet (`no`), or will it never be in this boot
    /// (`failed`: the boot's jobs are done and multi-user is not active)?
    pub ready: String,
    /// Failed units.
    pub failed: Vec<String>,
    /// Log lines of failed units.
    pub log: Vec<String>,
    /// The command acknowledged.
    pub id: Option<u64>,
    /// The disk the image went onto (kind installed).
    pub disk: String,
    /// Why the install was refused (kind refused).
    pub why: String,
    /// Had the install written to the disk before it stopped (kind refused)?
    pub written: bool,
    /// The folders the image persists that are in RAM on this boot (no data partition).
    pub not_persisted: Vec<String>,
}

/// Parses a message body; the error says which line is wrong.
pub fn parse_message(body: &str) -> Result<Message, String> {
    let mut f: BTreeMap<&str, &str> = BTreeMap::new();
    let mut log = Vec::new();
    for line in body.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not key=value"))?;
        if k == "log" {
            if log.len() < MAX_LOG {
                log.push(v.chars().take(MAX_LOG_LINE).collect::<String>());
            }
        } else if f.insert(k, v).is_some() {
            return Err(format!("{k} is given twice"));
        }
    }
    let need = |k: &str| {
        f.get(k)
            .map(|v| v.to_string())
            .ok_or_else(|| format!("{k}= is missing"))
    };
    let kind = match need("kind")?.as_str() {
        "heartbeat" => Kind::Heartbeat,
        "ready" => Kind::Ready,
        "ack" => Kind::Ack,
        "installed" => Kind::Installed,
        "refused" => Kind::Refused,
        other => {
            return Err(format!(
                "kind={other} is not heartbeat, ready, ack, installed or refused"
            ));
        }
    };
    let at_most = |k: &str, max: usize| -> Result<String, String> {
        let v = f.get(k).copied().unwrap_or("");
        if v.len() > max || v.chars().any(|c| c.is_control()) {
            return Err(format!("{k}= is too long or holds control characters"));
        }
        Ok(v.to_string())
    };
    let short = |k: &str| at_most(k, 128);
    Ok(Message {
        node: need("node")?,
        nonce: need("nonce")?,
        kind,
        boot: short("boot")?,
        recipe: short("recipe")?,
        version: short("version")?,
        uptime_s: f.get("uptime").and_then(|u| u.parse().ok()).unwrap_or(0.0),
        state: short("state")?,
        ready: short("ready")?,
        failed: f
            .get("failed")
            .map(|s| {
                s.split_whitespace()
                    .take(32)
                    .map(|u| u.chars().take(128).collect())
                    .collect()
            })
            .unwrap_or_default(),
        log,
        id: match f.get("id") {
            Some(v) => Some(v.parse().map_err(|_| format!("id={v} is not a number"))?),
            None => None,
        },
        disk: short("disk")?,
        why: at_most("why", MAX_LOG_LINE)?,
        written: f.get("written") == Some(&"yes"),
        not_persisted: at_most("not_persisted", MAX_LOG_LINE)?
            .split_whitespace()
            .take(32)
            .map(str::to_string)
            .collect(),
    })
}

/// What the server asks a node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `systemctl reboot`.
    Reboot,
    /// `systemctl poweroff`.
    Poweroff,
}

impl Action {
    /// The word the agent reads.
    pub fn word(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::Poweroff => "poweroff",
        }
    }
}

/// A command given to a node's agent, and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    /// Its number.
    pub id: u64,
    /// What.
    pub action: Action,
    /// When it was queued.
    pub queued_unix: u64,
    /// When the agent was handed it.
    pub delivered_unix: Option<u64>,
    /// When the agent said it was carrying it out.
    pub acked_unix: Option<u64>,
}

/// A node's last verified ready (multi-user reached).
#[derive(Debug, Clone)]
pub struct ReadyMark {
    /// The boot it was in.
    pub boot: String,
    /// The version it ran.
    pub version: String,
    /// When it was reported.
    pub at: Instant,
}

/// What the server knows of a node from its agent (verified messages only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Live {
    /// The boot id of the last message.
    pub boot: Option<String>,
    /// The recipe running.
    pub recipe: Option<String>,
    /// The version running.
    pub version: Option<String>,
    /// systemd's state.
    pub state: Option<String>,
    /// `yes`, `no` or `failed` (see [`Message::ready`]).
    pub ready: Option<String>,
    /// Seconds since the kernel started, at the last message.
    pub uptime_s: Option<f64>,
    /// Failed units.
    pub failed: Vec<String>,
    /// The folders its image persists that are in RAM on this boot (no data partition).
    pub not_persisted: Vec<String>,
    /// Their last log lines.
    pub log: Vec<String>,
    /// When the last message came.
    pub last_seen_unix: Option<u64>,
    /// Is a heartbeat held open now (the agent gets a command at once)?
    pub waiting: bool,
    /// The last command.
    pub command: Option<CommandRecord>,
    #[serde(skip)]
    last_seen: Option<Instant>,
    #[serde(skip)]
    pending: Option<CommandRecord>,
    #[serde(skip)]
    ready_mark: Option<ReadyMark>,
    #[serde(skip)]
    waiters: u32,
}

impl Live {
    /// Heard from within [`ALIVE`]?
    pub fn alive(&self) -> bool {
        self.waiting || self.last_seen.is_some_and(|t| t.elapsed() < ALIVE)
    }

    /// The last ready.
    pub fn ready_mark(&self) -> Option<&ReadyMark> {
        self.ready_mark.as_ref()
    }

    /// When the last message came.
    pub fn last_seen(&self) -> Option<Instant> {
        self.last_seen
    }
}

/// Why a message was refused (the status and the words for the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 or 401.
    pub status: u16,
    /// Why.
    pub why: String,
}

fn refuse(status: u16, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

/// The fleet side of a boot server; see the module doc.
#[derive(Debug)]
pub struct Fleet {
    /// Keys and desired versions.
    pub state: Arc<State>,
    /// The inventory.
    pub nodes: Arc<Inventories>,
    /// Boot progress.
    pub hub: Arc<Hub>,
    /// The served root (published versions).
    pub root: PathBuf,
    /// Nonces handed out.
    pub nonces: auth::Nonces,
    live: Mutex<BTreeMap<String, Live>>,
    /// Each node's last power request and when it was made (for the page).
    powered: Mutex<BTreeMap<String, (PowerResult, u64)>>,
    tick: tokio::sync::watch::Sender<u64>,
    next_id: AtomicU64,
    /// The rollouts.
    pub rollouts: rollout::Store,
    /// How long heartbeats are held.
    pub hold: Duration,
    /// The server this one follows (see [`Fleet::follow`]).
    leader: std::sync::OnceLock<String>,
}

/// The fleet state one server leads and the others mirror.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shared {
    /// Each node's desired version.
    pub desired: BTreeMap<String, desired::Wanted>,
    /// The nodes installed on their disk.
    pub installs: BTreeMap<String, installs::Installed>,
}

impl Fleet {
    /// The fleet of a server with `state`.
    pub fn new(
        state: Arc<State>,
        nodes: Arc<Inventories>,
        hub: Arc<Hub>,
        root: PathBuf,
    ) -> std::io::Result<Arc<Fleet>> {
        let rollouts = rollout::Store::load(&state.dir)?;
        Ok(Arc::new(Fleet {
            state,
            nodes,
            hub,
            root,
            nonces: auth::Nonces::default(),
            live: Mutex::new(BTreeMap::new()),
            powered: Mutex::new(BTreeMap::new()),
            tick: tokio::sync::watch::channel(0).0,
            next_id: AtomicU64::new(unix_now() * 1000),
            rollouts,
            hold: HOLD,
            leader: std::sync::OnceLock::new(),
        }))
    }

    /// Makes this server follow the one at `leader`: it takes no fleet changes of its own
    /// and mirrors the leader's [`Shared`] state (see [`Fleet::mirror`]).
    pub fn follow(&self, leader: &str) {
        let _ = self.leader.set(leader.to_string());
    }

    /// The server this one follows, if any.
    pub fn follows(&self) -> Option<&str> {
        self.leader.get().map(String::as_str)
    }

    /// The state a follower mirrors.
    pub fn shared(&self) -> Shared {
        Shared {
            desired: self.state.desired.all(),
            installs: self.state.installs.all(),
        }
    }

    /// Takes the leader's state as this server's own (written to the state folder, so it
    /// holds while the leader is away); true if anything changed.
    pub fn mirror(&self, s: &Shared) -> std::io::Result<bool> {
        let a = self.state.desired.replace_all(&s.desired)?;
        let b = self.state.installs.replace_all(&s.installs)?;
        if a || b {
            self.bump();
        }
        Ok(a || b)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes everyone waiting for a change.
    pub fn bump(&self) {
        self.tick.send_modify(|t| *t += 1);
    }

    /// A receiver that sees a new value whenever something changes (a node's message, a
    /// command, a desired version).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// How many times something changed (what [`Fleet::subscribe`] receivers see).
    pub fn generation(&self) -> u64 {
        *self.tick.borrow()
    }

    /// Each node's last power request (not `status`) and when it was made.
    pub fn last_power(&self) -> BTreeMap<String, (PowerResult, u64)> {
        self.powered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until something changes, or `at_most`.
    pub async fn changed(&self, at_most: Duration) {
        let mut rx = self.tick.subscribe();
        let _ = tokio::time::timeout(at_most, rx.changed()).await;
    }

    /// What the server knows of `node`.
    pub fn live_of(&self, node: &str) -> Live {
        self.live().get(node).cloned().unwrap_or_default()
    }

    /// A nonce for `node` (any name: the nonce proves nothing until a signed message uses it).
    pub fn nonce(&self, node: &str) -> std::io::Result<String> {
        self.nonces.issue(node)
    }

    /// Verifies and records a node's message.
    pub fn receive(
        &self,
        peer: std::net::IpAddr,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<Message, Refusal> {
        if body.len() > MAX_MESSAGE {
            return Err(refuse(400, "message too long"));
        }
        let text = std::str::from_utf8(body).map_err(|_| refuse(400, "message is not UTF-8"))?;
        let m = parse_message(text).map_err(|e| refuse(400, e))?;
        let Some(mac) = self.nodes.mac_of(&m.node) else {
            return Err(refuse(401, format!("no node named {} here", m.node)));
        };
        let Some(sig) = signature else {
            return Err(refuse(
                401,
                "unsigned: sign the body with the node's key (X-Ironbake-Signature)",
            ));
        };
        let key = self.state.keys.node_key(&m.node);
        if !auth::verify(key.as_bytes(), body, sig) {
            return Err(refuse(401, "bad signature"));
        }
        if !self.nonces.take(&m.node, &m.nonce) {
            return Err(refuse(
                401,
                "unknown, used or expired nonce: get a fresh one from /api/v1/agent/nonce",
            ));
        }
        self.hub.learn_ip(peer, &mac);
        {
            let mut live = self.live();
            let l = live.entry(m.node.clone()).or_default();
            l.boot = Some(m.boot.clone());
            l.recipe = Some(m.recipe.clone());
            l.version = Some(m.version.clone());
            l.state = Some(m.state.clone());
            l.ready = Some(m.ready.clone());
            l.uptime_s = Some(m.uptime_s);
            l.failed = m.failed.clone();
            l.not_persisted = m.not_persisted.clone();
            l.log = m.log.clone();
            l.last_seen = Some(Instant::now());
            l.last_seen_unix = Some(unix_now());
            // Ready is what the node's systemd says (multi-user active), whatever the kind:
            // a report of kind ready from a boot whose multi-user failed is no ready.
            if m.ready == "yes" {
                let same = l
                    .ready_mark
                    .as_ref()
                    .is_some_and(|r| r.boot == m.boot && r.version == m.version);
                if !same {
                    l.ready_mark = Some(ReadyMark {
                        boot: m.boot.clone(),
                        version: m.version.clone(),
                        at: Instant::now(),
                    });
                }
            }
            if m.kind == Kind::Ack
                && let Some(c) = l.command.as_mut()
                && Some(c.id) == m.id
            {
                c.acked_unix = Some(unix_now());
            }
        }
        if m.kind == Kind::Ready && m.ready != "yes" {
            tracing::warn!(%peer, node = %m.node, version = %m.version, ready = %m.ready, failed = ?m.failed, "node reports ready, but its multi-user is not active: not ready");
        } else if m.kind == Kind::Ready {
            self.hub.stage(
                &mac,
                Some(&m.node),
                Stage::Ready,
                &format!("{}@{} in {:.1} s", m.recipe, m.version, m.uptime_s),
            );
            tracing::info!(%peer, %mac, node = %m.node, recipe = %m.recipe, version = %m.version, uptime_s = m.uptime_s, "node ready");
        } else if m.kind == Kind::Ack {
            tracing::info!(%peer, node = %m.node, id = ?m.id, "node took its command");
        } else if m.kind == Kind::Installed {
            self.installed(peer, &mac, &m)?;
        } else if m.kind == Kind::Refused && m.written {
            self.hub.stage(&mac, Some(&m.node), Stage::Refused, &m.why);
            tracing::error!(%peer, node = %m.node, recipe = %m.recipe, version = %m.version, "install stopped after writing to the disk: {}", m.why);
        } else if m.kind == Kind::Refused {
            self.hub.stage(&mac, Some(&m.node), Stage::Refused, &m.why);
            tracing::error!(%peer, node = %m.node, recipe = %m.recipe, version = %m.version, "install refused, nothing written: {}", m.why);
        } else if m.ready == "failed" || !m.failed.is_empty() {
            tracing::warn!(%peer, node = %m.node, version = %m.version, state = %m.state, failed = ?m.failed, "node reports failed units");
        }
        self.bump();
        Ok(m)
    }

    /// Asks for a fresh install of `node` at its next network boot (its install record is
    /// cleared); the record it had, if any. Refused for a node the inventory does not install.
    pub fn reinstall(&self, node: &str) -> Result<Option<installs::Installed>, Refusal> {
        let inv = self.nodes.get();
        let Some(n) = inv.nodes.get(node) else {
            return Err(refuse(404, format!("no node named {node}")));
        };
        if n.install.is_none() {
            return Err(refuse(
                400,
                format!(
                    "node {node} has no install in {}: add install = {{ disk = \"/dev/disk/by-id/...\" }} to it first",
                    self.nodes.shown()
                ),
            ));
        }
        let was = self.state.installs.get(node);
        self.state
            .installs
            .set(node, None)
            .map_err(|e| refuse(500, format!("writing the install records: {e}")))?;
        tracing::info!(node, was = ?was.as_ref().map(|w| format!("{}@{}", w.recipe, w.version)), "install asked for: the next network boot installs afresh");
        self.bump();
        Ok(was)
    }

    /// Records that `m.node` installed `m.recipe`@`m.version` onto `m.disk`: from now on its
    /// network boots are sent to that disk.
    fn installed(&self, peer: std::net::IpAddr, mac: &str, m: &Message) -> Result<(), Refusal> {
        if self
            .nodes
            .get()
            .nodes
            .get(&m.node)
            .is_none_or(|n| n.install.is_none())
        {
            return Err(refuse(
                400,
                format!(
                    "node {} has no install in {}: not recorded",
                    m.node,
                    self.nodes.shown()
                ),
            ));
        }
        let record = installs::Installed {
            recipe: m.recipe.clone(),
            version: m.version.clone(),
            disk: m.disk.clone(),
            at_unix: unix_now(),
        };
        self.state
            .installs
            .set(&m.node, Some(record))
            .map_err(|e| {
                tracing::error!(node = %m.node, "recording the install: {e}");
                refuse(500, format!("the server could not record the install: {e}"))
            })?;
        self.hub.stage(
            mac,
            Some(&m.node),
            Stage::Installed,
            &format!("{}@{} on {}", m.recipe, m.version, m.disk),
        );
        tracing::info!(%peer, %mac, node = %m.node, recipe = %m.recipe, version = %m.version, disk = %m.disk, "installed on its disk: its network boots now go to the disk");
        Ok(())
    }

    /// The signed answer to `m`: its command, if one is queued (a heartbeat waits up to
    /// [`Fleet::hold`] for one). `(body, signature)`.
    pub async fn answer(&self, m: &Message) -> (String, String) {
        let deadline = Instant::now() + self.hold;
        if m.kind == Kind::Heartbeat {
            self.set_waiting(&m.node, true);
        }
        let command = loop {
            if let Some(c) = self.take_pending(&m.node) {
                break Some(c);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if m.kind != Kind::Heartbeat || left.is_zero() {
                break None;
            }
            self.changed(left).await;
        };
        if m.kind == Kind::Heartbeat {
            self.set_waiting(&m.node, false);
        }
        let body = match &command {
            Some(c) => format!(
                "nonce={}\ncommand={}\nid={}\n",
                m.nonce,
                c.action.word(),
                c.id
            ),
            None => format!("nonce={}\ncommand=none\n", m.nonce),
        };
        let key = self.state.keys.node_key(&m.node);
        let sig = auth::sign(key.as_bytes(), body.as_bytes());
        (body, sig)
    }

    fn set_waiting(&self, node: &str, on: bool) {
        let mut live = self.live();
        let l = live.entry(node.to_string()).or_default();
        if on {
            l.waiters += 1;
        } else {
            l.waiters = l.waiters.saturating_sub(1);
            l.last_seen = Some(Instant::now());
        }
        l.waiting = l.waiters > 0;
    }

    fn take_pending(&self, node: &str) -> Option<CommandRecord> {
        let mut live = self.live();
        let l = live.get_mut(node)?;
        let mut c = l.pending.take()?;
        c.delivered_unix = Some(unix_now());
        l.command = Some(c.clone());
        Some(c)
    }

    /// Queues `action` for `node`'s agent (replacing one not yet delivered).
    pub fn queue(&self, node: &str, action: Action) -> CommandRecord {
        let c = CommandRecord {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            action,
            queued_unix: unix_now(),
            delivered_unix: None,
            acked_unix: None,
        };
        {
            let mut live = self.live();
            let l = live.entry(node.to_string()).or_default();
            l.pending = Some(c.clone());
            l.command = Some(c.clone());
        }
        tracing::info!(
            node,
            action = action.word(),
            id = c.id,
            "command queued for the agent"
        );
        self.bump();
        c
    }

    /// The Wake-on-LAN target of `node`.
    pub fn wol_target(&self, node: &str) -> Option<power::WolTarget> {
        let inv = self.nodes.get();
        let n = inv.nodes.get(node)?;
        let w = n
            .wol
            .clone()
            .or_else(|| inv.server.as_ref().and_then(|s| s.wol.clone()));
        Some(match w {
            Some(w) => power::WolTarget {
                address: w.broadcast,
                port: w.port,
                interface: w.interface,
            },
            None => power::WolTarget {
                address: std::net::Ipv4Addr::BROADCAST,
                port: power::WOL_PORT,
                interface: None,
            },
        })
    }

    /// `node`'s BMC and login, if the inventory names one. A BMC without a login in
    /// secrets.toml is an error naming the table to add.
    pub fn bmc_of(
        &self,
        node: &str,
    ) -> Result<Option<(crate::inventory::Bmc, crate::secrets::BmcLogin)>, String> {
        let inv = self.nodes.get();
        let Some(bmc) = inv.nodes.get(node).and_then(|n| n.bmc.clone()) else {
            return Ok(None);
        };
        match self.nodes.secrets().bmc.get(node) {
            Some(login) => Ok(Some((bmc, login.clone()))),
            None => Err(format!(
                "node {node} has a BMC but secrets.toml has no [bmc.{node}] with its username and password"
            )),
        }
    }

    /// Carries out `action` on `node`; the answer says what was done.
    pub async fn power(&self, node: &str, action: PowerAction) -> PowerResult {
        let mut r = PowerResult {
            node: node.to_string(),
            action,
            via: String::new(),
            done: String::new(),
            ok: false,
            power: None,
            alive: self.live_of(node).alive(),
        };
        let Some(mac) = self.nodes.mac_of(node) else {
            r.done = format!("no node named {node} in {}", self.nodes.shown());
            return r;
        };
        let bmc = match self.bmc_of(node) {
            Ok(b) => b,
            Err(e) => {
                r.done = e;
                return r;
            }
        };
        let use_bmc = |r: &mut PowerResult, a: power::BmcAction| {
            r.via = bmc
                .as_ref()
                .map(|(b, _)| b.kind.word())
                .unwrap_or("bmc")
                .into();
            a
        };
        let result: Result<String, String> = match action {
            PowerAction::Status => match &bmc {
                Some((b, login)) => {
                    let a = use_bmc(&mut r, power::BmcAction::Status);
                    match power::bmc(b, login, a).await {
                        Ok(said) => {
                            r.power = power::parse_status(b.kind, &said);
                            Ok(said)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => {
                    r.via = "agent".into();
                    Ok(if r.alive {
                        "its agent is connected".into()
                    } else {
                        "its agent is not connected (no BMC to ask)".into()
                    })
                }
            },
            PowerAction::On => match &bmc {
                Some((b, login)) => {
                    let a = use_bmc(&mut r, power::BmcAction::On);
                    power::bmc(b, login, a).await.map_err(|e| e.to_string())
                }
                None => {
                    r.via = "wol".into();
                    let to = self.wol_target(node).expect("node exists");
                    power::wake(&mac, &to).map_err(|e| e.to_string())
                }
            },
            PowerAction::Off | PowerAction::Reboot => {
                let agent_action = if action == PowerAction::Off {
                    Action::Poweroff
                } else {
                    Action::Reboot
                };
                if r.alive {
                    r.via = "agent".into();
                    let c = self.queue(node, agent_action);
                    Ok(format!(
                        "asked its agent to {} (command {})",
                        agent_action.word(),
                        c.id
                    ))
                } else if let Some((b, login)) = &bmc {
                    let a = use_bmc(
                        &mut r,
                        if action == PowerAction::Off {
                            power::BmcAction::Soft
                        } else {
                            power::BmcAction::Reset
                        },
                    );
                    power::bmc(b, login, a).await.map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "its agent has not been heard from for {} s and it has no BMC: \
                         nothing can reach it (is it already off?)",
                        ALIVE.as_secs()
                    ))
                }
            }
        };
        match result {
            Ok(done) => {
                r.ok = true;
                r.done = done;
            }
            Err(e) => r.done = e,
        }
        tracing::info!(node, action = ?action, via = %r.via, ok = r.ok, "power: {}", r.done);
        if action != PowerAction::Status || r.power.is_some() {
            self.powered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.to_string(), (r.clone(), unix_now()));
            self.bump();
        }
        r
    }

    /// Every inventory node's status, by name.
    pub fn status(&self) -> Vec<NodeStatus> {
        let inv = self.nodes.get();
        let live = self.live().clone();
        inv.nodes
            .iter()
            .map(|(name, n)| {
                let boots = self
                    .nodes
                    .target(&self.root, &n.mac)
                    .ok()
                    .flatten()
                    .map(|t| t.manifest.version.clone());
                NodeStatus {
                    name: name.clone(),
                    mac: n.mac.clone(),
                    recipe: n.recipe.clone(),
                    boots,
                    desired: self.state.desired.get(name).map(|w| w.version),
                    pinned: n.version.clone(),
                    bmc: n.bmc.is_some(),
                    install: n.install.clone(),
                    installed: self.state.installs.get(name),
                    alive: live.get(name).is_some_and(Live::alive),
                    live: live.get(name).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// A power request's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    /// Wake-on-LAN or BMC power on.
    On,
    /// The agent's `systemctl poweroff`, else the BMC's soft off.
    Off,
    /// The agent's `systemctl reboot`, else the BMC's reset.
    Reboot,
    /// What is known.
    Status,
}

/// What a power request did to one node.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PowerResult {
    /// The node.
    pub node: String,
    /// What was asked.
    pub action: PowerAction,
    /// How: `wol`, `ipmi` or `agent`.
    pub via: String,
    /// What was done, or why nothing was.
    pub done: String,
    /// Was it done?
    pub ok: bool,
    /// The power state the BMC reports (none without a BMC).
    pub power: Option<bool>,
    /// Was its agent connected when asked?
    pub alive: bool,
}

/// One node as `GET /api/v1/fleet` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Its MAC.
    pub mac: String,
    /// Its recipe.
    pub recipe: String,
    /// The version it gets when it boots now.
    pub boots: Option<String>,
    /// Its desired version on this server, if one is set.
    pub desired: Option<String>,
    /// The version the inventory pins, if it does.
    pub pinned: Option<String>,
    /// Does it have a BMC?
    pub bmc: bool,
    /// Where the inventory says its disk image goes, if it installs onto a disk.
    pub install: Option<crate::inventory::Install>,
    /// Its install, once its first stage said it is done: its network boots go to its disk.
    pub installed: Option<installs::Installed>,
    /// Is its agent connected (heard from within a heartbeat)?
    pub alive: bool,
    /// What its agent last said.
    pub live: Live,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_bad_ones_are_refused() {
        let m = parse_message(
            "node=a\nnonce=n1\nkind=heartbeat\nboot=b1\nrecipe=r\nversion=1\nuptime=3.5\nstate=degraded\nready=failed\nfailed=x.service y.service\nlog=one\nlog=two\n",
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Heartbeat);
        assert_eq!(m.failed, ["x.service", "y.service"]);
        assert_eq!(m.log, ["one", "two"]);
        assert_eq!(m.uptime_s, 3.5);
        assert!(
            parse_message("node=a\nkind=ready\n")
                .unwrap_err()
                .contains("nonce")
        );
        let r =
            parse_message("node=a\nnonce=1\nkind=refused\nwhy=a ext4 disk\nwritten=yes\n").unwrap();
        assert_eq!(
            (r.kind, r.why.as_str(), r.written),
            (Kind::Refused, "a ext4 disk", true)
        );
        let i = parse_message(
            "node=a\nnonce=1\nkind=installed\ndisk=/dev/vda (8 GiB)\nnot_persisted=/a /b\n",
        )
        .unwrap();
        assert_eq!(
            (i.kind, i.disk.as_str(), i.written),
            (Kind::Installed, "/dev/vda (8 GiB)", false)
        );
        assert_eq!(i.not_persisted, ["/a", "/b"]);
        assert!(
            parse_message("node=a\nnonce=1\nkind=x\n")
                .unwrap_err()
                .contains("kind=x")
        );
        assert!(
            parse_message("node=a\nnode=b\n")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_message("garbage").unwrap_err().contains("key=value"));
        let many: String = (0..100).map(|i| format!("log={i}\n")).collect();
        let m = parse_message(&format!("node=a\nnonce=1\nkind=ready\n{many}")).unwrap();
        assert_eq!(m.log.len(), MAX_LOG);
    }
}
