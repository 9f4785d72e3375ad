//! ironbake's pipeline: recipes and overlays in, versioned, reproducible images out.
//!
//! The `cargo xtask` binary is a shim over [`cli`]. Pure modules (no IO): [`recipe`] parsing,
//! [`plan`], [`users`], [`template`], [`diag`]. Modules that touch the world: [`exec`] (the only
//! one that starts processes), [`base`], [`artifact`], [`apt`], [`publish`], [`pipeline`].

pub use netboot::{cpio, diag, inventory, mesh, template};

pub mod apt;
pub mod artifact;
pub mod base;
pub mod bench;
pub mod cli;
pub mod debfetch;
pub mod disk;
pub mod exec;
pub mod flash;
pub mod host;
pub mod initramfs;
pub mod ipxe;
pub mod overlay;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod recipe;
pub mod uki;
pub mod users;

#[cfg(test)]
mod project_inventory {
    /// The project's `inventory.toml` describes the homelab's mesh exactly as its connection
    /// table does (README.md), and it is consistent (checked when it is read).
    #[test]
    fn the_mesh_is_the_homelabs_connection_table() {
        let inv = crate::inventory::load(&crate::cli::project_root()).expect("inventory.toml");
        let links = crate::mesh::links(&inv).unwrap();
        let mut rows: Vec<String> = links
            .iter()
            .flat_map(|(node, ls)| {
                ls.iter().map(move |l| {
                    format!(
                        "{node} {} {} -> {} {} {}",
                        l.interface, l.address, l.peer, l.peer_interface, l.peer_address
                    )
                })
            })
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                "machine0 enp1s0 192.168.1.1/30 -> machine1 enp1s0 192.168.1.2/30",
                "machine0 enp1s0d1 192.168.2.1/30 -> machine2 enp1s0 192.168.2.2/30",
                "machine1 enp1s0 192.168.1.2/30 -> machine0 enp1s0 192.168.1.1/30",
                "machine1 enp1s0d1 192.168.3.1/30 -> machine2 enp1s0d1 192.168.3.2/30",
                "machine2 enp1s0 192.168.2.2/30 -> machine0 enp1s0d1 192.168.2.1/30",
                "machine2 enp1s0d1 192.168.3.2/30 -> machine1 enp1s0d1 192.168.3.1/30",
            ]
        );
        // Every link has a subnet manager on one of its ends, for InfiniBand mode.
        for (node, ls) in &links {
            for l in ls {
                let theirs = links[&l.peer]
                    .iter()
                    .find(|p| p.interface == l.peer_interface)
                    .unwrap();
                assert!(
                    l.opensm.is_some() ^ theirs.opensm.is_some(),
                    "{node} {}: one end runs opensm",
                    l.interface
                );
            }
        }
        assert_eq!(inv.nodes["k3s0"].recipe, "k3s-node");
        assert_eq!(inv.server.as_ref().unwrap().name, "raspi");
    }
}
