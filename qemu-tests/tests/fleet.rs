//! Tier (c): running the fleet. Three ci-node VMs, booted side by side from
//! ironbake's boot server, are rolled from version A to B (one canary, then one at a time),
//! then to C, whose image cannot reach ready: the canary is put back on B and the others never
//! leave B. Then the fleet is powered off through the nodes' agents (each QEMU exits by
//! itself) and on again by Wake-on-LAN. QEMU has no Wake-on-LAN, so this test simulates a NIC
//! in standby: while a VM is off, `qemu_tests::wol` holds its tap device and watches for the magic
//! packet to its MAC, and the harness starts the VM when it comes. A second test powers a VM
//! through a real IPMI BMC: QEMU's `ipmi-bmc-extern` device driven by OpenIPMI's `ipmi_sim`,
//! which starts the VM on `power on`, with `ipmitool` run by the boot server.

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
        // Generous: under TCG a restart takes minutes on a busy machine.
        timeout_s: 600,
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
    let mut inv =
        String::from("[server]\nname = \"test\"\nwol = { broadcast = \"10.33.0.255\" }\n");
    // fleet0 and fleet1 keep their persisted folders on a data disk of their own (blank: the
    // first boot makes the partition); fleet2's disk holds someone else's filesystem, which
    // it must leave alone.
    let data_disks: Vec<Option<std::path::PathBuf>> = (0..NODES.len())
        .map(|i| Some(dir.join(format!("{}-data.disk", NODES[i]))))
        .collect();
    for (i, n) in NODES.iter().enumerate() {
        inv.push_str(&format!(
            "[nodes.{n}]\nmac = \"{}\"\nrecipe = \"ci-node\"\n",
            mac(i)
        ));
        if let Some(d) = &data_disks[i] {
            std::fs::File::create(d)
                .and_then(|f| f.set_len(256 << 20))
                .unwrap();
            inv.push_str(&format!(
                "data = {{ disk = \"/dev/disk/by-id/virtio-{}\" }}\n",
                qemu_tests::qemu::serial_of(d)
            ));
        }
    }
    let theirs = data_disks[2].clone().unwrap();
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "theirs"])
        .arg(&theirs)
        .status()
        .unwrap();
    assert!(made.success());
    let theirs_before = std::fs::read(&theirs).unwrap();
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
            // Two: a node restarting alone gets both cores (under TCG, OVMF alone on one vCPU
            // beside busy neighbours took minutes from reset to its first DHCP request).
            cpus: 2,
            nic: Some(Nic {
                mac: mac(i),
                tap: lan.tap().unwrap(),
            }),
            disks: data_disks[i].iter().cloned().collect(),
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

    server
        .wait_agents(&NODES, &a, Duration::from_secs(120))
        .unwrap();
    // Persisted folders: on fleet0 and fleet1, a data partition made on the blank disk, each
    // folder with the image's contents; fleet2 ready all the same, saying what is in RAM.
    let [etc, var] = qemu_tests::fixture::PERSIST_CHECK;
    let check = |vm: &mut Vm, n: &str, dir: &str, want: &str, skip: usize| {
        let needle = format!("ironbake-check: {dir}: {want}|");
        vm.wait_line(
            &format!("{n}: {dir} holds {want}"),
            &needle,
            deadline::REPORT,
            skip,
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
        .0
    };
    for (n, vm) in NODES.iter().zip(&mut vms).take(2) {
        // (vdb: the retrying firmware's own small disk is vda.)
        let made = format!(
            "ironbake: data partition /dev/vdb1 (ironbake-data on /dev/disk/by-id/virtio-{n}-data): made on this boot"
        );
        assert!(vm.console.text().contains(&made), "{n}: no {made:?}");
        assert!(check(vm, n, etc, &format!("{a} "), 0).ends_with("| from-image versions"));
        check(vm, n, var, &format!("{a} "), 0);
    }
    let fleet2 = vms[2].console.text();
    assert!(
        fleet2.contains(&format!(
            "ironbake: not persisted (/dev/disk/by-id/virtio-fleet2-data holds other data: a \
             filesystem or volume (ext4) on the whole disk; name a blank disk, or free space on \
             an ironbake one): {etc} {var}"
        )),
        "fleet2 does not say what is in RAM"
    );
    assert!(
        std::fs::read(&theirs).unwrap() == theirs_before,
        "fleet2 wrote to a disk holding another filesystem"
    );
    let status = fleet_json(&server);
    let said = |node: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap()["live"]["not_persisted"]
            .clone()
    };
    assert_eq!(said("fleet2"), serde_json::json!([etc, var]), "{status:#}");
    assert_eq!(said("fleet0"), serde_json::json!([]), "{status:#}");
    let skips: Vec<usize> = vms.iter().map(|vm| vm.console.line_count()).collect();

    // A -> B: every node, one at a time, the canary first.
    let b2 = b.clone();
    let (ok, out) = run(
        &server,
        move |c, o| fleet::rollout(c, &rollout_req(&b2), o),
        &dir,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("succeeded: every node ready on {b}")),
        "{out}"
    );
    for (n, vm) in NODES.iter().zip(&mut vms) {
        vm.wait_line("ready on B", &ready_line(n, &b), deadline::REPORT, 0)
            .unwrap();
    }
    // The folders outlived the reboot into B.
    for (i, (n, vm)) in NODES.iter().zip(&mut vms).enumerate().take(2) {
        check(vm, n, var, &format!("{a} {b} "), skips[i]);
        check(vm, n, etc, &format!("{a} {b} "), skips[i]);
        assert!(
            vm.console.text().contains(&format!(
                "ironbake: data partition /dev/vdb1 (ironbake-data on /dev/disk/by-id/virtio-{n}-data): kept"
            )),
            "{n}: its data partition was not kept"
        );
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

    server
        .wait_agents(&NODES, &b, Duration::from_secs(120))
        .unwrap();

    // B -> C: the canary never gets ready; it goes back to B, the others never move.
    let before = fleet_json(&server);
    let skip = vms[0].console.line_count();
    let c2 = c.clone();
    let (ok, out) = run(
        &server,
        move |cl, o| fleet::rollout(cl, &rollout_req(&c2), o),
        &dir,
    );
    assert!(!ok, "a rollout of C must fail: {out}");
    assert!(
        out.contains("rollout ") && out.contains(": failed: fleet0: not ready on"),
        "{out}"
    );
    assert!(
        out.contains("failed units: ironbake-broken.service"),
        "{out}"
    );
    assert!(
        out.contains(&format!("fleet0: reached running {c}")),
        "{out}"
    );
    assert!(
        out.contains("| ironbake-broken.service: version C is broken on purpose"),
        "{out}"
    );
    vms[0]
        .wait_line(
            "fleet0 back on B",
            &ready_line("fleet0", &b),
            deadline::REPORT,
            skip,
        )
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
    // And the rollback back to B: every version it booted is still there.
    check(
        &mut vms[0],
        "fleet0",
        var,
        &format!("{a} {b} {c} {b} "),
        skip,
    );
    check(
        &mut vms[0],
        "fleet0",
        etc,
        &format!("{a} {b} {c} {b} "),
        skip,
    );

    server
        .wait_agents(&NODES, &b, Duration::from_secs(120))
        .unwrap();

    // Another machine on the LAN (a namespace of its own on the bridge) can neither fetch a
    // node's settings (its key is in them) nor pass a forged ready report.
    let intruder = qemu_tests::netns::Netns::new("intruder").unwrap();
    let ipc = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ipc(&[
        "link",
        "add",
        "vi0",
        "netns",
        lan.ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        intruder.name(),
    ]);
    ipc(&["-n", lan.ns.name(), "link", "set", "vi0", "master", "br0"]);
    ipc(&["-n", lan.ns.name(), "link", "set", "vi0", "up"]);
    ipc(&[
        "-n",
        intruder.name(),
        "addr",
        "add",
        "10.33.0.50/24",
        "dev",
        "eth0",
    ]);
    ipc(&["-n", intruder.name(), "link", "set", "eth0", "up"]);
    let curl = |args: &[&str]| -> String {
        let out = intruder
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!(
        "http://{}:{}",
        qemu_tests::lan::SERVER_IP,
        qemu_tests::server::HTTP_PORT
    );
    assert_eq!(
        curl(&[&format!("{base}/nodes/{}/settings.img", mac(1))]),
        "403"
    );
    let forged = format!(
        "node=fleet1\nnonce=0\nkind=ready\nboot=x\nrecipe=ci-node\nversion={c}\nready=yes\n"
    );
    assert_eq!(
        curl(&["--data-binary", &forged, &format!("{base}/api/v1/ready")]),
        "401"
    );
    assert_eq!(
        curl(&[
            "-X",
            "POST",
            "--data",
            "{\"action\":\"off\",\"all\":true}",
            &format!("{base}/api/v1/power")
        ]),
        "401"
    );
    drop(intruder);

    // Power off through the agents: every QEMU ends by itself.
    let (ok, out) = run(
        &server,
        |c, o| fleet::power(c, &power_req("off", 120), o),
        &dir,
    );
    assert!(ok, "{out}");
    for (n, vm) in NODES.iter().zip(&mut vms) {
        let status = vm.wait_exit(n, Duration::from_secs(120)).unwrap();
        assert!(status.success(), "{n}: QEMU ended with {status}");
        assert!(
            vm.console
                .text()
                .contains("the boot server asked for poweroff"),
            "{n}"
        );
    }
    // Wake-on-LAN for two of them (the third stays off: a boot fewer under TCG): each tap in
    // standby (simulated), then power on.
    const WOKEN: [&str; 2] = ["fleet0", "fleet1"];
    let standby: Vec<_> = cfgs[..WOKEN.len()]
        .iter()
        .map(|cfg| {
            let nic = cfg.nic.as_ref().unwrap();
            qemu_tests::wol::standby(&lan.ns, &nic.tap, &nic.mac, Duration::from_secs(300)).unwrap()
        })
        .collect();
    // The third one's tap also hears every magic packet (they are broadcast), and none is
    // its own.
    let third = cfgs[2].nic.as_ref().unwrap();
    let asleep =
        qemu_tests::wol::standby(&lan.ns, &third.tap, &third.mac, Duration::from_secs(30)).unwrap();
    let client = server.fleet_client(&dir).unwrap();
    let on = server.in_lan(move || {
        let mut out = Vec::new();
        let req = PowerRequest {
            nodes: WOKEN.iter().map(|n| n.to_string()).collect(),
            all: false,
            ..power_req("on", 400)
        };
        let ok = fleet::power(&client, &req, &mut out);
        (ok, String::from_utf8_lossy(&out).into_owned())
    });
    for (i, s) in standby.into_iter().enumerate() {
        s.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e:#}", WOKEN[i]));
        let mut cfg = cfgs[i].clone();
        cfg.name = format!("{}-woken", WOKEN[i]);
        vms[i] = Vm::start(&lan.ns, &cfg, &dir).unwrap();
    }
    let stayed = asleep.join().unwrap().unwrap_err().to_string();
    assert!(stayed.contains("no magic packet"), "{stayed}");
    let (ok, out) = on.join().unwrap().unwrap();
    let ok = ok.unwrap();
    eprintln!("{out}");
    assert!(ok, "{out}");
    assert!(!out.contains("fleet2"), "{out}");
    for n in WOKEN {
        assert!(
            out.contains(&format!(
                "{n:<12} on      wol: Wake-on-LAN magic packet for"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("{n:<12} seen    up: ready on ci-node@{b}")),
            "{out}"
        );
    }
}

/// OpenIPMI's BMC simulator, as the BMC of one VM: it starts the VM (its `startcmd`) on
/// `power on`, and its LAN channel answers `ipmitool -I lanplus` on the namespace's loopback.
/// Killed, with the VM, on drop.
struct Bmc {
    sim: Child,
    pidfile: std::path::PathBuf,
}

impl Bmc {
    /// ipmi_sim for the VM `cfg`, its LAN channel at 127.0.0.1:`port`, the VM's BMC socket
    /// at `port`+1; files in `dir`.
    fn start(lan: &Lan, cfg: &VmConfig, dir: &Path, port: u16, password: &str) -> Bmc {
        let log = dir.join(format!("{}.console.log", cfg.name));
        std::fs::write(&log, "").unwrap();
        let mut qemu = std::process::Command::new("qemu-system-x86_64");
        Vm::arguments(&mut qemu, cfg, dir, &log).unwrap();
        let pidfile = dir.join(format!("{}.qemu.pid", cfg.name));
        let mut words: Vec<String> = qemu
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        words.extend([
            // The BMC's side of the VM: an IPMI BT interface whose BMC is external,
            // reached over a socket that ipmi_sim listens on.
            "-chardev".to_string(),
            format!(
                "socket,id=ipmi0,host=127.0.0.1,port={},reconnect=10",
                port + 1
            ),
            "-device".into(),
            "ipmi-bmc-extern,id=bmc0,chardev=ipmi0".into(),
            "-device".into(),
            "isa-ipmi-bt,bmc=bmc0".into(),
            // ipmi_sim does not stop the VM when it ends itself: the harness does, by pid.
            "-pidfile".into(),
            pidfile.display().to_string(),
        ]);
        let quoted: Vec<String> = words
            .iter()
            .map(|w| {
                assert!(!w.contains('\''), "{w}");
                format!("'{w}'")
            })
            .collect();
        let start = dir.join(format!("{}.start-vm", cfg.name));
        std::fs::write(
            &start,
            format!(
                "#!/bin/sh\n# What ipmi_sim runs to power the VM on.\nexec qemu-system-x86_64 {} 2>>'{}'\n",
                quoted.join(" "),
                dir.join(format!("{}.qemu.err", cfg.name)).display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).unwrap();
        // lanplus needs a GUID; the user is the one secrets.toml gives the boot server.
        let conf = dir.join("ipmi_sim.lan.conf");
        std::fs::write(
            &conf,
            format!(
                "name \"{name}\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    \
                 priv_limit admin\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  \
                 serial 15 127.0.0.1 {vm_port} codec VM\n  startcmd \"{start}\"\n  startnow false\n  \
                 poweroff_wait 20\n  kill_wait 5\n  user 2 true \"admin\" \"{password}\" admin 10 md5\n",
                name = cfg.name,
                vm_port = port + 1,
                start = start.display()
            ),
        )
        .unwrap();
        // The smallest emulated BMC: one management controller at 0x20.
        let emu = dir.join("ipmi_sim.emu");
        std::fs::write(
            &emu,
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
        )
        .unwrap();
        let sim = lan
            .ns
            .command("ipmi_sim")
            .arg("-c")
            .arg(&conf)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(dir.join("ipmi_sim.state"))
            // -n: no console on stdin; -p: persist nothing.
            .args(["-n", "-p"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("ipmi_sim.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("ipmi_sim.err")).unwrap())
            .spawn()
            .expect("starting ipmi_sim");
        Bmc { sim, pidfile }
    }

    /// The VM's QEMU, if it runs.
    fn vm_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        if let Some(pid) = self.vm_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.sim.kill();
        let _ = self.sim.wait();
    }
}

#[test]
fn a_node_with_a_bmc_is_powered_on_and_off_through_ipmi() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let v = fleet_versions();
    let a = v.versions[0].clone();
    let _one = one_at_a_time();
    let dir = test_dir("fleet-ipmi");
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.bmc0]\nmac = \"52:54:00:00:03:10\"\nrecipe = \"ci-node\"\n\
         bmc = { address = \"127.0.0.1\", port = 9001 }\n",
    )
    .unwrap();
    let password = format!("pw{}", std::process::id());
    let secrets = dir.join("secrets.toml");
    std::fs::write(
        &secrets,
        format!("[bmc.bmc0]\nusername = \"admin\"\npassword = \"{password}\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lan = Lan::new("ipmi", &dir).unwrap();
    let server = Server::start(&lan, &v.out, &inventory, &dir).unwrap();
    let cfg = VmConfig {
        name: "bmc0".into(),
        boot: ovmf_retrying(),
        mem_mib: 1024,
        cpus: 2,
        nic: Some(Nic {
            mac: "52:54:00:00:03:10".into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
        links: vec![],
    };
    let bmc = Bmc::start(&lan, &cfg, &dir, 9001, &password);
    let node = |action: &str, wait: u64| PowerRequest {
        action: action.into(),
        nodes: vec!["bmc0".into()],
        recipe: None,
        all: false,
        wait: Duration::from_secs(wait),
    };
    // The BMC answers (it may take a moment to listen), and the machine is off.
    let mut status = (false, String::new());
    for _ in 0..20 {
        let r = node("status", 0);
        status = run(&server, move |c, o| fleet::power(c, &r, o), &dir);
        if status.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        status.0 && status.1.contains("BMC: power off"),
        "{}",
        status.1
    );
    assert!(bmc.vm_pid().is_none());

    // On: ipmitool through the server; ipmi_sim starts the VM, which boots to ready.
    let r = node("on", 400);
    let (ok, out) = run(&server, move |c, o| fleet::power(c, &r, o), &dir);
    assert!(
        ok,
        "{out}\n{}",
        qemu_tests::console::last_lines(&server.log_text(), 30)
    );
    assert!(
        out.contains("bmc0         on      ipmi: Chassis Power Control: Up/On"),
        "{out}"
    );
    assert!(
        out.contains(&format!("seen    up: ready on ci-node@{a}")),
        "{out}"
    );
    let r = node("status", 0);
    let (_, out) = run(&server, move |c, o| fleet::power(c, &r, o), &dir);
    assert!(out.contains("BMC: power on"), "{out}");
    server
        .wait_agents(&["bmc0"], &a, Duration::from_secs(120))
        .unwrap();

    // Off: the agent shuts the node down cleanly; the BMC sees the power go.
    let r = node("off", 120);
    let (ok, out) = run(&server, move |c, o| fleet::power(c, &r, o), &dir);
    assert!(ok, "{out}");
    assert!(out.contains("agent: asked its agent to poweroff"), "{out}");
    assert!(
        out.contains("seen    off: its BMC says power is off"),
        "{out}"
    );
    let console = std::fs::read_to_string(dir.join("bmc0.console.log")).unwrap();
    assert!(
        console.contains("the boot server asked for poweroff"),
        "{console}"
    );
    assert!(bmc.vm_pid().is_none(), "QEMU still runs");
}

/// Redfish against a real Redfish service: sushy-tools' emulator inside the LAN's namespace.
/// Its fake driver is a simulation of the machines behind the BMC (each system is a power
/// state the emulator keeps, changed 1 to 11 s after it is asked; no VM runs), so no node
/// boots here: what is checked is the boot server's Redfish client against the emulator's
/// routes, actions, HTTPS and logins. The IPMI test above powers a real VM.
#[test]
fn nodes_with_a_redfish_bmc_are_switched_over_https() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let dir = test_dir("fleet-redfish");
    let lan = Lan::new("redfish", &dir).unwrap();
    let stamp = std::process::id();
    let systems: Vec<qemu_tests::redfish::System> = (0..2)
        .map(|i| qemu_tests::redfish::System {
            uuid: format!("{stamp:08x}-0ecb-4000-8000-00000000000{i}"),
            name: format!("machine{i}"),
        })
        .collect();
    let password = format!("rf{stamp}");
    let emu =
        qemu_tests::redfish::Emulator::start(&lan.ns, &dir, 8443, "admin", &password, &systems)
            .unwrap();
    // A certificate the BMC does not have, for the node that trusts the wrong one.
    let (other, _) = qemu_tests::redfish::certificate(&dir, "not-the-bmc").unwrap();
    let bmc = |system: Option<&str>, ca: &Path| {
        format!(
            "bmc = {{ kind = \"redfish\", address = \"127.0.0.1\", port = 8443{}, ca = \"{}\" }}",
            system
                .map(|s| format!(", system = \"{s}\""))
                .unwrap_or_default(),
            ca.display()
        )
    };
    let nodes = [
        ("rf0", bmc(Some(&systems[0].uuid), &emu.cert)),
        ("rf1", bmc(Some(&systems[1].uuid), &emu.cert)),
        ("rf-wrong-ca", bmc(Some(&systems[0].uuid), &other)),
        ("rf-wrong-pw", bmc(Some(&systems[0].uuid), &emu.cert)),
        ("rf-which", bmc(None, &emu.cert)),
    ];
    let mut inv = String::new();
    let mut secrets = String::new();
    for (i, (n, b)) in nodes.iter().enumerate() {
        inv +=
            &format!("[nodes.{n}]\nmac = \"52:54:00:00:05:{i:02x}\"\nrecipe = \"ci-node\"\n{b}\n");
        let pw = if *n == "rf-wrong-pw" {
            "not-it"
        } else {
            &password
        };
        secrets += &format!("[bmc.{n}]\nusername = \"admin\"\npassword = \"{pw}\"\n");
    }
    let inventory = dir.join("inventory.toml");
    std::fs::write(&inventory, inv).unwrap();
    let secrets_file = dir.join("secrets.toml");
    std::fs::write(&secrets_file, secrets).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Nothing is published: power needs the inventory, not images.
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let server = Server::start(&lan, &out, &inventory, &dir).unwrap();
    let req = |action: &str, nodes: &[&str], wait: u64| PowerRequest {
        action: action.into(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        recipe: None,
        all: false,
        wait: Duration::from_secs(wait),
    };
    let power = |action: &str, nodes: &[&str], wait: u64| {
        let r = req(action, nodes, wait);
        run(&server, move |c, o| fleet::power(c, &r, o), &dir)
    };
    let path = |i: usize| format!("/redfish/v1/Systems/{}", systems[i].uuid);
    // The power state of rf0, polled until it reads `want` (the fake driver's delay).
    let settles = |want: &str| {
        let t0 = std::time::Instant::now();
        loop {
            let (ok, out) = power("status", &["rf0"], 0);
            if ok && out.contains(&format!("{}: PowerState {want}", path(0))) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "rf0 not {want} within 60 s:\n{out}\n{}",
                emu.log_text()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };

    let (ok, out) = power("status", &["rf0", "rf1"], 0);
    assert!(ok, "{out}");
    for (i, n) in ["rf0", "rf1"].iter().enumerate() {
        assert!(
            out.contains(&format!(
                "{n:<12} status  redfish: {}: PowerState Off",
                path(i)
            )),
            "{out}"
        );
    }
    assert_eq!(out.matches("seen    BMC: power off").count(), 2, "{out}");

    // On: ComputerSystem.Reset On, without waiting (no node boots behind the fake driver, so
    // none would report ready).
    let (ok, out) = power("on", &["rf0"], 0);
    assert!(
        out.contains(&format!(
            "rf0          on      redfish: {}: ResetType On accepted (HTTP 204; PowerState was Off)",
            path(0)
        )),
        "{out}"
    );
    assert!(ok && !out.contains("seen"), "{out}");
    eprintln!("rf0 read On {:?} after the request", settles("On"));
    let (_, out) = power("on", &["rf0"], 0);
    assert!(
        out.contains("PowerState On already, nothing to do"),
        "{out}"
    );
    let (ok, out) = power("status", &["rf1"], 0);
    assert!(
        ok && out.contains("PowerState Off"),
        "the other system did not move: {out}"
    );

    // Reboot with no agent to ask: the BMC restarts it (ForceRestart).
    let (ok, out) = power("reboot", &["rf0"], 0);
    assert!(
        out.contains(&format!(
            "rf0          reboot  redfish: {}: ResetType ForceRestart accepted",
            path(0)
        )),
        "{ok} {out}"
    );
    settles("On");
    // Off with no agent: GracefulShutdown, and the command waits until the BMC reads Off.
    let (ok, out) = power("off", &["rf0"], 60);
    assert!(ok, "{out}\n{}", emu.log_text());
    assert!(
        out.contains("ResetType GracefulShutdown accepted")
            && out.contains("rf0          seen    off: its BMC says power is off"),
        "{out}"
    );
    // The emulator's own access log: three resets of rf0's system, none of rf1's.
    let log = emu.log_text();
    let resets = |i: usize| {
        log.matches(&format!(
            "POST {}/Actions/ComputerSystem.Reset HTTP/1.1",
            path(i)
        ))
        .count()
    };
    assert_eq!((resets(0), resets(1)), (3, 0), "{log}");

    // Mistakes are named, and nothing is switched.
    let (ok, out) = power("status", &["rf-wrong-ca", "rf-wrong-pw", "rf-which"], 0);
    assert!(!ok, "{out}");
    assert!(
        out.contains("rf-wrong-ca  status  redfish: GET https://127.0.0.1:8443")
            && out.contains("TLS: io: invalid peer certificate: UnknownIssuer")
            && out.contains("as bmc.ca in the inventory"),
        "{out}"
    );
    assert!(
        out.contains("HTTP 401: the BMC refused the login (check [bmc.NODE] in secrets.toml)"),
        "{out}"
    );
    assert!(
        out.contains("has 2 systems") && out.contains("name one as bmc.system"),
        "{out}"
    );
    let (_, out) = power("on", &["rf-wrong-pw"], 0);
    assert!(out.contains("refused the login"), "{out}");
    let (ok, out) = power("status", &["rf0"], 0);
    assert!(ok && out.contains("PowerState Off"), "{out}");
    assert_eq!(
        emu.log_text()
            .matches("Actions/ComputerSystem.Reset")
            .count(),
        3
    );
}

/// A machine on the LAN (the router's namespace) asks to boot with markup for its vendor
/// class and host name: the page must show both as text.
fn hostile_discover(lan: &Lan, mac: [u8; 6]) {
    use netboot::dhcp::{MessageType, Options, Packet, opt};
    let ns = format!("/run/netns/{}", lan.router().name());
    std::thread::spawn(move || {
        let f = std::fs::File::open(ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        let mut o = Options::default();
        o.set(opt::MESSAGE_TYPE, [MessageType::Discover.code()]);
        o.set(opt::VENDOR_CLASS, HOSTILE_VENDOR.as_bytes());
        o.set(opt::HOST_NAME, HOSTILE_HOST.as_bytes());
        o.set(opt::CLIENT_ARCH, [0, 7]);
        let p = Packet {
            op: 1,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0x1bad,
            secs: 0,
            flags: 0x8000,
            ciaddr: std::net::Ipv4Addr::UNSPECIFIED,
            yiaddr: std::net::Ipv4Addr::UNSPECIFIED,
            siaddr: std::net::Ipv4Addr::UNSPECIFIED,
            giaddr: std::net::Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options: o,
        };
        let s = std::net::UdpSocket::bind("0.0.0.0:68").unwrap();
        s.set_broadcast(true).unwrap();
        // The subnet's broadcast: the router's namespace has no default route.
        s.send_to(&p.to_bytes(), "10.33.0.255:67").unwrap();
    })
    .join()
    .unwrap();
}

const HOSTILE_VENDOR: &str = "PXEClient:Arch:00007:<img src=x onerror=\"window.__pwned=1\">";
const HOSTILE_HOST: &str = "<script>window.__pwned=2</script>";

/// The text of the first element matching `css`, read in one script call (the page swaps
/// its live part in at any moment: a found element may be gone by the next command).
async fn text_of(c: &qemu_tests::browser::Client, css: &str) -> anyhow::Result<String> {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); \
             return e ? e.textContent.trim() : null;",
            vec![serde_json::json!(css)],
        )
        .await?;
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no element {css} on the page"))
}

/// What the page's row for `node` says: `(state, running version, power)`.
async fn row(c: &qemu_tests::browser::Client, node: &str) -> anyhow::Result<[String; 3]> {
    let mut out: [String; 3] = Default::default();
    for (i, part) in ["state", "running", "power"].iter().enumerate() {
        out[i] = text_of(c, &format!("#node-{node} .{part}")).await?;
    }
    Ok(out)
}

/// Clicks `#node-NODE button[data-power=off]`, accepts the page's confirm() and waits for
/// the notice; its text.
async fn power_off_from_the_page(
    c: &qemu_tests::browser::Client,
    node: &str,
) -> anyhow::Result<String> {
    use fantoccini::Locator;
    let css = format!("#node-{node} button[data-power=\"off\"]");
    // The button may be swapped for a new one between finding and clicking it: try again.
    let mut tries = 0;
    loop {
        let clicked = match c.find(Locator::Css(&css)).await {
            Ok(b) => b.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => break,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("clicking {css} again: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    c.accept_alert().await?;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = text_of(c, "#notice").await?;
        if !text.is_empty() {
            return Ok(text);
        }
        anyhow::ensure!(std::time::Instant::now() < end, "no notice after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fleet page in a real browser (Debian's headless Chromium over WebDriver) while a node
/// boots: its row shows the stages advancing and then ready with the version; a hostile
/// discovered machine is shown as text; a real Prometheus, given only the boot server's
/// service discovery URL, scrapes the node's exporter; then the node is powered off from
/// the page, refused without the admin token and done with it. Screenshots of the page and
/// the node's page are saved with the test's logs.
#[test]
fn the_fleet_page_in_chromium_and_prometheus_follow_a_booting_node() {
    use fantoccini::Locator;
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let v = fleet_versions();
    let a = v.versions[0].clone();
    let _one = one_at_a_time();
    let dir = test_dir("page");
    let node = "page0";
    let node_mac = "52:54:00:00:04:01";
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!("[nodes.{node}]\nmac = \"{node_mac}\"\nrecipe = \"ci-node\"\n"),
    )
    .unwrap();
    let lan = Lan::new("page", &dir).unwrap();
    let server = Server::start(&lan, &v.out, &inventory, &dir).unwrap();
    let base = format!(
        "http://{}:{}",
        qemu_tests::lan::SERVER_IP,
        qemu_tests::server::HTTP_PORT
    );
    let stranger = [0x52, 0x54, 0x00, 0x66, 0x66, 0x66];
    hostile_discover(&lan, stranger);
    let prometheus = qemu_tests::prometheus::Prometheus::start(
        &lan.ns,
        &dir,
        &format!("{base}/api/v1/prometheus/targets"),
    )
    .unwrap();
    let browser = qemu_tests::browser::Browser::start(&lan.ns, &dir, 9515, 1280).unwrap();
    let url = format!("{base}/");
    let hostile = browser
        .run(move |c| async move {
            c.goto(&url).await?;
            let vendor = text_of(&c, "td.vendor").await?;
            let host = text_of(&c, "td.hostname").await?;
            let probe = c
                .execute(
                    "return [typeof window.__pwned, \
                     document.querySelectorAll('#live img, #live script').length];",
                    vec![],
                )
                .await?;
            anyhow::Ok((vendor, host, probe))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log_text()));
    assert_eq!(hostile.0, HOSTILE_VENDOR, "the vendor class is text");
    assert_eq!(hostile.1, HOSTILE_HOST, "the host name is text");
    assert_eq!(
        hostile.2,
        serde_json::json!(["undefined", 0]),
        "nothing ran"
    );

    let cfg = VmConfig {
        name: node.into(),
        boot: ovmf_retrying(),
        mem_mib: 1024,
        cpus: 2,
        nic: Some(Nic {
            mac: node_mac.into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
        links: vec![],
    };
    let mut vm = Vm::start(&lan.ns, &cfg, &dir).unwrap();
    // The row, read every 200 ms from the live page until it says ready.
    let states = browser
        .run(move |c| async move {
            let mut seen: Vec<[String; 3]> = Vec::new();
            let end = std::time::Instant::now() + deadline::PXE_READY;
            loop {
                let r = row(&c, node).await?;
                if seen.last() != Some(&r) {
                    seen.push(r.clone());
                }
                if r[0] == "ready" || std::time::Instant::now() > end {
                    return anyhow::Ok(seen);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .unwrap()
        .unwrap();
    eprintln!("the page showed, in turn: {states:#?}");
    let last = states.last().unwrap();
    assert_eq!(
        (last[0].as_str(), last[1].as_str(), last[2].as_str()),
        ("ready", a.as_str(), "on"),
        "{states:?}\n{}",
        vm.console.tail(20)
    );
    let booting: std::collections::BTreeSet<&str> = states
        .iter()
        .filter_map(|s| s[0].strip_prefix("booting: "))
        .collect();
    assert!(
        booting.len() >= 2,
        "the row showed the stages advancing: {states:?}"
    );
    let (url, node_url) = (format!("{base}/"), format!("{base}/node/{node}"));
    let shots = browser
        .run(move |c| async move {
            let page = c.screenshot().await?;
            // As a phone shows it (a row per card).
            c.set_window_size(390, 1400).await?;
            let phone = c.screenshot().await?;
            c.set_window_size(1280, 1000).await?;
            c.goto(&node_url).await?;
            let text = text_of(&c, "main").await?;
            let node_page = c.screenshot().await?;
            c.goto(&url).await?;
            anyhow::Ok((page, node_page, text, phone))
        })
        .unwrap()
        .unwrap();
    std::fs::write(dir.join("page.png"), &shots.0).unwrap();
    std::fs::write(dir.join("node-page.png"), &shots.1).unwrap();
    std::fs::write(dir.join("page-phone.png"), &shots.3).unwrap();
    // This node has no data disk: its console and its page say what is in RAM.
    let [etc, var] = qemu_tests::fixture::PERSIST_CHECK;
    assert!(
        vm.console.text().contains(&format!(
            "ironbake: not persisted (no data disk: give the node data = {{ disk = \"/dev/disk/by-id/...\" }} in the inventory): {etc} {var}"
        )),
        "{}",
        vm.console.tail(40)
    );
    let in_ram = format!("{etc} {var} (no data partition: in RAM this boot)");
    for want in [
        "Recent boots",
        "Server log for this node",
        "boot script",
        &a,
        "Not persisted",
        &in_ram,
    ] {
        assert!(
            shots.2.contains(want),
            "the node's page has {want}:\n{}",
            shots.2
        );
    }

    // Prometheus finds the node through the boot server and scrapes its exporter.
    let end = std::time::Instant::now() + Duration::from_secs(120);
    let uname = loop {
        let r = prometheus.api("/api/v1/query?query=node_uname_info");
        if let Ok(r) = &r
            && let Some(m) = r["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["metric"]["node"] == node)
        {
            break m.clone();
        }
        assert!(
            std::time::Instant::now() < end,
            "Prometheus never scraped {node}: {r:?}\ntargets: {:?}\n{}",
            prometheus.api("/api/v1/targets"),
            prometheus.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("Prometheus: {uname}");
    assert_eq!(uname["metric"]["nodename"], node, "{uname}");
    assert_eq!(uname["metric"]["recipe"], "ci-node", "{uname}");
    assert_eq!(uname["metric"]["version"], a.as_str(), "{uname}");

    // Power off from the page: refused without the token, nothing changes.
    let refused = browser
        .run(move |c| async move { power_off_from_the_page(&c, node).await })
        .unwrap()
        .unwrap();
    assert!(refused.contains("refused (401)"), "{refused}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(vm.alive(), "the node is still running");
    let f = fleet_json(&server);
    assert!(
        f[0]["live"]["command"].is_null(),
        "no command queued: {f:#}"
    );
    // With the token pasted into the page, it is done.
    let token = std::fs::read_to_string(dir.join("netboot-state").join("admin-token")).unwrap();
    let done = browser
        .run(move |c| async move {
            c.find(Locator::Css("#token"))
                .await?
                .send_keys(token.trim())
                .await?;
            power_off_from_the_page(&c, node).await
        })
        .unwrap()
        .unwrap();
    assert!(done.contains("asked its agent to poweroff"), "{done}");
    let status = vm.wait_exit(node, Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU ended with {status}");
    let off = browser
        .run(move |c| async move {
            let end = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let r = row(&c, node).await?;
                if r[0] == "off" || std::time::Instant::now() > end {
                    return anyhow::Ok(r);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .unwrap()
        .unwrap();
    assert_eq!(off[0], "off", "{off:?}");
}
