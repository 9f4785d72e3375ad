//! The mesh: point-to-point links between nodes (the homelab's ConnectX-3 ports, cabled node to
//! node without a switch), declared per node in the inventory and checked as a whole.
//!
//! ```toml
//! [[nodes.machine0.vars.mesh]]
//! interface = "enp1s0"             # this node's port, as the image names it
//! address = "192.168.1.1/30"       # this end's address; /30 or /31
//! peer = "machine1"                # the node at the other end of the cable
//! peer-interface = "enp1s0"        # its port
//! peer-address = "192.168.1.2/30"  # its address
//! mac = "24:8a:07:d2:c6:91"        # optional: rename the NIC with this MAC to `interface`
//! opensm = { guid = "0x248a070300d2c691", priority = 0 }  # optional: run a subnet
//!                                  # manager on this port (InfiniBand mode)
//! ```
//!
//! Every link must be declared on both ends, each the mirror of the other; two links never
//! share a subnet; a node's interfaces and every MAC are unique; a port's GUID is unique.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::inventory::{Inventory, valid_mac};

/// The inventory variable that holds a node's mesh links.
pub const VAR: &str = "mesh";

/// One end of a link, as a node declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Link {
    /// This node's interface name.
    pub interface: String,
    /// This end's address with its prefix, e.g. `192.168.1.1/30`.
    pub address: String,
    /// The node at the other end.
    pub peer: String,
    /// The peer's interface.
    pub peer_interface: String,
    /// The peer's address with its prefix.
    pub peer_address: String,
    /// The MAC address of this node's port, when the image should name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// A subnet manager on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opensm: Option<OpenSm>,
}

/// An opensm instance bound to one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OpenSm {
    /// The port GUID (`ibstat -p`), `0x` and 16 hex digits.
    pub guid: String,
    /// Its priority, 0 (lowest) to 15; the highest on a subnet becomes master.
    pub priority: u8,
}

/// What is wrong with a mesh, and the text to point at (the node's name, then the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshError {
    /// The node whose declaration is wrong.
    pub node: String,
    /// The offending value, to locate in the file after the node's section.
    pub needle: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/N`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/')?;
        let prefix: u8 = p.parse().ok()?;
        (prefix <= 32 && !p.starts_with('+')).then_some(())?;
        Some(Cidr {
            addr: a.parse().ok()?,
            prefix,
        })
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// The network address.
    pub fn network(self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    /// Do two networks overlap?
    pub fn overlaps(self, other: Cidr) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

fn err(node: &str, needle: &str, message: String) -> MeshError {
    MeshError {
        node: node.into(),
        needle: needle.into(),
        message,
    }
}

/// Each node's links, by node name (nodes without `mesh` are left out).
pub fn links(inv: &Inventory) -> Result<BTreeMap<String, Vec<Link>>, MeshError> {
    let mut out = BTreeMap::new();
    for (name, node) in &inv.nodes {
        let Some(v) = node.vars.get(VAR) else {
            continue;
        };
        let links: Vec<Link> = v.clone().try_into().map_err(|e: toml::de::Error| {
            err(
                name,
                VAR,
                format!(
                    "node {name}: mesh must be a list of links ([[nodes.{name}.vars.mesh]] with interface, address, peer, peer-interface, peer-address): {}",
                    e.message()
                ),
            )
        })?;
        out.insert(name.clone(), links);
    }
    Ok(out)
}

/// Checks the whole mesh; see the module doc for the rules.
pub fn check(inv: &Inventory) -> Result<(), MeshError> {
    let all = links(inv)?;
    let mut macs: BTreeMap<String, String> = inv
        .nodes
        .iter()
        .map(|(n, node)| (node.mac.clone(), format!("node {n}'s boot NIC")))
        .collect();
    let mut guids: BTreeMap<&str, String> = BTreeMap::new();
    // Each link's subnet, keyed by its two ends (sorted), so a mirror pair counts once.
    let mut subnets: Vec<(Cidr, [(String, String); 2])> = Vec::new();
    for (name, links) in &all {
        let mut ifaces: Vec<&str> = Vec::new();
        for l in links {
            let at = |needle: &str, msg: String| err(name, needle, msg);
            let iface_ok = !l.interface.is_empty()
                && l.interface.len() <= 15
                && l.interface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !iface_ok {
                return Err(at(
                    &l.interface,
                    format!(
                        "node {name}: {:?} is not an interface name (at most 15 letters, digits, '-', '_', '.')",
                        l.interface
                    ),
                ));
            }
            if ifaces.contains(&l.interface.as_str()) {
                return Err(at(
                    &l.interface,
                    format!("node {name}: interface {} has two mesh links", l.interface),
                ));
            }
            ifaces.push(&l.interface);
            let cidr = |s: &str| -> Result<Cidr, MeshError> {
                match Cidr::parse(s) {
                    Some(c) if c.prefix == 30 || c.prefix == 31 => Ok(c),
                    _ => Err(at(
                        s,
                        format!(
                            "node {name}: mesh address {s:?} must be an IPv4 address with a /30 or /31 prefix (a point-to-point link), e.g. 192.168.1.1/30"
                        ),
                    )),
                }
            };
            let mine = cidr(&l.address)?;
            let theirs = cidr(&l.peer_address)?;
            if mine.prefix != theirs.prefix || mine.network() != theirs.network() {
                return Err(at(
                    &l.peer_address,
                    format!(
                        "node {name}: {} and its peer {} are not in one subnet",
                        l.address, l.peer_address
                    ),
                ));
            }
            if mine.addr == theirs.addr {
                return Err(at(
                    &l.peer_address,
                    format!(
                        "node {name}: both ends of {} have the same address",
                        l.interface
                    ),
                ));
            }
            if mine.prefix == 30 {
                for (c, text) in [(mine, &l.address), (theirs, &l.peer_address)] {
                    let host = u32::from(c.addr) & 3;
                    if host == 0 || host == 3 {
                        return Err(at(
                            text,
                            format!(
                                "node {name}: {} is the network or broadcast address of its /30; use .1 and .2 of the four",
                                c.addr
                            ),
                        ));
                    }
                }
            }
            if l.peer == *name {
                return Err(at(&l.peer, format!("node {name}: a mesh link to itself")));
            }
            // The mirror: the peer declares the same link from its side.
            let Some(peer_links) = inv
                .nodes
                .get(&l.peer)
                .map(|_| all.get(&l.peer).map(Vec::as_slice).unwrap_or_default())
            else {
                return Err(at(
                    &l.peer,
                    format!(
                        "node {name}: mesh peer {:?} is not a node of this inventory",
                        l.peer
                    ),
                ));
            };
            let mirror = peer_links.iter().find(|p| p.interface == l.peer_interface);
            let Some(m) = mirror else {
                return Err(at(
                    &l.peer_interface,
                    format!(
                        "node {name}: {} is cabled to {} {}, but {} declares no mesh link on {}; add it there (peer = \"{name}\", peer-interface = \"{}\")",
                        l.interface,
                        l.peer,
                        l.peer_interface,
                        l.peer,
                        l.peer_interface,
                        l.interface
                    ),
                ));
            };
            if m.peer != *name || m.peer_interface != l.interface {
                return Err(at(
                    &l.peer_interface,
                    format!(
                        "node {name}: {} is cabled to {} {}, but {} says its {} goes to {} {}",
                        l.interface,
                        l.peer,
                        l.peer_interface,
                        l.peer,
                        m.interface,
                        m.peer,
                        m.peer_interface
                    ),
                ));
            }
            if Cidr::parse(&m.address) != Some(theirs) || Cidr::parse(&m.peer_address) != Some(mine)
            {
                return Err(at(
                    &l.peer_address,
                    format!(
                        "node {name}: the link {} <-> {} {} has addresses {} and {} here, but {} and {} on {}",
                        l.interface,
                        l.peer,
                        l.peer_interface,
                        l.address,
                        l.peer_address,
                        m.peer_address,
                        m.address,
                        l.peer
                    ),
                ));
            }
            let mut ends = [
                (name.clone(), l.interface.clone()),
                (l.peer.clone(), l.peer_interface.clone()),
            ];
            ends.sort();
            match subnets.iter().find(|(c, _)| c.overlaps(mine)) {
                Some((_, e)) if *e == ends => {}
                Some((c, e)) => {
                    return Err(at(
                        &l.address,
                        format!(
                            "node {name}: the subnet of {} overlaps {}/{} of the link {} {} <-> {} {}; give every link its own /30",
                            l.address, c.addr, c.prefix, e[0].0, e[0].1, e[1].0, e[1].1
                        ),
                    ));
                }
                None => subnets.push((mine, ends)),
            }
            if let Some(mac) = &l.mac {
                if !valid_mac(mac) {
                    return Err(at(
                        mac,
                        format!(
                            "node {name}: mac {mac:?} must look like 52:54:00:ab:cd:ef (lowercase)"
                        ),
                    ));
                }
                if let Some(other) =
                    macs.insert(mac.clone(), format!("node {name}'s {}", l.interface))
                {
                    return Err(at(
                        mac,
                        format!("node {name}: mac {mac} of {} is also {other}", l.interface),
                    ));
                }
            }
            if let Some(sm) = &l.opensm {
                let ok = sm.guid.len() == 18
                    && sm.guid.starts_with("0x")
                    && sm.guid[2..]
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
                if !ok {
                    return Err(at(
                        &sm.guid,
                        format!(
                            "node {name}: opensm guid {:?} must be 0x and 16 lowercase hex digits, as `ibstat -p` prints it",
                            sm.guid
                        ),
                    ));
                }
                if sm.priority > 15 {
                    return Err(at(
                        &sm.guid,
                        format!(
                            "node {name}: opensm priority {} must be 0 to 15",
                            sm.priority
                        ),
                    ));
                }
                if let Some(other) =
                    guids.insert(&sm.guid, format!("node {name}'s {}", l.interface))
                {
                    return Err(at(
                        &sm.guid,
                        format!("node {name}: port GUID {} is also {other}", sm.guid),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's connection table, in inventory form.
    const MESH: &str = r#"
[nodes.machine0]
mac = "02:00:00:00:00:10"
recipe = "core-node"
[[nodes.machine0.vars.mesh]]
interface = "enp1s0"
address = "192.168.1.1/30"
peer = "machine1"
peer-interface = "enp1s0"
peer-address = "192.168.1.2/30"
[[nodes.machine0.vars.mesh]]
interface = "enp1s0d1"
address = "192.168.2.1/30"
peer = "machine2"
peer-interface = "enp1s0"
peer-address = "192.168.2.2/30"
opensm = { guid = "0x248a070300d2c692", priority = 1 }

[nodes.machine1]
mac = "02:00:00:00:00:11"
recipe = "core-node"
[[nodes.machine1.vars.mesh]]
interface = "enp1s0"
address = "192.168.1.2/30"
peer = "machine0"
peer-interface = "enp1s0"
peer-address = "192.168.1.1/30"
[[nodes.machine1.vars.mesh]]
interface = "enp1s0d1"
address = "192.168.3.1/30"
peer = "machine2"
peer-interface = "enp1s0d1"
peer-address = "192.168.3.2/30"

[nodes.machine2]
mac = "02:00:00:00:00:12"
recipe = "core-node"
[[nodes.machine2.vars.mesh]]
interface = "enp1s0"
address = "192.168.2.2/30"
peer = "machine0"
peer-interface = "enp1s0d1"
peer-address = "192.168.2.1/30"
[[nodes.machine2.vars.mesh]]
interface = "enp1s0d1"
address = "192.168.3.2/30"
peer = "machine1"
peer-interface = "enp1s0d1"
peer-address = "192.168.3.1/30"
"#;

    fn parse(text: &str) -> Result<Inventory, crate::diag::Located> {
        crate::inventory::parse("inventory.toml", text)
    }

    fn broken(from: &str, to: &str) -> String {
        assert!(MESH.contains(from), "{from}");
        let e = parse(&MESH.replacen(from, to, 1)).unwrap_err();
        e.to_string()
    }

    #[test]
    fn the_seed_mesh_is_consistent() {
        let inv = parse(MESH).unwrap();
        let all = links(&inv).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all["machine2"][0].peer_interface, "enp1s0d1");
        assert_eq!(
            all["machine0"][1].opensm.as_ref().unwrap().guid,
            "0x248a070300d2c692"
        );
    }

    #[test]
    fn a_link_without_its_mirror_is_refused() {
        // machine2 says its enp1s0 goes to machine1, not machine0.
        let e = broken(
            "peer = \"machine0\"\npeer-interface = \"enp1s0d1\"",
            "peer = \"machine1\"\npeer-interface = \"enp1s0d1\"",
        );
        assert!(e.contains("says its"), "{e}");
        let e = broken(
            "peer-interface = \"enp1s0d1\"\npeer-address = \"192.168.3.2/30\"",
            "peer-interface = \"enp2s0\"\npeer-address = \"192.168.3.2/30\"",
        );
        assert!(e.contains("declares no mesh link on enp2s0"), "{e}");
        let e = broken(
            "peer = \"machine2\"\npeer-interface = \"enp1s0\"",
            "peer = \"machine9\"\npeer-interface = \"enp1s0\"",
        );
        assert!(e.contains("not a node of this inventory"), "{e}");
    }

    #[test]
    fn addresses_must_mirror_and_subnets_must_not_collide() {
        let e = broken(
            "address = \"192.168.1.1/30\"\npeer = \"machine1\"\npeer-interface = \"enp1s0\"\npeer-address = \"192.168.1.2/30\"",
            "address = \"192.168.1.2/30\"\npeer = \"machine1\"\npeer-interface = \"enp1s0\"\npeer-address = \"192.168.1.1/30\"",
        );
        assert!(e.contains("has addresses"), "{e}");
        let e = broken(
            "peer-address = \"192.168.1.2/30\"",
            "peer-address = \"192.168.1.3/30\"",
        );
        assert!(e.contains("192.168.1.3 is the network or broadcast"), "{e}");
        // machine1 <-> machine2 moved onto machine0 <-> machine1's subnet, on both ends.
        let text = MESH
            .replace("192.168.3.1/30", "192.168.1.5/29")
            .replace("192.168.3.2/30", "192.168.1.6/29");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("/30 or /31"), "{e}");
        let text = MESH
            .replace("192.168.3.1/30", "192.168.1.1/31")
            .replace("192.168.3.2/30", "192.168.1.0/31");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
        let e = broken("192.168.2.1/30\"\npeer", "192.168.2.3/30\"\npeer");
        assert!(e.contains("broadcast"), "{e}");
        let e = broken("192.168.2.1/30\"\npeer", "192.168.3.1/30\"\npeer");
        assert!(e.contains("not in one subnet"), "{e}");
    }

    #[test]
    fn names_macs_and_guids_are_checked() {
        let e = broken(
            "interface = \"enp1s0d1\"\naddress = \"192.168.2.1/30\"",
            "interface = \"enp1s0\"\naddress = \"192.168.2.1/30\"",
        );
        assert!(e.contains("two mesh links"), "{e}");
        let e = broken(
            "priority = 1 }",
            "priority = 1 }\nmac = \"02:00:00:00:00:11\"",
        );
        assert!(e.contains("also node machine1's boot NIC"), "{e}");
        let e = broken("0x248a070300d2c692", "248a070300d2c692");
        assert!(e.contains("ibstat -p"), "{e}");
        let e = broken(
            "peer-address = \"192.168.1.2/30\"\n",
            "peer-address = \"192.168.1.2/30\"\ncolour = \"red\"\n",
        );
        assert!(e.contains("unknown field"), "{e}");
        // The error points at the node's own declaration, not the first mention elsewhere.
        let e = parse(&MESH.replace("priority = 1", "priority = 16")).unwrap_err();
        assert!(e.message.contains("0 to 15"), "{e}");
        assert_eq!(
            e.source_line,
            "opensm = { guid = \"0x248a070300d2c692\", priority = 16 }"
        );
    }
}
