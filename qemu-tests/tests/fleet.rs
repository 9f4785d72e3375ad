//! Tier (c): running the fleet. Three ci-node VMs, booted side by side (one vCPU each) from
//! ironbake's boot server, are rolled from version A to B (one canary, then one at a time),
//! then to C, whose image cannot reach ready: the canary is put back on B and the others never
//! leave B. Then the fleet is powered off through the nodes' agents (each QEMU exits by
//! itself) and on again by Wake-on-LAN. QEMU has no Wake-on-LAN, so this test simulates a NIC
//! in standby: while a VM is off, `wol-standby` holds its tap device and watches for the magic
//! packet to its MAC, and the harness starts the VM when it comes. A second test powers a VM
//! through a real IPMI BMC: QEMU's `ipmi-bmc-extern` device driven by OpenIPMI's `ipmi_sim`,
//! which starts the VM on `power on`, with `ipmitool` run by the boot server.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use ironbake::fleet::{self, Client, PowerRequest, RolloutRequest};
use qemu_tests::deadline;
use qemu_tests::fixture::{fleet_versions, one_at_a_time, test_dir};
use qemu_tests::lan::Lan;
use qemu_tests::qemu::{Nic, Vm, VmConfig, ovmf_retrying};
use qemu_tests::server::Server;

const NODES: [&str; 3] = ["fleet0", "fleet1", "fleet2"];

fn mac(i: usize) -> String {
    format!("52:54:00:00:03:{i:02x}")
}

/// Runs a fleet command as the CLI does, from inside the LAN; `(ok, what it printed)`.
fn run(
    server: &Server,
    f: impl FnOnce(&Client, &mut Vec<u8>) -> anyhow::Result<bool> + Send + 'static,
    dir: &Path,
) -> (bool, String) {
    let client = server.fleet_client(dir).unwrap();
    let (ok, out) = server
        .in_lan(move || {
            let mut out = Vec::new();
            let ok = f(&client, &mut out);
            (ok, String::from_utf8_lossy(&out).into_owned())
        })
        .join()
        .expect("the client thread")
        .expect("joining the LAN");
    let ok = ok.unwrap_or_else(|e| panic!("{e:#}\n{out}"));
    eprintln!("{out}");
    (ok, out)
}

fn rollout_req(version: &str) -> RolloutRequest {
    RolloutRequest {
        recipe: "ci-node".into(),
        version: Some(version.into()),
        nodes: vec![],
        canary: 1,
        max_unavailable: 1,
        timeout_s: 300,
    }
}

fn power_req(action: &str, wait_s: u64) -> PowerRequest {
    PowerRequest {
        action: action.into(),
        nodes: vec![],
        recipe: None,
        all: true,
        wait: Duration::from_secs(wait_s),
    }
}

fn ready_line(node: &str, version: &str) -> String {
    format!("ironbake: {node} ready ci-node@{version} in ")
}

fn fleet_json(server: &Server) -> serde_json::Value {
    serde_json::from_str(&server.get("/api/v1/fleet").unwrap()).unwrap()
}

fn boot_id(fleet: &serde_json::Value, node: &str) -> String {
    fleet
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .map(|n| n["live"]["boot"].as_str().unwrap_or("").to_string())
        .unwrap()
}

#[test]
fn three_nodes_roll_forward_roll_back_power_off_and_wake_on_lan() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let v = fleet_versions();
    let [a, b, c] = v.versions.clone();
    let _one = one_at_a_time();
    let dir = test_dir("fleet");
    let mut inv = String::from(
        "[server]\nname = \"test\"\nwol = { broadcast = \"10.33.0.255\" }\n",
    );
    for (i, n) in NODES.iter().enumerate() {
        inv.push_str(&format!(
            "[nodes.{n}]\nmac = \"{}\"\nrecipe = \"ci-node\"\n",
            mac(i)
        ));
    }
    let inventory = dir.join("inventory.toml");
    std::fs::write(&inventory, inv).unwrap();
    let lan = Lan::new("fleet", &dir).unwrap();
    let server = Server::start(&lan, &v.out, &inventory, &dir).unwrap();
    let cfgs: Vec<VmConfig> = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| VmConfig {
            name: n.to_string(),
            boot: ovmf_retrying(),
            mem_mib: 1024,
            cpus: 1,
            nic: Some(Nic {
                mac: mac(i),
                tap: lan.tap().unwrap(),
            }),
            disks: vec![],
            links: vec![],
        })
        .collect();
    let mut vms: Vec<Vm> = cfgs
        .iter()
        .map(|cfg| Vm::start(&lan.ns, cfg, &dir).unwrap())
        .collect();
    let fail = |e: anyhow::Error, server: &Server| -> ! {
        panic!(
            "{e:#}\n--- server log (last 40 lines) ---\n{}",
            qemu_tests::console::last_lines(&server.log_text(), 40)
        )
    };
    for (n, vm) in NODES.iter().zip(&mut vms) {
        if let Err(e) = vm.wait_line("ready on A", &ready_line(n, &a), deadline::MESH_READY, 0) {
            fail(e, &server);
        }
    }

    // A -> B: every node, one at a time, the canary first.
    let b2 = b.clone();
    let (ok, out) = run(&server, move |c, o| fleet::rollout(c, &rollout_req(&b2), o), &dir);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("succeeded: every node ready on \"{b}\"")), "{out}");
    for (n, vm) in NODES.iter().zip(&mut vms) {
        vm.wait_line("ready on B", &ready_line(n, &b), deadline::REPORT, 0)
            .unwrap();
    }
    let rollouts: serde_json::Value =
        serde_json::from_str(&server.get("/api/v1/rollouts").unwrap()).unwrap();
    let first = &rollouts[0];
    let at = |node: &str, step: &str| -> f64 {
        first["progress"][node]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[1] == step)
            .unwrap_or_else(|| panic!("{node} never {step}: {first:#}"))[0]
            .as_f64()
            .unwrap()
    };
    for w in NODES.windows(2) {
        assert!(
            at(w[0], "ready") <= at(w[1], "rebooting"),
            "{} restarted before {} was ready: {first:#}",
            w[1],
            w[0]
        );
    }

    // B -> C: the canary never gets ready; it goes back to B, the others never move.
    let before = fleet_json(&server);
    let skip = vms[0].console.text().lines().count();
    let c2 = c.clone();
    let (ok, out) = run(&server, move |cl, o| fleet::rollout(cl, &rollout_req(&c2), o), &dir);
    assert!(!ok, "a rollout of C must fail: {out}");
    assert!(out.contains("rollout ") && out.contains(": failed: fleet0: not ready on"), "{out}");
    assert!(out.contains("failed units: ironbake-broken.service"), "{out}");
    assert!(out.contains(&format!("fleet0: reached running {c}")), "{out}");
    assert!(out.contains("| ironbake-broken.service: version C is broken on purpose"), "{out}");
    vms[0]
        .wait_line("fleet0 back on B", &ready_line("fleet0", &b), deadline::REPORT, skip)
        .unwrap();
    let after = fleet_json(&server);
    for n in ["fleet1", "fleet2"] {
        assert_eq!(boot_id(&before, n), boot_id(&after, n), "{n} was restarted");
    }
    assert_ne!(boot_id(&before, "fleet0"), boot_id(&after, "fleet0"));
    let text = vms[0].console.text();
    assert!(
        text.contains(&format!("ironbake: fleet0 boots ci-node@{c}")),
        "fleet0 did boot C"
    );

    // Power off through the agents: every QEMU ends by itself.
    let (ok, out) = run(&server, |c, o| fleet::power(c, &power_req("off", 120), o), &dir);
    assert!(ok, "{out}");
    for (n, vm) in NODES.iter().zip(&mut vms) {
        let status = vm.wait_exit(n, Duration::from_secs(120)).unwrap();
        assert!(status.success(), "{n}: QEMU ended with {status}");
        assert!(vm.console.text().contains("the boot server asked for poweroff"), "{n}");
    }
    // Wake-on-LAN: each tap in standby (simulated), then power on.
    let mut standby: Vec<Child> = cfgs
        .iter()
        .map(|cfg| {
            let nic = cfg.nic.as_ref().unwrap();
            let mut child = lan
                .ns
                .command(env!("CARGO_BIN_EXE_wol-standby"))
                .args([&nic.tap, &nic.mac, "300"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.contains("in standby"), "{line}");
            child
        })
        .collect();
    let client = server.fleet_client(&dir).unwrap();
    let on = server.in_lan(move || {
        let mut out = Vec::new();
        let ok = fleet::power(&client, &power_req("on", 400), &mut out);
        (ok, String::from_utf8_lossy(&out).into_owned())
    });
    for (i, s) in standby.iter_mut().enumerate() {
        let status = s.wait().unwrap();
        assert!(status.success(), "{}: no magic packet came", NODES[i]);
        let mut cfg = cfgs[i].clone();
        cfg.name = format!("{}-woken", NODES[i]);
        vms[i] = Vm::start(&lan.ns, &cfg, &dir).unwrap();
    }
    let (ok, out) = on.join().unwrap().unwrap();
    let ok = ok.unwrap();
    eprintln!("{out}");
    assert!(ok, "{out}");
    for n in NODES {
        assert!(out.contains(&format!("{n:<12} on      wol: Wake-on-LAN magic packet for")), "{out}");
        assert!(out.contains(&format!("{n:<12} seen    up: ready on ci-node@{b}")), "{out}");
    }
}
