//! `cargo xtask bench rollout`: an admin's change reaching the fleet. Edit a file of the base
//! overlay, build, roll the new version out, until the node is ready on it: the whole time
//! and its stages, for one `ci-node` node and for the homelab's three core nodes (one at a
//! time). Then the three core nodes powered off through their agents (until every QEMU has
//! exited) and on again by Wake-on-LAN (simulated standby, [`crate::wol`]) until every one is
//! ready.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::RUNS;
use crate::lan::Lan;
use crate::qemu::{Nic, Vm, VmConfig, ovmf_retrying};
use crate::report::{Figure, Report, machine, median, qemu_version};
use crate::server::Server;

/// Goals, in seconds.
const ONE_GOAL_S: f64 = 45.0;
const THREE_GOAL_S: f64 = 150.0;

/// The stages of one node's update, from the rollout's record and the server's boot record.
const STAGES: [&str; 5] = [
    "edit to published (cargo xtask build)",
    "published to the node's restart asked (rollout start, desired version)",
    "restart asked to its new boot's script (shutdown, firmware, PXE)",
    "script to running the new version (kernel, first stage, systemd, agent)",
    "running to ready (multi-user)",
];

struct Bench {
    project: std::path::PathBuf,
    paths: ironbake::Paths,
    edits: u32,
}

impl Bench {
    /// Edits a file of the base overlay and builds `recipe`: the new version, and when the
    /// edit began.
    fn edit_and_build(&mut self, recipe: &str, without: &[&str]) -> Result<(String, Instant)> {
        self.edits += 1;
        let t0 = Instant::now();
        let note = self
            .project
            .join("overlays/base/files/etc/ironbake/release-note");
        std::fs::create_dir_all(note.parent().expect("has one"))?;
        std::fs::write(&note, format!("bench edit {}\n", self.edits))?;
        let built = ironbake::build(
            &self.paths,
            recipe,
            &ironbake::BuildOptions {
                without: without.iter().map(|s| s.to_string()).collect(),
            },
            &ironbake::progress::Progress::new(false),
        )
        .with_context(|| format!("building {recipe}"))?;
        Ok((built.manifest.version, t0))
    }
}

/// Rolls `version` out from inside the LAN, then reads the rollout's record.
fn roll(server: &Server, dir: &Path, recipe: &str, version: &str) -> Result<Value> {
    let client = server.fleet_client(dir)?;
    let req = ironbake::fleet::RolloutRequest {
        recipe: recipe.into(),
        version: Some(version.into()),
        nodes: vec![],
        canary: 1,
        max_unavailable: 1,
        timeout_s: 600,
    };
    let (ok, out) = server
        .in_lan(move || {
            let mut out = Vec::new();
            let ok = ironbake::fleet::rollout(&client, &req, &mut out);
            (ok, String::from_utf8_lossy(&out).into_owned())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the rollout thread panicked"))??;
    eprint!("{out}");
    if !ok? {
        bail!("the rollout failed:\n{out}");
    }
    let all: Value = serde_json::from_str(&server.get("/api/v1/rollouts")?)?;
    all.as_array()
        .and_then(|a| a.last().cloned())
        .context("no rollout recorded")
}

/// When (Unix seconds) `node` entered `step` in rollout `r`.
fn step_at(r: &Value, node: &str, step: &str) -> Result<f64> {
    r["progress"][node]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e[1] == step)
        .and_then(|e| e[0].as_f64())
        .with_context(|| format!("{node} never reached {step}"))
}

/// When the server served `mac` its boot script in its latest boot.
fn script_at(server: &Server, mac: &str) -> Result<f64> {
    let b = server
        .hub
        .boots()
        .into_iter()
        .find(|b| b.mac == mac)
        .context("no boot record")?;
    let start = super::unix_s(b.started_wall.context("no start")?);
    let s = b
        .stages
        .iter()
        .find(|s| s.stage.name() == "script")
        .context("no script stage")?;
    Ok(start + s.at_s)
}

fn unix_of(t: Instant) -> f64 {
    super::unix_s(std::time::SystemTime::now() - t.elapsed())
}

/// One node's stage times (seconds) in `r`, its edit having started at `t0`, published at
/// `built`.
fn stages(
    server: &Server,
    r: &Value,
    node: &str,
    mac: &str,
    t0: f64,
    built: f64,
) -> Result<[f64; 5]> {
    let asked = step_at(r, node, "rebooting")?;
    let script = script_at(server, mac)?;
    let running = step_at(r, node, "starting")?;
    let ready = step_at(r, node, "ready")?;
    Ok([
        built - t0,
        asked - built,
        script - asked,
        running - script,
        ready - running,
    ])
}

/// Runs the benchmark for the project at `project`.
pub fn run(project: &Path) -> Result<Report> {
    if !crate::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let work = project.join("target").join("bench-rollout");
    let _ = std::fs::remove_dir_all(&work);
    let copy = work.join("project");
    ironbake::project::copy_inputs(project, &copy)?;
    let mut paths = ironbake::Paths::in_project(&copy);
    paths.out = work.join("out");
    paths.cache = project.join("target").join("qemu-tests").join("cache");
    let mut b = Bench {
        project: copy,
        paths,
        edits: 0,
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### rollout, {} (`cargo xtask bench rollout`)\n",
        crate::report::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. QEMU {} with TCG (no KVM), q35, OVMF, PXE through `netboot serve` \
         (debug build, in-process) in network namespaces. Each run edits a file of the base \
         overlay, builds (package layer cached), and runs `ironbake rollout` (canary 1, \
         max-unavailable 1) until every node reports ready on the new version.\n",
        machine(),
        qemu_version()
    );

    // One ci-node node, 2 vCPUs.
    let (one_total, one_stages) = {
        let (a, _) = b.edit_and_build("ci-node", &[])?;
        let dir = work.join("one");
        std::fs::create_dir_all(&dir)?;
        let lan = Lan::new("brollout", &dir)?;
        let inventory = dir.join("inventory.toml");
        let mac = "52:54:00:00:04:01";
        std::fs::write(
            &inventory,
            format!("[nodes.bench0]\nmac = \"{mac}\"\nrecipe = \"ci-node\"\n"),
        )?;
        let server = Server::start(&lan, &b.paths.out, &inventory, &dir)?;
        let cfg = VmConfig {
            name: "bench0".into(),
            boot: ovmf_retrying(),
            mem_mib: 1536,
            cpus: 2,
            nic: Some(Nic {
                mac: mac.into(),
                tap: lan.tap()?,
            }),
            disks: vec![],
            links: vec![],
        };
        let vm = Vm::start(&lan.ns, &cfg, &dir)?;
        server.wait_agents(&["bench0"], &a, crate::deadline::MESH_READY)?;
        let mut totals = Vec::new();
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
        for run in 0..RUNS {
            let (v, t0) = b.edit_and_build("ci-node", &[])?;
            let built = super::unix_s(std::time::SystemTime::now());
            let r = roll(&server, &dir, "ci-node", &v)
                .map_err(|e| e.context(format!("QEMU's monitor on bench0:\n{}", vm.state())))?;
            let t0 = unix_of(t0);
            let s = stages(&server, &r, "bench0", mac, t0, built)?;
            let total = step_at(&r, "bench0", "ready")? - t0;
            eprintln!("one node, run {}: edit to ready {total:.1} s", run + 1);
            totals.push(total);
            for (p, x) in per.iter_mut().zip(s) {
                p.push(x);
            }
            server.wait_agents(&["bench0"], &v, crate::deadline::MESH_READY)?;
        }
        (
            median(&mut totals),
            per.into_iter()
                .map(|mut p| median(&mut p))
                .collect::<Vec<_>>(),
        )
    };
    let _ = writeln!(
        md,
        "One `ci-node` node (2 vCPUs, 1536 MiB), {RUNS} runs, medians:\n\n| stage | seconds |\n| --- | ---: |"
    );
    for (name, s) in STAGES.iter().zip(&one_stages) {
        let _ = writeln!(md, "| {name} | {s:.1} |");
    }
    let _ = writeln!(
        md,
        "| **edit to ready on the new version** (goal: under {ONE_GOAL_S:.0} s) | **{one_total:.1}** |\n"
    );

    // The three core nodes, 1 vCPU each, side by side.
    let dir = work.join("mesh");
    std::fs::create_dir_all(&dir)?;
    let without = ["proxmox-kernel"];
    let (a, _) = b.edit_and_build("core-node", &without)?;
    let lan = Lan::new("bmesh", &dir)?;
    let homelab = crate::mesh::homelab(
        &dir,
        &lan,
        ovmf_retrying(),
        1,
        "[server]\nname = \"bench\"\nwol = { broadcast = \"10.33.0.255\" }\n\n",
    )?;
    let server = Server::start(&lan, &b.paths.out, &homelab.inventory, &dir)?;
    let nodes = crate::mesh::NODES;
    let mut vms: Vec<Vm> = homelab
        .vms
        .iter()
        .map(|c| Vm::start(&lan.ns, c, &dir))
        .collect::<Result<_>>()?;
    server.wait_agents(&nodes, &a, crate::deadline::MESH_READY)?;
    let (v, t0) = b.edit_and_build("core-node", &without)?;
    let built = super::unix_s(std::time::SystemTime::now());
    let r = roll(&server, &dir, "core-node", &v).map_err(|e| {
        let states: Vec<String> = vms.iter().map(|vm| vm.state()).collect();
        e.context(format!("QEMU's monitors:\n{}", states.join("\n")))
    })?;
    let t0 = unix_of(t0);
    let mut last_ready: f64 = 0.0;
    let _ = writeln!(
        md,
        "The three core nodes (`core-node` without `proxmox-kernel`, the mesh cabled; 1 vCPU \
         and 1536 MiB each, side by side), one run:\n\n| node | {} | ready after the edit |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        STAGES.join(" | ")
    );
    for (n, cfg) in nodes.iter().zip(&homelab.vms) {
        let mac = &cfg.nic.as_ref().expect("has a NIC").mac;
        let s = stages(&server, &r, n, mac, t0, built)?;
        let ready = step_at(&r, n, "ready")? - t0;
        last_ready = last_ready.max(ready);
        let _ = writeln!(
            md,
            "| {n} | {} | {ready:.1} |",
            s.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\n**Edit to all three ready on the new version: {last_ready:.1} s** (goal: under \
         {THREE_GOAL_S:.0} s).\n"
    );
    server.wait_agents(&nodes, &v, crate::deadline::MESH_READY)?;

    // Power off through the agents, then Wake-on-LAN.
    let client = server.fleet_client(&dir)?;
    let off_req = ironbake::fleet::PowerRequest {
        action: "off".into(),
        nodes: vec![],
        recipe: None,
        all: true,
        wait: Duration::ZERO,
    };
    let asked = Instant::now();
    let c = client.clone();
    server
        .in_lan(move || ironbake::fleet::power(&c, &off_req, &mut std::io::stderr()))
        .join()
        .map_err(|_| anyhow::anyhow!("the power thread panicked"))???;
    for (n, vm) in nodes.iter().zip(&mut vms) {
        let st = vm.wait_exit(n, Duration::from_secs(300))?;
        if !st.success() {
            bail!("{n}: QEMU ended with {st}");
        }
    }
    let off_s = asked.elapsed().as_secs_f64();
    let standby = homelab
        .vms
        .iter()
        .map(|c| {
            let nic = c.nic.as_ref().expect("has a NIC");
            crate::wol::standby(&lan.ns, &nic.tap, &nic.mac, Duration::from_secs(600))
        })
        .collect::<Result<Vec<_>>>()?;
    let on_req = ironbake::fleet::PowerRequest {
        action: "on".into(),
        nodes: vec![],
        recipe: None,
        all: true,
        wait: Duration::from_secs(900),
    };
    let asked = Instant::now();
    let on = server.in_lan(move || {
        let mut out = Vec::new();
        let ok = ironbake::fleet::power(&client, &on_req, &mut out);
        (ok, String::from_utf8_lossy(&out).into_owned())
    });
    for (i, s) in standby.into_iter().enumerate() {
        s.join()
            .map_err(|_| anyhow::anyhow!("the standby thread panicked"))??;
        let mut cfg = homelab.vms[i].clone();
        cfg.name = format!("{}-woken", nodes[i]);
        vms[i] = Vm::start(&lan.ns, &cfg, &dir)?;
    }
    let (ok, out) = on
        .join()
        .map_err(|_| anyhow::anyhow!("the power thread panicked"))??;
    eprint!("{out}");
    if !ok? {
        bail!("power on did not see every node ready:\n{out}");
    }
    let on_s = asked.elapsed().as_secs_f64();
    let _ = writeln!(
        md,
        "| the three core nodes | seconds |\n| --- | ---: |\n| power off (agents) to every QEMU exited | {off_s:.1} |\n| power on (Wake-on-LAN, simulated standby) to every node ready | {on_s:.1} |\n"
    );
    let figures = vec![
        Figure::goal(
            "edit -> build -> rollout -> ready, one ci-node node",
            "under 45 s",
            format!("{one_total:.1} s"),
            one_total < ONE_GOAL_S,
        ),
        Figure::goal(
            "edit -> build -> rollout -> ready, three core nodes (max-unavailable 1)",
            "under 150 s",
            format!("{last_ready:.1} s"),
            last_ready < THREE_GOAL_S,
        ),
        Figure::info("power off to all three off", format!("{off_s:.1} s")),
        Figure::info(
            "power on (Wake-on-LAN) to all three ready",
            format!("{on_s:.1} s"),
        ),
    ];
    Ok(Report::new("rollout", md, figures))
}
