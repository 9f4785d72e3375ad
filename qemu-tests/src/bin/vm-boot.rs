//! `cargo xtask boot RECIPE`: the whole system in VMs. Builds the recipe if needed, makes a
//! virtual LAN (a dnsmasq router with plain DHCP, `netboot serve` with proxyDHCP, TFTP and
//! HTTP, a bridge), and PXE-boots the inventory's nodes for the recipe under QEMU (q35, OVMF,
//! TCG), streaming each console with the node's name as prefix and the server's log.
//!
//! `--check` exits 0 once every node printed its ready line, non-zero with the last console
//! lines on timeout. Without it the VMs keep running until Ctrl-C. Ctrl-C or any failure tears
//! down every VM and namespace.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ironbake::pipeline::{self, Paths};
use ironbake::progress::Progress;
use qemu_tests::lan::Lan;
use qemu_tests::netns::Netns;
use qemu_tests::qemu::{Nic, Vm, VmConfig, ovmf, ovmf_disk};
use qemu_tests::server::Server;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    recipe: String,
    nodes: usize,
    check: bool,
    timeout: Duration,
    without: Vec<String>,
    disk: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        recipe: String::new(),
        nodes: 1,
        check: false,
        timeout: Duration::from_secs(600),
        without: Vec::new(),
        disk: false,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--nodes" => {
                a.nodes = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= 1)
                    .context("--nodes takes a number, 1 or more")?;
            }
            "--check" => a.check = true,
            "--without" => a
                .without
                .push(it.next().context("--without takes an overlay name")?),
            "--timeout" => {
                a.timeout = Duration::from_secs(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .context("--timeout takes seconds")?,
                );
            }
            "--disk" => a.disk = true,
            r if !r.starts_with('-') && a.recipe.is_empty() => a.recipe = r.to_string(),
            other => bail!(
                "unknown argument {other:?}; usage: vm-boot RECIPE [--nodes N] [--check] [--timeout SECS] [--without OVERLAY] [--disk]"
            ),
        }
    }
    if a.recipe.is_empty() {
        bail!(
            "usage: vm-boot RECIPE [--nodes N] [--check] [--timeout SECS] [--without OVERLAY] [--disk]"
        );
    }
    Ok(a)
}

/// A log being followed: new complete lines are printed with a prefix.
struct Follow {
    prefix: String,
    path: PathBuf,
    offset: u64,
    partial: String,
    filter: fn(&str) -> bool,
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
            if !clean.trim().is_empty() && (self.filter)(&clean) {
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

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<std::process::ExitCode> {
    let args = parse_args()?;
    if !qemu_tests::require::vm_tests() {
        bail!("cannot boot VMs here (see above)");
    }
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

    let project = ironbake::cli::project_root();
    let paths = Paths {
        project: project.clone(),
        out: project.join("out"),
        cache: project.join(".cache"),
        etc_apt: "/etc/apt".into(),
    };
    pipeline::require_root()?;
    let options = pipeline::BuildOptions {
        without: args.without.clone(),
    };
    let built = pipeline::build_with(&paths, &args.recipe, &options, &Progress::new(false))?;
    let m = &built.manifest;
    println!(
        "booting {}@{} from {}",
        m.recipe,
        m.version,
        paths.out.display()
    );

    let inventory_path = project.join("inventory.toml");
    let inv = ironbake::inventory::load(&project)?;
    let nodes: Vec<(String, String)> = inv
        .nodes
        .iter()
        .filter(|(_, n)| n.recipe == args.recipe)
        .map(|(name, n)| (name.clone(), n.mac.clone()))
        .take(args.nodes)
        .collect();
    if nodes.len() < args.nodes {
        bail!(
            "inventory.toml has {} node(s) for {} and --nodes asks for {}; add some with `cargo xtask inventory add MAC NAME --recipe {}` (QEMU MACs start with 52:54:00)",
            nodes.len(),
            args.recipe,
            args.nodes,
            args.recipe
        );
    }

    let dir = project.join("target").join("boot").join(&args.recipe);
    // A fresh folder for this run's logs, but the server's state stays: each node keeps its
    // machine-id and SSH host key from one run to the next, as on a real LAN.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name() != "netboot-state" {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
    std::fs::create_dir_all(&dir)?;
    let mut follows = Vec::new();
    let mut vms = Vec::new();
    // Either a LAN with the boot server (PXE), or no network at all (--disk).
    let image = built.dir.join(ironbake::pipeline::disk_image::FILE);
    if args.disk && !image.is_file() {
        bail!(
            "{} publishes no disk image: add \"disk\" to its outputs and \"disk-boot\" to its overlays (recipes/{}.toml)",
            args.recipe,
            args.recipe
        );
    }
    let lan = if args.disk {
        None
    } else {
        Some(Lan::new("boot", &dir)?)
    };
    let disk_ns = if args.disk {
        Some(Netns::new("boot-disk")?)
    } else {
        None
    };
    let _server = match &lan {
        Some(lan) => {
            let server = Server::start(lan, &paths.out, &inventory_path, &dir)?;
            println!(
                "LAN: namespace {} (router {} with plain DHCP); boot server at http://{}:{}; logs in {}",
                lan.ns.name(),
                lan.router_name(),
                qemu_tests::lan::SERVER_IP,
                qemu_tests::server::HTTP_PORT,
                dir.display()
            );
            follows.push(Follow {
                prefix: "[netboot]".into(),
                path: server.log.clone(),
                offset: 0,
                partial: String::new(),
                filter: |l| !l.contains(" DEBUG "),
            });
            Some(server)
        }
        None => {
            println!(
                "no network: each VM boots its own copy of {} (its node's settings on the ESP, 256 MiB more for its data partition); logs in {}",
                image.display(),
                dir.display()
            );
            None
        }
    };
    let ns = match (&lan, &disk_ns) {
        (Some(lan), _) => &lan.ns,
        (None, Some(ns)) => ns,
        (None, None) => unreachable!("one of the two was made"),
    };
    // A disk carries its node's settings on its ESP, rendered as the boot server would, with
    // the same state folder (so a node keeps its machine-id and SSH host key either way).
    let settings = if args.disk {
        Some(
            netboot::nodes::Inventories::load(&inventory_path, Some(dir.join("netboot-state")))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    } else {
        None
    };
    for (name, mac) in &nodes {
        let cfg = if let Some(settings) = &settings {
            // The VM writes to its disk (systemd-boot's seed, boot counting): its own copy.
            let copy = dir.join(format!("{name}.disk.img"));
            let status = std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(&image)
                .arg(&copy)
                .status()
                .context("copying the disk image")?;
            if !status.success() {
                bail!("copying the disk image to {} failed", copy.display());
            }
            // A disk larger than the image, as real ones are: the node makes its data
            // partition in the rest on first boot.
            let len = std::fs::metadata(&copy)?.len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&copy)?
                .set_len(len + (256 << 20))?;
            let t = settings
                .target_named(&paths.out, name, &m.recipe, &m.version)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let archive = settings
                .settings_alone(&t)
                .map_err(|e| anyhow::anyhow!("settings of {name}: {e}"))?;
            ironbake::disk::set_node_settings(&copy, Some(&archive), m.source_date_epoch)?;
            VmConfig {
                name: name.clone(),
                boot: ovmf_disk(),
                mem_mib: 1536,
                nic: None,
                disks: vec![copy],
                links: vec![],
            }
        } else {
            VmConfig {
                name: name.clone(),
                boot: ovmf(),
                mem_mib: 1536,
                nic: Some(Nic {
                    mac: mac.clone(),
                    tap: lan.as_ref().expect("a LAN for PXE").tap()?,
                }),
                disks: vec![],
                links: vec![],
            }
        };
        let vm = Vm::start(ns, &cfg, &dir)?;
        follows.push(Follow {
            prefix: format!("[{name}]"),
            path: vm.log.clone(),
            offset: 0,
            partial: String::new(),
            filter: |_| true,
        });
        vms.push((name.clone(), vm));
    }

    let start = Instant::now();
    let mut ready = vec![false; vms.len()];
    let mut announced = false;
    loop {
        for f in &mut follows {
            f.pump();
        }
        for (i, (name, vm)) in vms.iter_mut().enumerate() {
            if !ready[i] {
                let needle = format!("ironbake: {name} ready {}@", m.recipe);
                ready[i] = vm.console.text().contains(&needle);
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
            println!(
                "all {} node(s) ready after {:.0} s{}",
                vms.len(),
                start.elapsed().as_secs_f64(),
                if args.check {
                    ""
                } else {
                    "; Ctrl-C stops them"
                }
            );
            if args.check {
                return Ok(std::process::ExitCode::SUCCESS);
            }
        }
        if args.check && start.elapsed() > args.timeout {
            for (i, (name, vm)) in vms.iter().enumerate() {
                if !ready[i] {
                    eprintln!(
                        "{name}: no ready line after {} s; last console lines:\n{}",
                        args.timeout.as_secs(),
                        vm.console.tail(30)
                    );
                }
            }
            return Ok(std::process::ExitCode::FAILURE);
        }
        if STOP.load(Ordering::SeqCst) {
            println!("stopping: every VM, the boot server and the LAN are removed");
            return Ok(std::process::ExitCode::from(130));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
