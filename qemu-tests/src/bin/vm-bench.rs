//! `cargo xtask bench initramfs`: the initramfs's size against Debian's mkinitramfs for the
//! same kernel, and the time from kernel start to the ready line under QEMU, by stage.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result, bail};
use ironbake::pipeline::{self, Paths};
use ironbake::progress::Progress;
use qemu_tests::httpd::{Behaviour, Httpd};
use qemu_tests::lan::{self, Lan};
use qemu_tests::qemu::{Boot, Nic, Vm, VmConfig};

const RUNS: usize = 3;
const PORT: u16 = 8080;

/// The stages of a boot, as the first stage and the ready line print them.
const STAGES: &[(&str, &str)] = &[
    ("kernel to first stage", "first stage "),
    ("drivers", "] drivers: "),
    ("DHCP", "] network: "),
    ("fetch + verify base", "] fetched base.squashfs"),
    ("fetch + verify overlay", "] fetched overlay.squashfs"),
    ("mount, switch_root", "] root ready"),
];

fn uptime_of(line: &str) -> Option<f64> {
    let start = line.find('[')? + 1;
    let end = line[start..].find("s]")? + start;
    line[start..end].trim().parse().ok()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let record = !args.iter().any(|a| a == "--no-record");
    match args.first().map(String::as_str) {
        Some("initramfs") => {}
        Some("boot") => return bench_boot(record),
        _ => bail!("usage: vm-bench initramfs|boot [--no-record]"),
    }
    if !qemu_tests::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let root = ironbake::cli::project_root();
    let work = root.join("target").join("bench-initramfs");
    let paths = Paths {
        project: root.clone(),
        out: work.join("out"),
        cache: work.join("cache"),
        etc_apt: "/etc/apt".into(),
    };
    let built = pipeline::build(&paths, "ci-node", &Progress::new(false))?;
    let m = &built.manifest;
    let ours = std::fs::metadata(built.dir.join("initrd.img"))?.len();

    // The anchor: Debian's initramfs-tools for the same kernel, in a copy of the image's tree.
    let tree = work.join("anchor-root");
    let _ = ironbake::base::remove_tree(&tree);
    let cached = ironbake::base::cache_root(&paths.cache)
        .join(&m.debian.base_sha256)
        .join("rootfs");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&cached)
        .arg(&tree)
        .status()?;
    if !cp.success() {
        bail!("copying the image's tree");
    }
    let t = std::time::Instant::now();
    let mk = Command::new("chroot")
        .arg(&tree)
        .args(["mkinitramfs", "-o", "/tmp/anchor.img", &m.kernel.release])
        .output()
        .context("running mkinitramfs in the image")?;
    let anchor_s = t.elapsed().as_secs_f64();
    if !mk.status.success() {
        bail!(
            "mkinitramfs failed: {}",
            String::from_utf8_lossy(&mk.stderr)
        );
    }
    let anchor = std::fs::metadata(tree.join("tmp/anchor.img"))?.len();
    ironbake::base::remove_tree(&tree)?;

    // Boots: the same VM as the tests, no per-node settings, nothing broken on purpose.
    let url = format!("http://{}:{PORT}", lan::SERVER_IP);
    let append = netboot::layout::boot_cmdline(m, &url, "bench", &url);
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len() + 1];
    let mut ready = Vec::new();
    for run in 0..RUNS {
        let dir = work.join(format!("run{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        let lan = Lan::new("bench", &dir)?;
        let _server = Httpd::start(&lan.ns, PORT, &paths.out, Behaviour::default())?;
        let cfg = VmConfig {
            name: "bench".into(),
            boot: Boot::Kernel {
                kernel: built.dir.join("vmlinuz"),
                initrd: built.dir.join("initrd.img"),
                append: append.clone(),
            },
            mem_mib: 1536,
            nic: Some(Nic {
                mac: "52:54:00:00:00:09".into(),
                tap: lan.tap()?,
            }),
            disks: vec![],
            links: vec![],
        };
        let mut vm = Vm::start(&lan.ns, &cfg, &dir)?;
        let (line, _) = vm.wait_line(
            "the ready line",
            " ready ci-node@",
            qemu_tests::deadline::READY,
            0,
        )?;
        let secs: f64 = line
            .rsplit(" in ")
            .next()
            .and_then(|s| s.trim_end_matches(" s").parse().ok())
            .context("reading the ready line")?;
        ready.push(secs);
        let text = vm.console.text();
        let lines = qemu_tests::console::lines(&text);
        let mut prev = 0.0;
        for (i, (_, needle)) in STAGES.iter().enumerate() {
            let at = lines
                .iter()
                .find(|l| l.starts_with("ironbake: [") && l.contains(needle))
                .and_then(|l| uptime_of(l))
                .with_context(|| format!("no {needle:?} line"))?;
            per_stage[i].push(at - prev);
            prev = at;
        }
        per_stage[STAGES.len()].push(secs - prev);
        eprintln!("run {}: ready in {secs:.1} s", run + 1);
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### initramfs, {} (`cargo xtask bench initramfs`)\n",
        ironbake::bench::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. QEMU {} with TCG (no KVM), 2 vCPUs, 1536 MiB, virtio-net on a tap device bridged, inside network namespaces, to the server and to a plain DHCP router (dnsmasq); {RUNS} boots of `ci-node@{}` ({} MB of layers), medians.\n",
        ironbake::bench::machine(),
        qemu_version(),
        m.version,
        m.layers
            .iter()
            .map(|l| m
                .outputs
                .iter()
                .find(|o| &o.path == l)
                .map_or(0, |o| o.size))
            .sum::<u64>()
            / 1_000_000
    );
    let _ = writeln!(md, "| initramfs | size (MB) | vs Debian's mkinitramfs |");
    let _ = writeln!(md, "| --- | ---: | ---: |");
    let _ = writeln!(
        md,
        "| ironbake `initrd.img` (default drivers) | {:.1} | {:.2}x |",
        ours as f64 / 1e6,
        ours as f64 / anchor as f64
    );
    let _ = writeln!(
        md,
        "| Debian mkinitramfs, same kernel, same run ({anchor_s:.0} s to build) | {:.1} | 1.00x |\n",
        anchor as f64 / 1e6
    );
    let _ = writeln!(md, "| stage (kernel start to ready) | seconds |");
    let _ = writeln!(md, "| --- | ---: |");
    for (i, (name, _)) in STAGES.iter().enumerate() {
        let _ = writeln!(md, "| {name} | {:.1} |", median(&mut per_stage[i]));
    }
    let _ = writeln!(
        md,
        "| systemd to the ready line | {:.1} |",
        median(&mut per_stage[STAGES.len()])
    );
    let _ = writeln!(
        md,
        "| **kernel start to ready** (goal: under 10 s; reference point 12.2 s) | **{:.1}** |",
        median(&mut ready)
    );
    print!("{md}");
    if record {
        ironbake::bench::append_record(&md)?;
    }
    Ok(())
}

fn qemu_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("QEMU emulator version ").to_string())
        })
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, with fractions.
fn unix_s(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `cargo xtask bench boot`: power-on to ready for `ci-node` through the whole PXE chain, by
/// stage. Host-side stages come from the boot server's records (its clock); guest-side ones
/// from the first stage's uptime lines; the two are joined at the kernel's start, which is
/// the moment the ready line appeared on the console minus the uptime it gives.
fn bench_boot(record: bool) -> Result<()> {
    use qemu_tests::lan::Lan;
    use qemu_tests::qemu::ovmf;
    use qemu_tests::server::Server;
    if !qemu_tests::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let root = ironbake::cli::project_root();
    let work = root.join("target").join("bench-boot");
    let paths = Paths {
        project: root.clone(),
        out: work.join("out"),
        cache: root.join("target").join("qemu-tests").join("cache"),
        etc_apt: "/etc/apt".into(),
    };
    let built = pipeline::build(&paths, "ci-node", &Progress::new(false))?;
    let m = &built.manifest;
    const NAMES: [&str; 9] = [
        "firmware: power-on to its PXE request answered",
        "DHCP answer to iPXE loaded (TFTP)",
        "iPXE: its DHCP, the node's script",
        "kernel, initramfs and settings over HTTP",
        "kernel starts (EFI stub, decompression)",
        "first stage: drivers and DHCP",
        "image fetch + verify (sha256)",
        "mount, switch_root",
        "systemd to the ready line",
    ];
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); NAMES.len()];
    let mut totals = Vec::new();
    for run in 0..RUNS {
        let dir = work.join(format!("run{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        let lan = Lan::new("bboot", &dir)?;
        let inventory = dir.join("inventory.toml");
        std::fs::write(
            &inventory,
            "[nodes.bench0]\nmac = \"52:54:00:00:00:41\"\nrecipe = \"ci-node\"\n",
        )?;
        let server = Server::start(&lan, &paths.out, &inventory, &dir)?;
        let cfg = VmConfig {
            name: "bench0".into(),
            boot: ovmf(),
            mem_mib: 1536,
            nic: Some(Nic {
                mac: "52:54:00:00:00:41".into(),
                tap: lan.tap()?,
            }),
            disks: vec![],
            links: vec![],
        };
        let power_on = std::time::SystemTime::now();
        let mut vm = Vm::start(&lan.ns, &cfg, &dir)?;
        // Poll often: the moment the ready line appears is a measurement.
        let needle = "ironbake: bench0 ready ci-node@";
        let deadline = std::time::Instant::now() + qemu_tests::deadline::PXE_READY;
        let (ready_line, seen) = loop {
            let text = vm.console.text();
            if let Some(l) = qemu_tests::console::lines(&text)
                .into_iter()
                .find(|l| l.contains(needle))
            {
                break (l.to_string(), std::time::SystemTime::now());
            }
            if std::time::Instant::now() > deadline || !vm.alive() {
                bail!(
                    "no ready line; last console lines:\n{}",
                    vm.console.tail(30)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let uptime: f64 = ready_line
            .rsplit(" in ")
            .next()
            .and_then(|s| s.trim_end_matches(" s").parse().ok())
            .context("reading the ready line")?;
        let boot = server
            .hub
            .boots()
            .into_iter()
            .find(|b| b.mac == "52:54:00:00:00:41")
            .context("the server has no record of the boot")?;
        let start = unix_s(boot.started_wall.context("no start time")?);
        let at = |stage: &str| {
            boot.stages
                .iter()
                .find(|s| s.stage.name() == stage)
                .map(|s| start + s.at_s)
                .with_context(|| format!("no {stage} stage in the server's record"))
        };
        let t0 = unix_s(power_on);
        let kernel = unix_s(seen) - uptime;
        let text = vm.console.text();
        let lines = qemu_tests::console::lines(&text);
        let up = |needle: &str| {
            lines
                .iter()
                .find(|l| l.starts_with("ironbake: [") && l.contains(needle))
                .and_then(|l| uptime_of(l))
                .with_context(|| format!("no {needle:?} line"))
        };
        let marks = [
            t0,
            at("dhcp")?,
            at("bootloader")?,
            at("script")?,
            at("initrd")?,
            kernel,
            kernel + up("] network: ")?,
            kernel + up("] fetched overlay.squashfs")?,
            kernel + up("] root ready")?,
            kernel + uptime,
        ];
        for i in 0..NAMES.len() {
            per[i].push(marks[i + 1] - marks[i]);
        }
        totals.push(marks[NAMES.len()] - t0);
        eprintln!(
            "run {}: power-on to ready {:.1} s",
            run + 1,
            marks[NAMES.len()] - t0
        );
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### boot, {} (`cargo xtask bench boot`)\n",
        ironbake::bench::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. QEMU {} with TCG (no KVM), q35, OVMF (Debian's ovmf), 2 vCPUs, 1536 MiB, virtio-net on a tap bridged to the boot server and a dnsmasq router inside network namespaces; `netboot serve` (debug build, in-process); {RUNS} power-on-to-ready boots of `ci-node@{}`, medians per stage.\n",
        ironbake::bench::machine(),
        qemu_version(),
        m.version
    );
    let _ = writeln!(md, "| stage | seconds |");
    let _ = writeln!(md, "| --- | ---: |");
    for (i, name) in NAMES.iter().enumerate() {
        let _ = writeln!(md, "| {name} | {:.1} |", median(&mut per[i]));
    }
    let _ = writeln!(
        md,
        "| **power-on to ready** (goal: under 45 s; the seed's Debian installer: 5 to 10 min) | **{:.1}** |",
        median(&mut totals)
    );
    print!("{md}");
    if record {
        ironbake::bench::append_record(&md)?;
    }
    Ok(())
}
