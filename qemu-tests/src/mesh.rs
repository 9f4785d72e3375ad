//! The homelab's three core nodes as VMs: the project's own inventory with the boot MACs
//! swapped for the VMs', and each node's extra NICs cabled to its peers exactly as the
//! inventory's mesh says (QEMU has no ConnectX-3: virtio NICs joined by QEMU socket links,
//! renamed `enp1s0`/`enp1s0d1` by the image's link files). The mesh test and the rollout
//! benchmark boot them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::lan::Lan;
use crate::qemu::{Boot, Cable, Nic, VmConfig};

/// The core nodes.
pub const NODES: [&str; 3] = ["machine0", "machine1", "machine2"];

/// The three nodes, ready to start.
#[derive(Debug)]
pub struct Mesh {
    /// The inventory the server reads (`DIR/inventory.toml`).
    pub inventory: PathBuf,
    /// The project's mesh links, by node.
    pub links: BTreeMap<String, Vec<netboot::mesh::Link>>,
    /// One VM per node, in [`NODES`] order.
    pub vms: Vec<VmConfig>,
}

/// Writes the inventory under `dir` (with `extra` TOML before the nodes, e.g. a `[server]`
/// table) and gives each node a tap of `lan` and its cables.
pub fn homelab(dir: &Path, lan: &Lan, boot: Boot, cpus: u32, extra: &str) -> Result<Mesh> {
    let project = netboot::inventory::load(&crate::project())?;
    let mesh = netboot::mesh::links(&project).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut inv = netboot::inventory::Inventory::default();
    // Each (node, interface) gets a NIC MAC and a UDP port for its end of the cable.
    let mut ends: BTreeMap<(String, String), (String, u16)> = BTreeMap::new();
    for (n, name) in NODES.iter().enumerate() {
        let mut node = project.nodes[*name].clone();
        node.mac = format!("52:54:00:00:01:{n:02x}");
        let mut links = Vec::new();
        for (k, l) in mesh[*name].iter().enumerate() {
            let mut l = l.clone();
            let mac = format!("52:54:00:00:1{n}:{k:02x}");
            l.mac = Some(mac.clone());
            ends.insert(
                (name.to_string(), l.interface.clone()),
                (mac, 40000 + (n * 10 + k) as u16),
            );
            links.push(l);
        }
        node.vars.insert(
            netboot::mesh::VAR.into(),
            toml::Value::try_from(&links).expect("links serialise"),
        );
        inv.nodes.insert(name.to_string(), node);
    }
    let text = format!("{extra}{}", toml::to_string(&inv).expect("serialises"));
    // What the server reads is checked like any inventory (mirrors, subnets, MACs).
    netboot::inventory::parse("inventory.toml", &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let inventory = dir.join("inventory.toml");
    std::fs::write(&inventory, &text)?;
    let mut vms = Vec::new();
    for name in NODES {
        let cables = mesh[name]
            .iter()
            .map(|l| {
                let (mac, port) = ends[&(name.to_string(), l.interface.clone())].clone();
                let (_, peer_port) = ends[&(l.peer.clone(), l.peer_interface.clone())];
                Cable {
                    mac,
                    port,
                    peer_port,
                }
            })
            .collect();
        vms.push(VmConfig {
            name: name.into(),
            boot: boot.clone(),
            mem_mib: 1536,
            cpus,
            nic: Some(Nic {
                mac: inv.nodes[name].mac.clone(),
                tap: lan.tap()?,
            }),
            disks: vec![],
            links: cables,
        });
    }
    Ok(Mesh {
        inventory,
        links: mesh.into_iter().collect(),
        vms,
    })
}
