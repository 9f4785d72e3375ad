//! Prometheus HTTP service discovery of the nodes' exporters (`GET
//! /api/v1/prometheus/targets`, the `http_sd_configs` format): one target group per node
//! whose running version has the `telemetry` overlay (Debian's prometheus-node-exporter on
//! [`EXPORTER_PORT`]) and whose address the server has seen, labelled `node`, `recipe` and
//! `version`. Pure; the HTTP handler gathers what it needs.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// The port of the `telemetry` overlay's exporter (the node exporter's registered default).
pub const EXPORTER_PORT: u16 = 9100;
/// The overlay that puts the exporter on a node.
pub const OVERLAY: &str = "telemetry";

/// What the server knows of one inventory node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its name.
    pub name: String,
    /// Its recipe.
    pub recipe: String,
    /// The version it runs (or last booted), if known.
    pub version: Option<String>,
    /// Its address as last seen.
    pub ip: Option<IpAddr>,
    /// Does that version carry the exporter?
    pub exporter: bool,
}

/// One target group of Prometheus' HTTP service discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    /// `ADDRESS:PORT` of the exporter.
    pub targets: Vec<String>,
    /// Labels Prometheus puts on every series scraped from it.
    pub labels: BTreeMap<String, String>,
}

/// The target groups of `nodes` (in their order: the inventory's, by name) that have an
/// exporter and a known address.
pub fn groups(nodes: &[Seen]) -> Vec<TargetGroup> {
    nodes
        .iter()
        .filter(|n| n.exporter)
        .filter_map(|n| {
            let ip = n.ip?;
            let mut labels = BTreeMap::from([
                ("node".to_string(), n.name.clone()),
                ("recipe".to_string(), n.recipe.clone()),
            ]);
            if let Some(v) = &n.version {
                labels.insert("version".into(), v.clone());
            }
            Some(TargetGroup {
                targets: vec![SocketAddr::new(ip, EXPORTER_PORT).to_string()],
                labels,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_with_an_exporter_and_an_address_are_targets() {
        let seen = |name: &str, ip: Option<&str>, exporter: bool| Seen {
            name: name.into(),
            recipe: "ci-node".into(),
            version: Some("0.1.0-abc".into()),
            ip: ip.map(|i| i.parse().unwrap()),
            exporter,
        };
        let g = groups(&[
            seen("a", Some("fd00::5"), true),
            seen("b", Some("10.0.0.2"), true),
            seen("no-exporter", Some("10.0.0.3"), false),
            seen("never-seen", None, true),
        ]);
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["[fd00::5]:9100"], "labels": {"node": "a", "recipe": "ci-node", "version": "0.1.0-abc"}},
                {"targets": ["10.0.0.2:9100"], "labels": {"node": "b", "recipe": "ci-node", "version": "0.1.0-abc"}},
            ])
        );
    }
}
