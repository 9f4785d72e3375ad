//! The server's own log lines about each node, kept for the node's page: a `tracing` layer
//! ([`NodeLogs::layer`]) keeps every event that names a node (`node = ...`) or a MAC address
//! (`mac = ...`), under that name or address, as the text log shows it.
//!
//! Bounded like the hub's tables, since anyone on the LAN can make the server log invented
//! MAC addresses: [`MAX_KEYS`] names and addresses with [`MAX_LINES`] lines each, of at most
//! [`MAX_LINE`] bytes (about 3 MB at worst); the key written longest ago goes first.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::field::{Field, Visit};

/// The most names and MAC addresses kept.
pub const MAX_KEYS: usize = 512;
/// The most lines kept per name or MAC address (the newest).
pub const MAX_LINES: usize = 48;
/// A line's longest text, in bytes (longer ones are cut, with `...`).
pub const MAX_LINE: usize = 240;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: &'static str,
    /// The message, then the event's other fields as `name=value`.
    pub text: String,
    /// Its place among every line kept (lines of one millisecond keep their order).
    #[serde(skip)]
    seq: u64,
}

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<Line>,
    /// When the key was last written, as a sequence number (for eviction).
    seq: u64,
}

/// The kept lines, by node name or MAC address.
#[derive(Debug, Default)]
pub struct NodeLogs {
    keys: Mutex<BTreeMap<String, Kept>>,
    seq: AtomicU64,
    /// Keys forgotten to stay within [`MAX_KEYS`].
    pub dropped: AtomicU64,
}

impl NodeLogs {
    /// Keeps `text` under `key`.
    pub fn push(&self, key: &str, level: &'static str, text: &str) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let text = cut(text, MAX_LINE);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(key) && keys.len() >= MAX_KEYS {
            let oldest = keys
                .iter()
                .min_by_key(|(_, k)| k.seq)
                .map(|(name, _)| name.clone());
            if let Some(o) = oldest {
                keys.remove(&o);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let kept = keys.entry(key.to_string()).or_default();
        kept.seq = seq;
        if kept.lines.len() >= MAX_LINES {
            kept.lines.pop_front();
        }
        kept.lines.push_back(Line {
            unix_ms,
            level,
            text,
            seq,
        });
    }

    /// The lines kept under any of `keys`, oldest first.
    pub fn lines(&self, keys: &[&str]) -> Vec<Line> {
        let kept = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut lists: Vec<std::collections::vec_deque::Iter<'_, Line>> = keys
            .iter()
            .filter_map(|k| kept.get(*k))
            .map(|k| k.lines.iter())
            .collect();
        // Each key's lines are in order already: merge them (no sort, no code for one).
        let mut heads: Vec<Option<&Line>> = lists.iter_mut().map(Iterator::next).collect();
        let mut out = Vec::new();
        while let Some(i) = (0..heads.len())
            .filter(|&i| heads[i].is_some())
            .min_by_key(|&i| heads[i].map(|l| l.seq))
        {
            out.extend(heads[i].cloned());
            heads[i] = lists[i].next();
        }
        out
    }

    /// The layer that feeds these logs; add it to the process's subscriber.
    pub fn layer(self: &Arc<Self>) -> Layer {
        Layer(Arc::clone(self))
    }
}

/// `text` cut to at most `max` bytes on a character boundary, `...` marking the cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The `tracing` layer of [`NodeLogs`].
#[derive(Debug, Clone)]
pub struct Layer(Arc<NodeLogs>);

#[derive(Default)]
struct Fields {
    node: Option<String>,
    mac: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            // `node = "-"` is how the DHCP log says "no node".
            "node" if value != "-" => {
                let _ = write!(self.rest, " node={value}");
                self.node = Some(value);
            }
            "mac" => {
                let _ = write!(self.rest, " mac={value}");
                self.mac = Some(value);
            }
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        let Some(key) = f.node.as_deref().or(f.mac.as_deref()) else {
            return;
        };
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARN",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::TRACE => "TRACE",
        };
        self.0.push(key, level, &format!("{}{}", f.message, f.rest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn events_naming_a_node_or_a_mac_are_kept_under_it() {
        let logs = Arc::new(NodeLogs::default());
        let subscriber = tracing_subscriber::registry().with(logs.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(mac = "52:54:00:00:00:01", "proxyDHCP answer");
            tracing::info!(
                node = "ci0",
                mac = "52:54:00:00:00:01",
                version = "1",
                "boot script"
            );
            tracing::warn!(node = "ci1", "refused");
            tracing::info!(node = "-", mac = "52:54:00:00:00:02", "unknown machine");
            tracing::info!("about nobody");
        });
        let mac = logs.lines(&["52:54:00:00:00:01"]);
        assert_eq!(mac.len(), 1);
        assert_eq!(mac[0].text, "proxyDHCP answer mac=52:54:00:00:00:01");
        let both = logs.lines(&["ci0", "52:54:00:00:00:01"]);
        assert_eq!(both.len(), 2);
        assert_eq!(
            both[1].text,
            "boot script node=ci0 mac=52:54:00:00:00:01 version=1"
        );
        assert_eq!(logs.lines(&["ci1"])[0].level, "WARN");
        assert!(logs.lines(&["nobody"]).is_empty());
        assert!(logs.lines(&["-"]).is_empty());
        assert_eq!(logs.lines(&["52:54:00:00:00:02"]).len(), 1);
    }

    #[test]
    fn the_logs_stay_within_their_bounds() {
        let logs = NodeLogs::default();
        for i in 0..(MAX_KEYS + 10) {
            logs.push(&format!("m{i}"), "INFO", &"x".repeat(1000));
            if i % 50 == 0 {
                logs.push("m0", "INFO", "still here");
            }
        }
        for _ in 0..(MAX_LINES * 2) {
            logs.push("m0", "INFO", "é".repeat(200).as_str());
        }
        let keys = logs.keys.lock().unwrap();
        assert_eq!(keys.len(), MAX_KEYS);
        assert!(keys.contains_key("m0"), "the key written lately stays");
        assert!(!keys.contains_key("m1"), "the oldest went");
        assert_eq!(keys["m0"].lines.len(), MAX_LINES);
        assert!(
            keys.values()
                .flat_map(|k| &k.lines)
                .all(|l| l.text.len() <= MAX_LINE)
        );
        assert_eq!(logs.dropped.load(Ordering::Relaxed), 10);
    }
}
