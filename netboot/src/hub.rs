//! What the protocol servers share: counters for `/metrics`, each node's boot progress (for
//! `GET /api/v1/nodes`), the machines seen that the inventory does not list (for
//! `GET /api/v1/discovered`), and what the server has learnt about which IP is which MAC.
//!
//! Every method takes `&self` and is cheap; the servers call them from any task. Every table
//! is bounded, because anyone on the LAN can invent MAC and IP addresses: at most
//! [`MAX_DISCOVERED`] discovered machines and [`MAX_TRACKED`] boots and IP addresses, the
//! ones seen longest ago forgotten first (and counted, in `/metrics`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::logs::NodeLogs;

/// The most machines `/api/v1/discovered` lists; beyond it the one seen longest ago goes.
pub const MAX_DISCOVERED: usize = 1024;
/// The most boots and IP-to-MAC entries kept; beyond it the one seen longest ago goes.
pub const MAX_TRACKED: usize = 4096;
/// How many earlier boots of each machine are kept beside its latest (for its page).
pub const MAX_HISTORY: usize = 4;

/// A step of a node's network boot, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The firmware (or iPXE) asked for boot information and got our proxyDHCP answer.
    Dhcp,
    /// The bootloader (iPXE) was sent over TFTP (or HTTP).
    Bootloader,
    /// iPXE fetched the node's boot script.
    Script,
    /// The kernel was fetched.
    Kernel,
    /// The initramfs (and the node's settings archive) was fetched.
    Initrd,
    /// The first stage fetched the root image's layers.
    Image,
    /// The first stage (install mode) is streaming the disk image onto the node's disk.
    Installing,
    /// The first stage wrote and verified the disk image, and said so (a signed message).
    Installed,
    /// The node reached multi-user and said so (POST /api/v1/ready).
    Ready,
    /// The first stage refused to install onto the disk it found (and wrote nothing), and
    /// said why.
    #[serde(rename = "install-refused")]
    Refused,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 10] = [
        Stage::Dhcp,
        Stage::Bootloader,
        Stage::Script,
        Stage::Kernel,
        Stage::Initrd,
        Stage::Image,
        Stage::Installing,
        Stage::Installed,
        Stage::Ready,
        Stage::Refused,
    ];

    /// The stage's name as logs, JSON and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp",
            Stage::Bootloader => "bootloader",
            Stage::Script => "script",
            Stage::Kernel => "kernel",
            Stage::Initrd => "initrd",
            Stage::Image => "image",
            Stage::Installing => "installing",
            Stage::Installed => "installed",
            Stage::Ready => "ready",
            Stage::Refused => "install-refused",
        }
    }
}

/// What the inventory says about a MAC address, as the servers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A node of the inventory, by name.
    Node(String),
    /// Not in the inventory; `boot` says whether the inventory's default boots such machines
    /// (when it does not, the servers do not answer them at all, so the machine moves on to
    /// its next boot option).
    Unknown {
        /// Does the default boot unknown machines?
        boot: bool,
    },
}

/// Looks MAC addresses up (lowercase, colon-separated) in the current inventory.
pub type Directory = std::sync::Arc<dyn Fn(&str) -> Lookup + Send + Sync>;

/// Counters exposed at `/metrics`. Increment with [`Metrics::inc`] / [`Metrics::add`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// DHCP packets received (ports 67 and 4011).
    pub dhcp_packets: AtomicU64,
    /// proxyDHCP answers sent.
    pub dhcp_replies: AtomicU64,
    /// DHCP packets left alone (not from a PXE client, or not for us).
    pub dhcp_ignored: AtomicU64,
    /// DHCP packets that could not be parsed.
    pub dhcp_malformed: AtomicU64,
    /// TFTP read requests received.
    pub tftp_requests: AtomicU64,
    /// TFTP transfers completed (last block acknowledged).
    pub tftp_transfers: AtomicU64,
    /// TFTP payload bytes sent (first transmissions only).
    pub tftp_bytes: AtomicU64,
    /// TFTP DATA packets sent again after a timeout.
    pub tftp_retransmits: AtomicU64,
    /// TFTP requests refused or transfers abandoned.
    pub tftp_errors: AtomicU64,
    /// HTTP requests answered.
    pub http_requests: AtomicU64,
    /// HTTP body bytes sent.
    pub http_bytes: AtomicU64,
    /// HTTP requests answered with a 4xx or 5xx status.
    pub http_errors: AtomicU64,
    /// HTTP connections refused because their source, or the server, had as many as allowed.
    pub http_refused: AtomicU64,
    /// HTTP connections closed because nothing moved on them for the idle timeout.
    pub http_idle_closed: AtomicU64,
    /// HTTP connections open now.
    pub http_connections: AtomicU64,
    /// Discovered machines forgotten to keep the list bounded.
    pub discovered_dropped: AtomicU64,
    /// Boots and IP addresses forgotten to keep the tables bounded.
    pub tracked_dropped: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One stage of one boot, as `GET /api/v1/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    /// Which stage.
    pub stage: Stage,
    /// Seconds since this boot's first event.
    pub at_s: f64,
    /// What was served or reported (file name, version, uptime).
    pub detail: String,
}

/// A node's latest boot.
#[derive(Debug, Clone, Serialize)]
pub struct BootRecord {
    /// The node's MAC address.
    pub mac: String,
    /// Its inventory name, if it has one.
    pub name: Option<String>,
    /// The IP address it used last.
    pub ip: Option<String>,
    /// Wall-clock start of this boot, seconds since the Unix epoch.
    pub started_unix: u64,
    /// When the machine was last heard from in this boot, seconds since the Unix epoch.
    pub last_unix: u64,
    /// The stages seen so far, in order.
    pub stages: Vec<StageRecord>,
    /// Wall-clock start of this boot, to the nanosecond (for benchmarks; not in the JSON).
    #[serde(skip)]
    pub started_wall: Option<SystemTime>,
    #[serde(skip)]
    started: Option<Instant>,
    #[serde(skip)]
    last: Option<Instant>,
}

impl BootRecord {
    /// The version this boot reported ready on (its ready stage's `RECIPE@VERSION ...`).
    pub fn ready_version(&self) -> Option<String> {
        let st = self.stages.iter().find(|st| st.stage == Stage::Ready)?;
        let after = st.detail.split_once('@')?.1;
        Some(after.split_whitespace().next()?.to_string())
    }
}

/// A machine the inventory does not list, as `GET /api/v1/discovered` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Discovered {
    /// Its MAC address.
    pub mac: String,
    /// The client architecture it announced (DHCP option 93), by name.
    pub arch: String,
    /// Its vendor class (DHCP option 60).
    pub vendor_class: String,
    /// The name it gives itself (DHCP option 12), empty when it gives none.
    pub hostname: String,
    /// When it was first seen, seconds since the Unix epoch.
    pub first_seen_unix: u64,
    /// When it was last seen, seconds since the Unix epoch.
    pub last_seen_unix: u64,
    /// How many requests it has made since.
    pub requests: u64,
    #[serde(skip)]
    last: Option<Instant>,
}

#[derive(Debug, Default)]
struct Board {
    boots: BTreeMap<String, BootRecord>,
    /// Each machine's earlier boots, newest first (at most [`MAX_HISTORY`]).
    history: BTreeMap<String, VecDeque<BootRecord>>,
    /// IP -> (MAC, when last learnt).
    ips: BTreeMap<IpAddr, (String, Instant)>,
    discovered: BTreeMap<String, Discovered>,
    /// Sum and count of each stage's time since boot start, for `/metrics`.
    stage_sums: BTreeMap<Stage, (f64, u64)>,
}

/// The shared state; see the module doc.
#[derive(Debug, Default)]
pub struct Hub {
    /// The counters.
    pub metrics: Metrics,
    /// The server's log lines about each node (fed by [`NodeLogs::layer`]).
    pub logs: Arc<NodeLogs>,
    board: Mutex<Board>,
    changes: Changes,
}

/// A counter that moves whenever a boot moves or a machine is discovered, for those who wait
/// on it (the fleet page's event streams).
#[derive(Debug)]
struct Changes(tokio::sync::watch::Sender<u64>);

impl Default for Changes {
    fn default() -> Self {
        Changes(tokio::sync::watch::Sender::new(0))
    }
}

/// Removes the entries of `map` seen longest ago (by `seen`) until it has room for one more
/// under `max`; returns how many went.
fn make_room<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
    max: usize,
    seen: impl Fn(&V) -> Option<Instant>,
) -> u64 {
    let mut dropped = 0;
    while map.len() >= max {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| seen(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
        dropped += 1;
    }
    dropped
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lowercase, colon-separated form of a MAC given with `:` or `-` separators, any case; `None`
/// if it is not six hex pairs.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| parts.join(":").to_ascii_lowercase())
}

impl Hub {
    /// A new, empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `mac` reached `stage`. A stage earlier than the last one seen, once the
    /// node had fetched its script, starts a new boot (the node rebooted); a stage already seen
    /// in this boot keeps its first time.
    pub fn stage(&self, mac: &str, name: Option<&str>, stage: Stage, detail: &str) {
        let mut b = self.board();
        let now = Instant::now();
        let restart = match b.boots.get(mac) {
            None => true,
            Some(r) => r
                .stages
                .last()
                .is_some_and(|last| stage < last.stage && last.stage >= Stage::Script),
        };
        if restart {
            let old = b.boots.remove(mac);
            let ip = old.as_ref().and_then(|r| r.ip.clone());
            let old_name = old.as_ref().and_then(|r| r.name.clone());
            if let Some(old) = old {
                let h = b.history.entry(mac.to_string()).or_default();
                h.push_front(old);
                h.truncate(MAX_HISTORY);
            }
            let dropped = make_room(&mut b.boots, MAX_TRACKED, |r| r.last);
            if dropped > 0 {
                let Board { boots, history, .. } = &mut *b;
                history.retain(|m, _| m == mac || boots.contains_key(m));
            }
            Metrics::add(&self.metrics.tracked_dropped, dropped);
            b.boots.insert(
                mac.to_string(),
                BootRecord {
                    mac: mac.to_string(),
                    name: name.map(str::to_string).or(old_name),
                    ip,
                    started_unix: unix_now(),
                    last_unix: unix_now(),
                    stages: Vec::new(),
                    started_wall: Some(SystemTime::now()),
                    started: Some(now),
                    last: Some(now),
                },
            );
        }
        let rec = b.boots.get_mut(mac).expect("inserted above");
        rec.last = Some(now);
        rec.last_unix = unix_now();
        if name.is_some() {
            rec.name = name.map(str::to_string);
        }
        if rec.stages.iter().any(|s| s.stage == stage) {
            return;
        }
        let at_s = rec
            .started
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        rec.stages.push(StageRecord {
            stage,
            at_s,
            detail: detail.to_string(),
        });
        let e = b.stage_sums.entry(stage).or_insert((0.0, 0));
        e.0 += at_s;
        e.1 += 1;
        drop(b);
        self.changed();
    }

    /// Tells those waiting on [`Hub::subscribe`] that something moved.
    fn changed(&self) {
        self.changes.0.send_modify(|n| *n += 1);
    }

    /// How many times something moved (what [`Hub::subscribe`] receivers see).
    pub fn generation(&self) -> u64 {
        *self.changes.0.borrow()
    }

    /// A receiver that sees a new value whenever a boot moves or a machine is discovered.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.0.subscribe()
    }

    /// Remembers that `ip` is `mac` (learnt from a request that named its MAC).
    pub fn learn_ip(&self, ip: IpAddr, mac: &str) {
        let mut b = self.board();
        if !b.ips.contains_key(&ip) {
            let dropped = make_room(&mut b.ips, MAX_TRACKED, |(_, t)| Some(*t));
            Metrics::add(&self.metrics.tracked_dropped, dropped);
        }
        b.ips.insert(ip, (mac.to_string(), Instant::now()));
        if let Some(r) = b.boots.get_mut(mac) {
            r.ip = Some(ip.to_string());
        }
    }

    /// The MAC behind `ip`: what the server learnt, else the kernel's neighbour table (the
    /// peer has just sent us a packet, so the kernel knows its link-layer address).
    pub fn mac_for_ip(&self, ip: IpAddr) -> Option<String> {
        if let Some((m, _)) = self.board().ips.get(&ip) {
            return Some(m.clone());
        }
        let mac = Hub::neighbour_mac(ip)?;
        self.learn_ip(ip, &mac);
        Some(mac)
    }

    /// The link-layer address the kernel's neighbour table has for `ip` (a peer on one of the
    /// server's links), never what requests claimed: `None` for a peer behind a router, on
    /// loopback, or not yet resolved.
    pub fn neighbour_mac(ip: IpAddr) -> Option<String> {
        // thread-self: the table of this thread's network namespace (`/proc/net` follows the
        // process's main thread, which may live in another one).
        let table = std::fs::read_to_string("/proc/thread-self/net/arp")
            .or_else(|_| std::fs::read_to_string("/proc/net/arp"))
            .ok()?;
        mac_from_arp_table(&table, ip)
    }

    /// Notes a machine the inventory does not list; true the first time it is seen (the
    /// caller logs it then, once).
    pub fn discovered(&self, mac: &str, arch: &str, vendor_class: &str, hostname: &str) -> bool {
        let mut b = self.board();
        match b.discovered.get_mut(mac) {
            Some(d) => {
                d.requests += 1;
                d.last = Some(Instant::now());
                d.last_seen_unix = unix_now();
                if d.arch.is_empty() && !arch.is_empty() {
                    d.arch = arch.to_string();
                }
                if d.vendor_class.is_empty() && !vendor_class.is_empty() {
                    d.vendor_class = vendor_class.to_string();
                }
                if d.hostname.is_empty() && !hostname.is_empty() {
                    d.hostname = hostname.to_string();
                }
                false
            }
            None => {
                let dropped = make_room(&mut b.discovered, MAX_DISCOVERED, |d| d.last);
                Metrics::add(&self.metrics.discovered_dropped, dropped);
                b.discovered.insert(
                    mac.to_string(),
                    Discovered {
                        mac: mac.to_string(),
                        arch: arch.to_string(),
                        vendor_class: vendor_class.to_string(),
                        hostname: hostname.to_string(),
                        first_seen_unix: unix_now(),
                        last_seen_unix: unix_now(),
                        requests: 1,
                        last: Some(Instant::now()),
                    },
                );
                drop(b);
                self.changed();
                true
            }
        }
    }

    /// Every node's latest boot, by MAC.
    pub fn boots(&self) -> Vec<BootRecord> {
        self.board().boots.values().cloned().collect()
    }

    /// The latest boot of `mac`, then its earlier ones, newest first.
    pub fn boots_of(&self, mac: &str) -> Vec<BootRecord> {
        let b = self.board();
        b.boots
            .get(mac)
            .into_iter()
            .chain(b.history.get(mac).into_iter().flatten())
            .cloned()
            .collect()
    }

    /// Every machine discovered, by MAC.
    pub fn discovered_list(&self) -> Vec<Discovered> {
        self.board().discovered.values().cloned().collect()
    }

    /// The Prometheus text exposition of the counters and stage times.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "ironbake_dhcp_packets_total",
                "DHCP packets received",
                &m.dhcp_packets,
            ),
            (
                "ironbake_dhcp_replies_total",
                "proxyDHCP answers sent",
                &m.dhcp_replies,
            ),
            (
                "ironbake_dhcp_ignored_total",
                "DHCP packets not for us",
                &m.dhcp_ignored,
            ),
            (
                "ironbake_dhcp_malformed_total",
                "DHCP packets that did not parse",
                &m.dhcp_malformed,
            ),
            (
                "ironbake_tftp_requests_total",
                "TFTP read requests",
                &m.tftp_requests,
            ),
            (
                "ironbake_tftp_transfers_total",
                "TFTP transfers completed",
                &m.tftp_transfers,
            ),
            (
                "ironbake_tftp_bytes_total",
                "TFTP payload bytes sent",
                &m.tftp_bytes,
            ),
            (
                "ironbake_tftp_retransmits_total",
                "TFTP blocks sent again",
                &m.tftp_retransmits,
            ),
            (
                "ironbake_tftp_errors_total",
                "TFTP requests refused or abandoned",
                &m.tftp_errors,
            ),
            (
                "ironbake_http_requests_total",
                "HTTP requests answered",
                &m.http_requests,
            ),
            (
                "ironbake_http_bytes_total",
                "HTTP body bytes sent",
                &m.http_bytes,
            ),
            (
                "ironbake_http_errors_total",
                "HTTP 4xx and 5xx answers",
                &m.http_errors,
            ),
            (
                "ironbake_http_refused_total",
                "HTTP connections refused at the total or per-source cap",
                &m.http_refused,
            ),
            (
                "ironbake_http_idle_closed_total",
                "HTTP connections closed after the idle timeout",
                &m.http_idle_closed,
            ),
            (
                "ironbake_discovered_dropped_total",
                "Discovered machines forgotten to keep the list bounded",
                &m.discovered_dropped,
            ),
            (
                "ironbake_tracked_dropped_total",
                "Boots and IP addresses forgotten to keep the tables bounded",
                &m.tracked_dropped,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP ironbake_http_connections HTTP connections open now.\n# TYPE ironbake_http_connections gauge\nironbake_http_connections {}",
            m.http_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ironbake_node_log_dropped_total Nodes' kept log lines forgotten to keep them bounded.\n# TYPE ironbake_node_log_dropped_total counter\nironbake_node_log_dropped_total {}",
            self.logs.dropped.load(Ordering::Relaxed)
        );
        let b = self.board();
        let name = "ironbake_boot_stage_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a boot's first event to each stage.\n# TYPE {name} summary"
        );
        for stage in Stage::ALL {
            let (sum, count) = b.stage_sums.get(&stage).copied().unwrap_or((0.0, 0));
            let _ = writeln!(out, "{name}_sum{{stage=\"{}\"}} {sum:.3}", stage.name());
            let _ = writeln!(out, "{name}_count{{stage=\"{}\"}} {count}", stage.name());
        }
        let _ = writeln!(
            out,
            "# HELP ironbake_discovered_machines Machines seen that the inventory does not list.\n# TYPE ironbake_discovered_machines gauge\nironbake_discovered_machines {}",
            b.discovered.len()
        );
        out
    }
}

/// Finds `ip` in the text of `/proc/net/arp` (complete entries only).
pub fn mac_from_arp_table(table: &str, ip: IpAddr) -> Option<String> {
    let want = ip.to_string();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device; flag 0x2 = complete.
        (f.len() >= 4 && f[0] == want && f[2] != "0x0")
            .then(|| normalize_mac(f[3]))
            .flatten()
            .filter(|m| m != "00:00:00:00:00:00")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_make_boots_and_a_reboot_starts_a_new_one() {
        let hub = Hub::new();
        let mac = "52:54:00:00:00:01";
        hub.stage(mac, None, Stage::Dhcp, "x64 UEFI");
        hub.stage(mac, None, Stage::Bootloader, "snponly.efi");
        // iPXE's own DHCP: earlier than the last stage, but before the script: same boot.
        hub.stage(mac, None, Stage::Dhcp, "iPXE");
        hub.stage(mac, Some("ci0"), Stage::Script, "boot.ipxe");
        hub.stage(mac, None, Stage::Kernel, "vmlinuz");
        hub.stage(mac, None, Stage::Kernel, "vmlinuz again");
        let b = hub.boots();
        assert_eq!(b.len(), 1);
        let names: Vec<_> = b[0].stages.iter().map(|s| s.stage).collect();
        assert_eq!(
            names,
            [Stage::Dhcp, Stage::Bootloader, Stage::Script, Stage::Kernel]
        );
        assert_eq!(b[0].name.as_deref(), Some("ci0"));
        assert_eq!(b[0].stages[3].detail, "vmlinuz");
        hub.stage(mac, None, Stage::Ready, "up");
        hub.stage(mac, None, Stage::Dhcp, "reboot");
        let b = hub.boots();
        assert_eq!(b[0].stages.len(), 1, "{b:?}");
        assert_eq!(b[0].name.as_deref(), Some("ci0"));
        let m = hub.render_metrics();
        assert!(
            m.contains("ironbake_boot_stage_seconds_count{stage=\"dhcp\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("ironbake_boot_stage_seconds_count{stage=\"ready\"} 1"),
            "{m}"
        );
    }

    #[test]
    fn discovered_machines_are_reported_once() {
        let hub = Hub::new();
        assert!(hub.discovered("52:54:00:00:00:99", "x64 UEFI", "PXEClient:Arch:00007", ""));
        assert!(!hub.discovered("52:54:00:00:00:99", "x64 UEFI", "PXEClient:Arch:00007", ""));
        let d = hub.discovered_list();
        assert_eq!((d.len(), d[0].requests), (1, 2));
    }

    #[test]
    fn the_discovered_list_stops_at_its_bound_forgetting_the_oldest() {
        let hub = Hub::new();
        let mac = |i: u32| {
            format!(
                "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
                i >> 24,
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            )
        };
        hub.discovered(&mac(0), "x64 UEFI", "PXEClient", "");
        for i in 1..10_000 {
            hub.discovered(&mac(i), "x64 UEFI", "PXEClient", "");
            if i % 100 == 0 {
                // The first machine keeps asking: it is not the oldest, so it stays.
                hub.discovered(&mac(0), "", "", "");
            }
        }
        let d = hub.discovered_list();
        assert_eq!(d.len(), MAX_DISCOVERED);
        assert!(
            d.iter().any(|m| m.mac == mac(0)),
            "the one still asking stays"
        );
        assert!(d.iter().any(|m| m.mac == mac(9_999)), "the newest is there");
        assert!(!d.iter().any(|m| m.mac == mac(1)), "the oldest went");
        let dropped = 10_000 - MAX_DISCOVERED as u64;
        assert!(
            hub.render_metrics()
                .contains(&format!("ironbake_discovered_dropped_total {dropped}\n")),
            "{}",
            hub.render_metrics()
        );
        for i in 0..(MAX_TRACKED as u32 + 10) {
            hub.learn_ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), &mac(i));
        }
        assert_eq!(hub.board().ips.len(), MAX_TRACKED);
    }

    #[test]
    fn macs_and_the_arp_table() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:0g"), None);
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                     10.33.0.101      0x1         0x2         52:54:00:00:00:01     *        br0\n\
                     10.33.0.102      0x1         0x0         00:00:00:00:00:00     *        br0\n";
        assert_eq!(
            mac_from_arp_table(table, "10.33.0.101".parse().unwrap()).as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(
            mac_from_arp_table(table, "10.33.0.102".parse().unwrap()),
            None
        );
        assert_eq!(
            mac_from_arp_table(table, "10.33.0.9".parse().unwrap()),
            None
        );
    }
}
