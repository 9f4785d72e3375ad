//! Tier (c): the homelab's three core nodes, booted at once from `core-node` with the
//! project's own inventory (boot MACs swapped for the VMs'), each with two extra NICs cabled
//! to its peers exactly as the inventory's mesh says. QEMU has no ConnectX-3: the cables are
//! virtio NICs joined by QEMU socket links, renamed `enp1s0`/`enp1s0d1` by the image's link
//! files. Each node reports on its console, once ready, its InfiniBand modules, whether it
//! runs opensm, and whether each peer answers on its /30; the test reads the consoles.

use std::collections::BTreeMap;

use qemu_tests::deadline;
use qemu_tests::fixture::{core_node, one_at_a_time, test_dir};
use qemu_tests::lan::Lan;
use qemu_tests::qemu::{Cable, Nic, Vm, VmConfig, ovmf};
use qemu_tests::server::Server;

const NODES: [&str; 3] = ["machine0", "machine1", "machine2"];

#[test]
fn the_three_core_nodes_boot_and_reach_each_other_over_the_mesh() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = core_node();
    let _one = one_at_a_time();
    let dir = test_dir("mesh");

    // The project's inventory, with the VMs' MAC addresses.
    let project = netboot::inventory::load(&qemu_tests::project()).unwrap();
    let mesh = netboot::mesh::links(&project).unwrap();
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
            toml::Value::try_from(&links).unwrap(),
        );
        inv.nodes.insert(name.to_string(), node);
    }
    let text = toml::to_string(&inv).unwrap();
    // What the server reads is checked like any inventory (mirrors, subnets, MACs).
    netboot::inventory::parse("inventory.toml", &text).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(&inventory, &text).unwrap();

    let lan = Lan::new("mesh", &dir).unwrap();
    let server = Server::start(&lan, &img.out, &inventory, &dir).unwrap();
    let mut vms: Vec<(String, Vm)> = Vec::new();
    for name in NODES {
        let node = &inv.nodes[name];
        let links = mesh[name]
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
        let cfg = VmConfig {
            name: name.into(),
            boot: ovmf(),
            mem_mib: 1536,
            cpus: 2,
            nic: Some(Nic {
                mac: node.mac.clone(),
                tap: lan.tap().unwrap(),
            }),
            disks: vec![],
            links,
        };
        vms.push((name.to_string(), Vm::start(&lan.ns, &cfg, &dir).unwrap()));
    }

    for (name, vm) in &mut vms {
        let ready = format!(
            "ironbake: {name} ready core-node@{} in ",
            img.manifest.version
        );
        if let Err(e) = vm.wait_line("the ready line", &ready, deadline::MESH_READY, 0) {
            panic!(
                "{e:#}\n--- server log (last 30 lines) ---\n{}",
                qemu_tests::console::last_lines(&server.log_text(), 30)
            );
        }
    }
    for (name, vm) in &mut vms {
        let links = &mesh[name.as_str()];
        // Each link's report; the last one comes last.
        let last = &links.last().unwrap().interface;
        vm.wait_line(
            "the mesh report",
            &format!("ironbake: mesh {last} "),
            deadline::MESH_REPORT,
            0,
        )
        .unwrap();
        let console = vm.console.text();
        let line = |prefix: &str| -> String {
            console
                .lines()
                .find(|l| l.contains(prefix))
                .unwrap_or_else(|| panic!("{name}: no {prefix:?} line:\n{}", vm.console.tail(40)))
                .trim()
                .to_string()
        };
        let modules = line("ironbake: infiniband modules loaded:");
        assert!(
            modules.ends_with("loaded: mlx4_core mlx4_en mlx4_ib ib_ipoib ib_umad"),
            "{name}: {modules}"
        );
        let ports: Vec<&str> = links
            .iter()
            .filter_map(|l| l.opensm.as_ref().map(|s| s.guid.as_str()))
            .collect();
        let opensm = line("ironbake: opensm:");
        if ports.is_empty() {
            assert!(
                opensm.ends_with("opensm: off on this node"),
                "{name}: {opensm}"
            );
        } else {
            assert!(
                opensm.contains(&format!(
                    "on for ports {} (opensm.service enabled)",
                    ports.join(" ")
                )),
                "{name}: {opensm}"
            );
        }
        for l in links {
            let peer_ip = l.peer_address.split('/').next().unwrap();
            let report = line(&format!("ironbake: mesh {} ", l.interface));
            let expected = format!(
                "ironbake: mesh {} {} -> {} {} {peer_ip}: reachable (",
                l.interface, l.address, l.peer, l.peer_interface
            );
            assert!(report.contains(&expected), "{name}: {report}");
        }
    }
}
