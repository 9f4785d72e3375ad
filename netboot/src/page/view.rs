//! What the fleet page shows, made from a snapshot of the server's state (pure: no IO, no
//! clock but the snapshot's): one row per inventory node, the discovered machines, the
//! published versions, the rollouts, and each node's own page.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fleet::rollout::Rollout;
use crate::fleet::{Action, Live, NodeStatus, PowerAction, PowerResult};
use crate::hub::{BootRecord, Discovered, Stage};
use crate::inventory::Inventory;
use crate::layout::RecipeVersions;
use crate::logs::Line;

/// A boot that has not moved for this long is shown as stalled.
pub const STALLED_S: u64 = 600;

/// Everything a page is made from, taken at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Now, seconds since the Unix epoch.
    pub now_unix: u64,
    /// The inventory.
    pub inventory: std::sync::Arc<Inventory>,
    /// Each machine's latest boot, by MAC.
    pub boots: BTreeMap<String, BootRecord>,
    /// The discovered machines.
    pub discovered: Vec<Discovered>,
    /// The fleet's view of each node, by name (`None`: the server has no state folder).
    pub fleet: Option<BTreeMap<String, NodeStatus>>,
    /// The last power request for each node, with when it was made.
    pub power: BTreeMap<String, (PowerResult, u64)>,
    /// The published versions.
    pub published: Vec<RecipeVersions>,
    /// The rollouts, oldest first.
    pub rollouts: Vec<Rollout>,
}

/// The fleet page's live part.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// Can the page act (power, rollouts, enrolling)? Only with a state folder.
    pub actions: bool,
    /// When it was made.
    pub now_unix: u64,
    /// One row per inventory node, by name.
    pub nodes: Vec<NodeRow>,
    /// Counts of the nodes by state class, for the summary line.
    pub summary: BTreeMap<&'static str, usize>,
    /// The discovered machines, by MAC.
    pub discovered: Vec<Discovered>,
    /// The published versions per recipe.
    pub recipes: Vec<RecipeRow>,
    /// The rollouts, newest first (at most [`MAX_ROLLOUTS`]).
    pub rollouts: Vec<Rollout>,
}

/// The most rollouts the page lists.
pub const MAX_ROLLOUTS: usize = 10;

/// One inventory node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// Its recipe.
    pub recipe: String,
    /// Its IP address as last seen.
    pub ip: Option<String>,
    /// The version it runs, as its agent or its ready report says.
    pub running: Option<String>,
    /// The version it gets at its next boot.
    pub desired: Option<String>,
    /// Where `desired` comes from: `desired` (set on this server), `pinned` (the
    /// inventory) or `current` (the recipe's).
    pub desired_from: &'static str,
    /// Its state in words.
    pub state: String,
    /// `ok`, `busy`, `bad` or `idle`, for the colour.
    pub class: &'static str,
    /// The stages of its latest boot, with what each took.
    pub stages: Vec<StageCell>,
    /// When it was last heard from.
    pub last_seen_unix: Option<u64>,
    /// What is known of its power.
    pub power: String,
    /// Does it have a BMC?
    pub bmc: bool,
    /// Its disk, for a node the inventory installs: what is on it, or that it waits for
    /// its install.
    pub disk: Option<String>,
}

/// One stage of a boot.
#[derive(Debug, Clone, Serialize)]
pub struct StageCell {
    /// The stage's name.
    pub name: &'static str,
    /// Seconds from the boot's first event.
    pub at_s: f64,
    /// Seconds from the stage before.
    pub took_s: f64,
    /// What was served or reported.
    pub detail: String,
}

/// A recipe's published versions.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeRow {
    /// The recipe.
    pub recipe: String,
    /// The versions, newest name last.
    pub versions: Vec<String>,
    /// The one `current` names.
    pub current: Option<String>,
    /// How many inventory nodes boot this recipe.
    pub nodes: usize,
}

/// A node's own page.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Can the page act?
    pub actions: bool,
    /// When it was made.
    pub now_unix: u64,
    /// The node's row, as on the fleet page.
    pub row: NodeRow,
    /// Its recent boots, newest first.
    pub boots: Vec<BootView>,
    /// What its agent last said (failed units and their log lines among it).
    pub live: Option<Live>,
    /// The server's log lines about it, oldest first.
    pub log: Vec<Line>,
    /// Its inventory entry's BMC, in words (`ipmi 10.0.0.5`), if it has one.
    pub bmc: Option<String>,
}

/// One boot, for a node's page.
#[derive(Debug, Clone, Serialize)]
pub struct BootView {
    /// When it started.
    pub started_unix: u64,
    /// Its IP address.
    pub ip: Option<String>,
    /// Its stages.
    pub stages: Vec<StageCell>,
    /// Seconds from its first event to its last stage.
    pub total_s: f64,
    /// Did it reach ready?
    pub ready: bool,
}

/// The stages of `boot`, each with the time since the one before.
pub fn stage_cells(boot: &BootRecord) -> Vec<StageCell> {
    let mut before = 0.0;
    boot.stages
        .iter()
        .map(|s| {
            let took = (s.at_s - before).max(0.0);
            before = s.at_s;
            StageCell {
                name: s.stage.name(),
                at_s: s.at_s,
                took_s: took,
                detail: s.detail.clone(),
            }
        })
        .collect()
}

/// The fleet page's live part.
pub fn fleet(s: &Snapshot) -> FleetView {
    let nodes: Vec<NodeRow> = s.inventory.nodes.keys().map(|name| row(s, name)).collect();
    let mut summary = BTreeMap::new();
    for n in &nodes {
        *summary.entry(n.class).or_insert(0) += 1;
    }
    let discovered = s.discovered.clone();
    let recipes = s
        .published
        .iter()
        .filter(|r| r.recipe != "ipxe")
        .map(|r| RecipeRow {
            recipe: r.recipe.clone(),
            versions: r.versions.clone(),
            current: r.current.clone(),
            nodes: s
                .inventory
                .nodes
                .values()
                .filter(|n| n.recipe == r.recipe)
                .count(),
        })
        .collect();
    FleetView {
        actions: s.fleet.is_some(),
        now_unix: s.now_unix,
        nodes,
        summary,
        discovered,
        recipes,
        rollouts: s
            .rollouts
            .iter()
            .rev()
            .take(MAX_ROLLOUTS)
            .cloned()
            .collect(),
    }
}

/// One node's row (`name` must be an inventory node).
pub fn row(s: &Snapshot, name: &str) -> NodeRow {
    let node = &s.inventory.nodes[name];
    let boot = s.boots.get(&node.mac);
    let status = s.fleet.as_ref().and_then(|f| f.get(name));
    let live = status.map(|st| &st.live);
    let alive = status.is_some_and(|st| st.alive);
    let last_stage = boot.and_then(|b| b.stages.last());
    let ready_version = boot.and_then(BootRecord::ready_version);
    let running = match live.and_then(|l| l.version.clone()) {
        Some(v) if alive => Some(v),
        _ => ready_version,
    };
    let (desired, desired_from) = match status {
        Some(st) if st.desired.is_some() => (st.desired.clone(), "desired"),
        Some(st) if st.pinned.is_some() => (st.pinned.clone(), "pinned"),
        Some(st) => (st.boots.clone(), "current"),
        None => (node.version.clone(), "pinned"),
    };
    let power = s.power.get(name);
    // Off: its agent took a power-off and has not been heard from since, or the server
    // switched it off through its BMC and it has not booted since.
    let agent_off = live.is_some_and(|l| {
        l.command.as_ref().is_some_and(|c| {
            c.action == Action::Poweroff
                && c.acked_unix
                    .is_some_and(|t| l.last_seen_unix.is_none_or(|seen| seen <= t))
        })
    });
    let bmc_off = power.is_some_and(|(r, at)| {
        r.action == PowerAction::Off
            && r.ok
            && r.via != "agent"
            && boot.is_none_or(|b| b.last_unix <= *at)
    });
    let powered_off = agent_off || bmc_off;
    let alive = alive && !powered_off;
    let moving = boot.is_some_and(|b| s.now_unix.saturating_sub(b.last_unix) < STALLED_S);
    let (state, class) = match (live, last_stage) {
        _ if alive && live.and_then(|l| l.ready.as_deref()) == Some("yes") => {
            ("ready".to_string(), "ok")
        }
        (Some(l), _) if alive && l.ready.as_deref() == Some("failed") => {
            (format!("failed: {}", l.failed.join(" ")), "bad")
        }
        _ if alive => ("starting systemd".to_string(), "busy"),
        _ if powered_off => ("off".to_string(), "idle"),
        (_, Some(st)) if st.stage == Stage::Ready && s.fleet.is_none() => {
            ("ready".to_string(), "ok")
        }
        (_, Some(st)) if st.stage == Stage::Ready => ("not heard from".to_string(), "bad"),
        (_, Some(st)) if st.stage == Stage::Installed => {
            ("installed: booting from its disk".to_string(), "ok")
        }
        (_, Some(st)) if st.stage == Stage::Refused => {
            (format!("install refused: {}", st.detail), "bad")
        }
        (_, Some(st)) if st.stage == Stage::Installing && moving => {
            ("installing onto its disk".to_string(), "busy")
        }
        (_, Some(st)) if moving => (format!("booting: {}", st.stage.name()), "busy"),
        (_, Some(st)) => (format!("stalled after {}", st.stage.name()), "bad"),
        (_, None) => ("not seen".to_string(), "idle"),
    };
    let last_seen_unix = [
        boot.map(|b| b.last_unix),
        live.and_then(|l| l.last_seen_unix),
    ]
    .into_iter()
    .flatten()
    .max();
    NodeRow {
        name: name.to_string(),
        mac: node.mac.clone(),
        recipe: node.recipe.clone(),
        ip: boot.and_then(|b| b.ip.clone()),
        running,
        desired,
        desired_from,
        state,
        class,
        stages: boot.map(stage_cells).unwrap_or_default(),
        last_seen_unix,
        power: power_words(alive, powered_off, power),
        bmc: node.bmc.is_some(),
        disk: node
            .install
            .as_ref()
            .map(|i| match status.and_then(|st| st.installed.as_ref()) {
                Some(d) => format!("{}@{} on {}", d.recipe, d.version, d.disk),
                None => format!("not installed yet: {}", i.word()),
            }),
    }
}

fn power_words(alive: bool, off: bool, last: Option<&(PowerResult, u64)>) -> String {
    if alive {
        return "on".into();
    }
    if off {
        return "off".into();
    }
    match last {
        Some((r, _)) if r.power == Some(true) => format!("on ({})", r.via),
        Some((r, _)) if r.power == Some(false) => format!("off ({})", r.via),
        Some((r, _)) if r.action == PowerAction::On && r.ok => format!("switched on ({})", r.via),
        _ => "unknown".into(),
    }
}

/// A node's own page: `boots` are its latest and earlier boots, newest first.
pub fn node(s: &Snapshot, name: &str, boots: &[BootRecord], log: Vec<Line>) -> NodeView {
    let node = &s.inventory.nodes[name];
    NodeView {
        actions: s.fleet.is_some(),
        now_unix: s.now_unix,
        row: row(s, name),
        boots: boots
            .iter()
            .map(|b| BootView {
                started_unix: b.started_unix,
                ip: b.ip.clone(),
                stages: stage_cells(b),
                total_s: b.stages.last().map_or(0.0, |st| st.at_s),
                ready: b.stages.iter().any(|st| st.stage == Stage::Ready),
            })
            .collect(),
        live: s
            .fleet
            .as_ref()
            .and_then(|f| f.get(name))
            .map(|st| st.live.clone()),
        log,
        bmc: node
            .bmc
            .as_ref()
            .map(|b| format!("{} {}", b.kind.word(), b.address)),
    }
}
