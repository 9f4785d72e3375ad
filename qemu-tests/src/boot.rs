//! `cargo xtask boot RECIPE`: the whole system in VMs. Builds the recipe if needed, makes a
//! virtual LAN (a dnsmasq router with plain DHCP, `netboot serve` with proxyDHCP, TFTP and
//! HTTP, a bridge), and PXE-boots the inventory's nodes for the recipe under QEMU (q35, OVMF,
//! TCG), streaming each console with the node's name as prefix and the server's log. With
//! `disk`, each node boots its own copy of the recipe's disk image instead, with no network.
//!
//! `check` returns success once every node printed its ready line, failure with the last
//! console lines on timeout. Without it the VMs keep running until Ctrl-C. Ctrl-C or any
//! failure tears down every VM and namespace.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lan::Lan;
use crate::netns::Netns;
use crate::qemu::{Nic, Vm, VmConfig, ovmf, ovmf_disk};
use crate::server::Server;
use crate::usage::{Sampler, Usage};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The recipe; its inventory nodes are booted.
    pub recipe: String,
    /// How many of them.
    pub nodes: usize,
    /// Stop once every node is ready (success), or at the timeout (failure).
    pub check: bool,
    /// With `check`: how long to wait for every ready line.
    pub timeout: Duration,
    /// Overlays left out of the build.
    pub without: Vec<String>,
    /// Boot copies of the recipe's disk image, with no network.
    pub disk: bool,
    /// Print each console and the server's log as they come (else only the summary).
    pub echo: bool,
    /// Where to build and publish (default: the project's `out/` and `.cache/`).
    pub paths: Option<ironbake::Paths>,
}

/// Each node and the seconds from the first VM's start to its ready line, in the order they
/// became ready.
pub type ReadyTimes = Vec<(String, f64)>;

/// How a run went.
#[derive(Debug)]
pub struct Outcome {
    /// What the command exits with.
    pub code: ExitCode,
    /// When each node was ready.
    pub ready: ReadyTimes,
    /// What the run took from the host, the server and the LAN until every node was ready
    /// (or until it stopped).
    pub usage: Usage,
    /// The version booted.
    pub version: String,
}

/// More nodes than this at once get one vCPU each: with TCG every vCPU is a host thread,
/// and more of them than the host has cores only take turns.
const TWO_VCPUS_UP_TO: usize = 2;

/// A log being followed: new complete lines are printed with a prefix.
struct Follow {
    prefix: String,
    path: PathBuf,
    offset: u64,
    partial: String,
    filter: fn(&str) -> bool,
    echo: bool,
}

impl Follow {
    fn pump(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find(['\n', '\r']) {
            let line: String = self.partial.drain(..=i).collect();
            // Strip terminal escapes the firmware and systemd print.
            let clean = strip_escapes(line.trim_end());
            if self.echo && !clean.trim().is_empty() && (self.filter)(&clean) {
                println!("{} {clean}", self.prefix);
            }
        }
    }
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Stops the watch loop on Ctrl-C or SIGTERM, so every guard runs.
fn catch_signals() -> Result<()> {
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        #[allow(unsafe_code)]
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            nix::sys::signal::sigaction(sig, &action).context("installing the Ctrl-C handler")?;
        }
    }
    Ok(())
}

/// The inventory's first `n` nodes of `recipe`: (name, MAC).
fn pick_nodes(project: &Path, recipe: &str, n: usize) -> Result<Vec<(String, String)>> {
    let inv = netboot::inventory::load(project)?;
    let nodes: Vec<(String, String)> = inv
        .nodes
        .iter()
        .filter(|(_, node)| node.recipe == recipe)
        .map(|(name, node)| (name.clone(), node.mac.clone()))
        .take(n)
        .collect();
    if nodes.len() < n {
        bail!(
            "inventory.toml has {} node(s) for {recipe} and --nodes asks for {n}; add some with \
             `cargo xtask inventory add MAC NAME --recipe {recipe}` (QEMU MACs start with \
             52:54:00)",
            nodes.len(),
        );
    }
    Ok(nodes)
}

/// A fresh folder for this run's logs, but the server's state stays: each node keeps its
/// machine-id and SSH host key from one run to the next, as on a real LAN.
fn fresh_logs(dir: &Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name() != "netboot-state" {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Where the VMs run: a LAN with the boot server (PXE), or a namespace with no network.
struct Place {
    lan: Option<Lan>,
    alone: Option<Netns>,
    server: Option<Server>,
}

impl Place {
    fn ns(&self) -> &Netns {
        match (&self.lan, &self.alone) {
            (Some(lan), _) => &lan.ns,
            (None, Some(ns)) => ns,
            (None, None) => unreachable!("one of the two is made"),
        }
    }
}

/// The LAN and its boot server for PXE, or a bare namespace for disks.
fn place(
    opts: &Options,
    out: &Path,
    inventory: &Path,
    dir: &Path,
    follows: &mut Vec<Follow>,
) -> Result<Place> {
    if opts.disk {
        return Ok(Place {
            lan: None,
            alone: Some(Netns::new("boot-disk")?),
            server: None,
        });
    }
    let lan = Lan::new("boot", dir)?;
    let server = Server::start(&lan, out, inventory, dir)?;
    println!(
        "LAN: namespace {} (router {} with plain DHCP); boot server at http://{}:{}; logs in {}",
        lan.ns.name(),
        lan.router_name(),
        crate::lan::SERVER_IP,
        crate::server::HTTP_PORT,
        dir.display()
    );
    follows.push(Follow {
        prefix: "[netboot]".into(),
        path: server.log.clone(),
        offset: 0,
        partial: String::new(),
        filter: |l| !l.contains(" DEBUG "),
        echo: opts.echo,
    });
    Ok(Place {
        lan: Some(lan),
        alone: None,
        server: Some(server),
    })
}

/// A node's own copy of the disk image, 256 MiB larger (as real disks are: the node makes its
/// data partition there on first boot), with its settings on the ESP, rendered as the boot
/// server would with the same state folder (so it keeps its machine-id and SSH host key).
fn disk_copy(
    image: &Path,
    name: &str,
    m: &netboot::layout::Manifest,
    out: &Path,
    inventory: &Path,
    dir: &Path,
) -> Result<PathBuf> {
    let copy = dir.join(format!("{name}.disk.img"));
    let status = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy)
        .status()
        .context("copying the disk image")?;
    if !status.success() {
        bail!("copying the disk image to {} failed", copy.display());
    }
    let len = std::fs::metadata(&copy)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)?
        .set_len(len + (256 << 20))?;
    let archive = ironbake::disk::render_node_settings(
        inventory,
        Some(dir.join("netboot-state")),
        out,
        name,
        &m.recipe,
        &m.version,
    )?;
    ironbake::disk::set_node_settings(&copy, Some(&archive), m.source_date_epoch)?;
    Ok(copy)
}

/// Builds the recipe if needed and boots its nodes; see the module documentation.
pub fn run(project: &Path, opts: &Options) -> Result<ExitCode> {
    Ok(boot(project, opts)?.code)
}

/// [`run`], saying how it went.
pub fn boot(project: &Path, opts: &Options) -> Result<Outcome> {
    if !crate::require::vm_tests() {
        bail!("cannot boot VMs here (see above)");
    }
    catch_signals()?;
    let paths = opts
        .paths
        .clone()
        .unwrap_or_else(|| ironbake::Paths::in_project(project));
    ironbake::require_root()?;
    let options = ironbake::BuildOptions {
        without: opts.without.clone(),
    };
    let progress = ironbake::progress::Progress::new(false);
    let built = ironbake::build(&paths, &opts.recipe, &options, &progress)?;
    let m = &built.manifest;
    println!(
        "booting {}@{} from {}",
        m.recipe,
        m.version,
        paths.out.display()
    );
    let inventory = project.join("inventory.toml");
    let nodes = pick_nodes(project, &opts.recipe, opts.nodes)?;
    let dir = match &opts.paths {
        Some(p) => p.out.with_file_name("boot"),
        None => project.join("target").join("boot"),
    }
    .join(&opts.recipe);
    fresh_logs(&dir)?;
    let image = built.dir.join(ironbake::disk::FILE);
    if opts.disk && !image.is_file() {
        bail!(
            "{0} publishes no disk image: add \"disk\" to its outputs and \"disk-boot\" to its \
             overlays (recipes/{0}.toml)",
            opts.recipe
        );
    }
    let mut follows = Vec::new();
    let place = place(opts, &paths.out, &inventory, &dir, &mut follows)?;
    if opts.disk {
        println!(
            "no network: each VM boots its own copy of {} (its node's settings on the ESP, 256 \
             MiB more for its data partition); logs in {}",
            image.display(),
            dir.display()
        );
    }
    let cpus = if nodes.len() > TWO_VCPUS_UP_TO { 1 } else { 2 };
    if cpus == 1 {
        println!(
            "{} VMs at once: one vCPU each (the host has {} cores)",
            nodes.len(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    let mut vms = Vec::new();
    let sampler = Sampler::start(place.lan.as_ref().map(|l| &l.ns));
    for (name, mac) in &nodes {
        let cfg = match &place.lan {
            None => VmConfig {
                name: name.clone(),
                boot: ovmf_disk(),
                mem_mib: 1536,
                cpus,
                nic: None,
                disks: vec![disk_copy(&image, name, m, &paths.out, &inventory, &dir)?],
                links: vec![],
            },
            Some(lan) => VmConfig {
                name: name.clone(),
                boot: ovmf(),
                mem_mib: 1536,
                cpus,
                nic: Some(Nic {
                    mac: mac.clone(),
                    tap: lan.tap()?,
                }),
                disks: vec![],
                links: vec![],
            },
        };
        let vm = Vm::start(place.ns(), &cfg, &dir)?;
        follows.push(Follow {
            prefix: format!("[{name}]"),
            path: vm.log.clone(),
            offset: 0,
            partial: String::new(),
            filter: |_| true,
            echo: opts.echo,
        });
        vms.push((name.clone(), vm));
    }
    let _server = &place.server;
    let (code, ready, usage) = watch(opts, &m.recipe, &mut vms, &mut follows, sampler)?;
    Ok(Outcome {
        code,
        ready,
        usage,
        version: m.version.clone(),
    })
}

/// The usage up to now, measured once (later calls give the same).
fn take_usage(sampler: &mut Option<Sampler>, usage: &mut Option<Usage>) -> Usage {
    if let Some(s) = sampler.take() {
        *usage = Some(s.finish());
    }
    usage.clone().expect("measured above")
}

/// Streams the consoles until every node is ready (with `check`), the timeout, a VM's end,
/// or Ctrl-C.
fn watch(
    opts: &Options,
    recipe: &str,
    vms: &mut [(String, Vm)],
    follows: &mut [Follow],
    sampler: Sampler,
) -> Result<(ExitCode, ReadyTimes, Usage)> {
    let start = Instant::now();
    let mut ready = vec![false; vms.len()];
    let mut order = Vec::new();
    let mut announced = false;
    let mut sampler = Some(sampler);
    let mut usage = None;
    loop {
        for f in follows.iter_mut() {
            f.pump();
        }
        if let Some(s) = sampler.as_mut() {
            s.tick();
        }
        for (i, (name, vm)) in vms.iter_mut().enumerate() {
            if !ready[i] {
                let needle = format!("ironbake: {name} ready {recipe}@");
                ready[i] = vm.console.text().contains(&needle);
                if ready[i] {
                    let secs = start.elapsed().as_secs_f64();
                    println!("{name} ready after {secs:.1} s");
                    order.push((name.clone(), secs));
                }
            }
            if !vm.alive() {
                bail!(
                    "VM {name} stopped; last console lines:\n{}",
                    vm.console.tail(30)
                );
            }
        }
        if ready.iter().all(|r| *r) && !announced {
            announced = true;
            let u = take_usage(&mut sampler, &mut usage);
            println!(
                "all {} node(s) ready after {:.0} s{}",
                vms.len(),
                start.elapsed().as_secs_f64(),
                if opts.check {
                    ""
                } else {
                    "; Ctrl-C stops them"
                }
            );
            for line in u.lines() {
                println!("  {line}");
            }
            if opts.check {
                return Ok((ExitCode::SUCCESS, order, u));
            }
        }
        if opts.check && start.elapsed() > opts.timeout {
            for (i, (name, vm)) in vms.iter().enumerate() {
                if !ready[i] {
                    eprintln!(
                        "{name}: no ready line after {} s; last console lines:\n{}",
                        opts.timeout.as_secs(),
                        vm.console.tail(30)
                    );
                }
            }
            let u = take_usage(&mut sampler, &mut usage);
            for line in u.lines() {
                eprintln!("  {line}");
            }
            return Ok((ExitCode::FAILURE, order, u));
        }
        if STOP.load(Ordering::SeqCst) {
            println!("stopping: every VM, the boot server and the LAN are removed");
            let u = take_usage(&mut sampler, &mut usage);
            return Ok((ExitCode::from(130), order, u));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
