//! Tier (c): the homelab's three core nodes, booted at once from `core-node` with the
//! project's own inventory (boot MACs swapped for the VMs'), each with two extra NICs cabled
//! to its peers exactly as the inventory's mesh says. QEMU has no ConnectX-3: the cables are
//! virtio NICs joined by QEMU socket links, renamed `enp1s0`/`enp1s0d1` by the image's link
//! files. Each node reports on its console, once ready, its InfiniBand modules, whether it
//! runs opensm, and whether each peer answers on its /30; the test reads the consoles.

use qemu_tests::deadline;
use qemu_tests::fixture::{core_node, one_at_a_time, test_dir};
use qemu_tests::lan::Lan;
use qemu_tests::mesh::NODES;
use qemu_tests::qemu::{Vm, ovmf};
use qemu_tests::server::Server;

#[test]
fn the_three_core_nodes_boot_and_reach_each_other_over_the_mesh() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = core_node();
    let _one = one_at_a_time();
    let dir = test_dir("mesh");

    let lan = Lan::new("mesh", &dir).unwrap();
    let homelab = qemu_tests::mesh::homelab(&dir, &lan, ovmf(), 2, "").unwrap();
    let mesh = &homelab.links;
    let server = Server::start(&lan, &img.out, &homelab.inventory, &dir).unwrap();
    let mut vms: Vec<(String, Vm)> = NODES
        .iter()
        .zip(&homelab.vms)
        .map(|(name, cfg)| (name.to_string(), Vm::start(&lan.ns, cfg, &dir).unwrap()))
        .collect();

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
