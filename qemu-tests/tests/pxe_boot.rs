//! Tier (c): the whole network boot chain, with ironbake's boot server as the only source of
//! boot information: OVMF's PXE client -> proxyDHCP -> iPXE over TFTP -> the node's iPXE
//! script over HTTP -> kernel, initramfs and per-node settings -> the image -> systemd -> the
//! ready line. A dnsmasq plays the home router (plain DHCP, no boot options).

use qemu_tests::deadline;
use qemu_tests::fixture::{ci_node, one_at_a_time, test_dir};
use qemu_tests::lan::Lan;
use qemu_tests::qemu::{FIRMWARE_RETRY_LINE, Nic, Vm, VmConfig, ovmf, ovmf_retrying};
use qemu_tests::server::{Process, Server, UNPRIVILEGED};

/// The boot server as `netboot.service` runs it (a user of its own, `CAP_NET_BIND_SERVICE`
/// only), and a node booting through it.
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
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_netboot-under-test"));
    let server = Process::start_unprivileged(program, &lan, &img.out, &inventory, &dir).unwrap();
    assert_least_privilege(server.pid());
    let cfg = VmConfig {
        name: "pxe0".into(),
        boot: ovmf(),
        mem_mib: 1536,
        cpus: 2,
        nic: Some(Nic {
            mac: "52:54:00:00:00:21".into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
        links: vec![],
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
            qemu_tests::console::last_lines(&server.log_text(), 40)
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
        qemu_tests::console::last_lines(&server.log_text(), 40)
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

/// The process `pid` runs as [`UNPRIVILEGED`] with `CAP_NET_BIND_SERVICE` and nothing else,
/// and can gain nothing more.
fn assert_least_privilege(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let id = UNPRIVILEGED.to_string();
    assert_eq!(field("Uid"), [id.as_str(); 4].join(" "), "{status}");
    assert_eq!(field("Gid"), [id.as_str(); 4].join(" "), "{status}");
    assert_eq!(field("Groups"), "", "{status}");
    // CAP_NET_BIND_SERVICE is capability 10.
    for set in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        assert_eq!(field(set), "0000000000000400", "{set}: {status}");
    }
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
}

/// A VM on `lan` that PXE-boots with `mac`.
fn pxe_vm(lan: &Lan, name: &str, mac: &str) -> VmConfig {
    VmConfig {
        name: name.into(),
        boot: ovmf(),
        mem_mib: 1536,
        cpus: 2,
        nic: Some(Nic {
            mac: mac.into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
        links: vec![],
    }
}

/// Waits for `node`'s ready line and returns the version it names.
fn ready_version(vm: &mut Vm, server: &Server, node: &str) -> String {
    let needle = format!("ironbake: {node} ready ci-node@");
    match vm.wait_line("the ready line", &needle, deadline::PXE_READY, 0) {
        Ok((line, _)) => line
            .split("ci-node@")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string(),
        Err(e) => panic!(
            "{e:#}\n--- server log (last 40 lines) ---\n{}",
            qemu_tests::console::last_lines(&server.log_text(), 40)
        ),
    }
}

fn discovered(server: &Server, mac: &str) -> Option<serde_json::Value> {
    let text = server.get("/api/v1/discovered").unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|d| d["mac"] == mac)
        .cloned()
}

#[test]
fn two_nodes_boot_at_once_each_with_its_own_name_and_settings() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let _one = one_at_a_time();
    let dir = test_dir("pxe-two-nodes");
    let lan = Lan::new("pxe2", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.ci0]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"ci-node\"\n\
         [nodes.ci1]\nmac = \"52:54:00:00:00:02\"\nrecipe = \"ci-node\"\n",
    )
    .unwrap();
    let server = Server::start(&lan, &img.out, &inventory, &dir).unwrap();
    let mut a = Vm::start(&lan.ns, &pxe_vm(&lan, "ci0", "52:54:00:00:00:01"), &dir).unwrap();
    let mut b = Vm::start(&lan.ns, &pxe_vm(&lan, "ci1", "52:54:00:00:00:02"), &dir).unwrap();
    assert_eq!(ready_version(&mut a, &server, "ci0"), img.manifest.version);
    assert_eq!(ready_version(&mut b, &server, "ci1"), img.manifest.version);
    // Each got its own settings: its own machine-id and host key, derived from the server's
    // site key (the node's own host key is the one it printed).
    let keys = netboot::fleet::auth::Keys::load(&dir.join("netboot-state")).unwrap();
    let (i0, i1) = (
        netboot::nodes::identity(&keys, "ci0"),
        netboot::nodes::identity(&keys, "ci1"),
    );
    assert_ne!(i0.machine_id, i1.machine_id);
    assert_ne!(i0.host_key, i1.host_key);
    for (vm, id) in [(&a, &i0), (&b, &i1)] {
        let shown = qemu_tests::console::host_key_line(&vm.console.text());
        assert_eq!(
            shown.as_deref(),
            Some(qemu_tests::console::fingerprint(&id.host_key_pub).as_str()),
            "the node's printed host key"
        );
    }
}

#[test]
fn an_unknown_machine_is_discovered_and_boots_the_inventorys_default() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let _one = one_at_a_time();
    let dir = test_dir("pxe-unknown");
    let lan = Lan::new("pxeu", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(&inventory, "[defaults]\nrecipe = \"ci-node\"\n").unwrap();
    let server = Server::start(&lan, &img.out, &inventory, &dir).unwrap();
    let mac = "52:54:00:00:00:99";
    let mut vm = Vm::start(&lan.ns, &pxe_vm(&lan, "unknown", mac), &dir).unwrap();
    assert_eq!(
        ready_version(&mut vm, &server, "node-525400000099"),
        img.manifest.version
    );
    let d = discovered(&server, mac).expect("the machine is listed as discovered");
    assert_eq!(d["arch"], "x64 UEFI", "{d}");
    assert!(
        d["vendor_class"].as_str().unwrap().starts_with("PXEClient"),
        "{d}"
    );
    let log = server.log_text();
    assert_eq!(
        log.matches("unknown machine").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn an_unknown_machine_is_left_alone_until_the_inventory_names_it() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let _one = one_at_a_time();
    let dir = test_dir("pxe-left-alone");
    let lan = Lan::new("pxel", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    // No [defaults] recipe: unknown machines get no answer at all.
    std::fs::write(&inventory, "# the lab\n").unwrap();
    let server = Server::start(&lan, &img.out, &inventory, &dir).unwrap();
    let mac = "52:54:00:00:00:98";
    let mut vm = Vm::start(&lan.ns, &pxe_vm(&lan, "late0", mac), &dir).unwrap();
    let start = std::time::Instant::now();
    while discovered(&server, mac).is_none() {
        assert!(
            start.elapsed() < deadline::FIRST_STAGE,
            "the machine never asked; console:\n{}",
            vm.console.tail(20)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        server.hub.boots().iter().all(|b| b.mac != mac),
        "an unknown machine got an answer"
    );
    // `cargo xtask inventory add` while the firmware is still asking: the server reloads the
    // inventory and the machine boots as the new node.
    let text = std::fs::read_to_string(&inventory).unwrap();
    let new = netboot::inventory::with_node(&text, mac, "late0", Some("ci-node")).unwrap();
    std::fs::write(&inventory, new).unwrap();
    assert_eq!(
        ready_version(&mut vm, &server, "late0"),
        img.manifest.version
    );
}

#[test]
fn upgrade_and_rollback_by_moving_current() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let _one = one_at_a_time();
    let dir = test_dir("pxe-upgrade");
    // Two versions of ci-node in a root of this test's own: the project's, then one with an
    // overlay edited (the package layer comes from the shared cache).
    let root = qemu_tests::project();
    let out = dir.join("out");
    let cache = root.join("target").join("qemu-tests").join("cache");
    let p = ironbake::progress::Progress::new(false);
    let paths = |project: std::path::PathBuf| ironbake::Paths {
        out: out.clone(),
        cache: cache.clone(),
        ..ironbake::Paths::in_project(&project)
    };
    let no = ironbake::BuildOptions::default();
    let v1 = ironbake::build(&paths(root.clone()), "ci-node", &no, &p)
        .unwrap()
        .manifest
        .version;
    let copy = dir.join("project");
    ironbake::project::copy_inputs(&root, &copy).unwrap();
    std::fs::write(
        copy.join("overlays/base/files/etc/ironbake-upgrade-test"),
        "the second version\n",
    )
    .unwrap();
    let v2 = ironbake::build(&paths(copy), "ci-node", &no, &p)
        .unwrap()
        .manifest
        .version;
    assert_ne!(v1, v2);

    let lan = Lan::new("pxeup", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.up0]\nmac = \"52:54:00:00:00:31\"\nrecipe = \"ci-node\"\n",
    )
    .unwrap();
    let server = Server::start(&lan, &out, &inventory, &dir).unwrap();
    let cfg = pxe_vm(&lan, "up0", "52:54:00:00:00:31");
    {
        let mut vm = Vm::start(&lan.ns, &cfg, &dir).unwrap();
        assert_eq!(
            ready_version(&mut vm, &server, "up0"),
            v2,
            "current is the new version"
        );
    }
    // Roll back: point current at the old version, power-cycle the node.
    ironbake::publish::set_current(&out, "ci-node", &v1).unwrap();
    let mut vm = Vm::start(&lan.ns, &cfg, &dir).unwrap();
    assert_eq!(
        ready_version(&mut vm, &server, "up0"),
        v1,
        "after the rollback"
    );
}

#[test]
fn a_node_powered_on_before_the_server_keeps_trying_and_boots_when_it_starts() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let _one = one_at_a_time();
    let dir = test_dir("pxe-server-late");
    let lan = Lan::new("pxelate", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    let mac = "52:54:00:00:00:41";
    std::fs::write(
        &inventory,
        format!("[nodes.late1]\nmac = \"{mac}\"\nrecipe = \"ci-node\"\n"),
    )
    .unwrap();
    // The power comes back: the router and the node start, the boot server is not up yet.
    let cfg = VmConfig {
        boot: ovmf_retrying(),
        ..pxe_vm(&lan, "late1", mac)
    };
    let mut vm = Vm::start(&lan.ns, &cfg, &dir).unwrap();
    // The firmware asks, the router gives it an address but nobody a boot file ...
    let (_, no_offer) = vm
        .wait_line(
            "the firmware's PXE failing",
            "PXE-E16",
            deadline::FIRMWARE_PASS,
            0,
        )
        .unwrap();
    // ... it goes through its other boot options and starts over.
    let (_, retried) = vm
        .wait_line(
            "the firmware starting over",
            FIRMWARE_RETRY_LINE,
            deadline::FIRMWARE_PASS,
            no_offer,
        )
        .unwrap();
    let router = std::fs::read_to_string(dir.join("router-dnsmasq.log")).unwrap();
    assert!(
        router
            .lines()
            .any(|l| l.contains("DHCPOFFER(eth0) ") && l.contains(mac)),
        "the router offered the node an address while the server was down:\n{router}"
    );
    // The boot server comes up now; the node's next pass finds it.
    let server = Server::start(&lan, &img.out, &inventory, &dir).unwrap();
    let (line, _) = vm
        .wait_line(
            "the ready line",
            "ironbake: late1 ready ci-node@",
            deadline::FIRMWARE_PASS + deadline::PXE_READY,
            retried,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n--- server log (last 40 lines) ---\n{}",
                qemu_tests::console::last_lines(&server.log_text(), 40)
            )
        });
    assert!(line.contains(&img.manifest.version), "{line}");
    let start = std::time::Instant::now();
    while !server.hub.boots().iter().any(|b| {
        b.mac == mac
            && b.stages
                .iter()
                .any(|s| s.stage == netboot::hub::Stage::Ready)
    }) {
        assert!(
            start.elapsed() < deadline::REPORT,
            "the server never heard the ready report"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
