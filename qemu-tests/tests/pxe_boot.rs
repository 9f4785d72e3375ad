//! Tier (c): the whole network boot chain, with ironbake's boot server as the only source of
//! boot information: OVMF's PXE client -> proxyDHCP -> iPXE over TFTP -> the node's iPXE
//! script over HTTP -> kernel, initramfs and per-node settings -> the image -> systemd -> the
//! ready line. A dnsmasq plays the home router (plain DHCP, no boot options).

use qemu_tests::deadline;
use qemu_tests::fixture::{ci_node, one_at_a_time, test_dir};
use qemu_tests::lan::Lan;
use qemu_tests::qemu::{Nic, Vm, VmConfig, ovmf};
use qemu_tests::server::Server;

#[test]
fn ci_node_pxe_boots_through_the_boot_server_to_ready() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let _one = one_at_a_time();
    let dir = test_dir("pxe-boot");
    let lan = Lan::new("pxe", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.pxe0]\nmac = \"52:54:00:00:00:21\"\nrecipe = \"ci-node\"\n",
    )
    .unwrap();
    let server = Server::start(&lan, &img.out, &inventory, &dir).unwrap();
    let cfg = VmConfig {
        name: "pxe0".into(),
        boot: ovmf(),
        mem_mib: 1536,
        nic: Some(Nic {
            mac: "52:54:00:00:00:21".into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
    };
    let mut vm = Vm::start(&lan.ns, &cfg, &dir).unwrap();
    let expected = format!(
        "ironbake: pxe0 ready {}@{} in ",
        img.manifest.recipe, img.manifest.version
    );
    let waited = vm.wait_line("the ready line", &expected, deadline::PXE_READY, 0);
    if let Err(e) = waited {
        panic!(
            "{e:#}\n--- server log (last 40 lines) ---\n{}",
            tail(&server.log_text(), 40)
        );
    }
    let console = vm.console.text();
    // The chain, in order, as the console shows it.
    let mut at = 0;
    for step in [
        "ironbake: pxe0 boots ci-node@",
        "first stage ci-node@",
        "per-node settings:",
        "root ready: switching to systemd",
        &expected,
    ] {
        let found = console[at..].find(step);
        assert!(
            found.is_some(),
            "{step:?} missing after byte {at} of the console"
        );
        at += found.unwrap();
    }
    // The server saw every stage of this boot, in order, and says so at /api/v1/nodes.
    let report = deadline::REPORT;
    let start = std::time::Instant::now();
    let mut ip: Option<String>;
    let stages = loop {
        let nodes = server.get("/api/v1/nodes").unwrap();
        let v: serde_json::Value = serde_json::from_str(&nodes).unwrap();
        let node = v
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["mac"] == "52:54:00:00:00:21")
            .cloned();
        let stages: Vec<String> = node
            .as_ref()
            .map(|n| {
                n["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["stage"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        ip = node
            .as_ref()
            .and_then(|n| n["ip"].as_str().map(str::to_string));
        if stages.last().map(String::as_str) == Some("ready") || start.elapsed() > report {
            eprintln!("{nodes}");
            break stages;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        stages,
        [
            "dhcp",
            "bootloader",
            "script",
            "kernel",
            "initrd",
            "image",
            "ready"
        ],
        "server log:\n{}",
        tail(&server.log_text(), 40)
    );
    // sshd runs: it starts only with a host key, and the image has none; this one came in the
    // node's settings.
    let ip: std::net::IpAddr = ip.expect("the node's address").parse().unwrap();
    let banner = server.banner((ip, 22).into()).unwrap();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
    let metrics = server.get("/metrics").unwrap();
    assert!(metrics.contains("ironbake_dhcp_replies_total"), "{metrics}");
    assert!(
        !metrics.contains("ironbake_tftp_transfers_total 0\n"),
        "{metrics}"
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
