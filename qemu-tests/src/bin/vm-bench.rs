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
        Some("disk") => return bench_disk(record),
        _ => bail!("usage: vm-bench initramfs|boot|disk [--no-record]"),
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
        let marks = pxe_boot_marks(&paths, &work.join(format!("run{run}")))?;
        for i in 0..NAMES.len() {
            per[i].push(marks[i + 1] - marks[i]);
        }
        let t0 = marks[0];
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

/// One PXE boot of the current `ci-node` published under `paths.out`, through the whole chain
/// (router, boot server, OVMF, iPXE) in a LAN of its own under `dir`: the moments (Unix
/// seconds) of power-on, the server's dhcp, bootloader, script and initrd records, the
/// kernel's start, the first stage's network, fetched overlay and root ready lines, and the
/// ready line.
fn pxe_boot_marks(paths: &Paths, dir: &std::path::Path) -> Result<[f64; 10]> {
    use qemu_tests::qemu::ovmf;
    use qemu_tests::server::Server;
    let _ = std::fs::remove_dir_all(dir);
    let lan = Lan::new("bboot", dir)?;
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.bench0]\nmac = \"52:54:00:00:00:41\"\nrecipe = \"ci-node\"\n",
    )?;
    let server = Server::start(&lan, &paths.out, &inventory, dir)?;
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
    let mut vm = Vm::start(&lan.ns, &cfg, dir)?;
    let (seen, uptime) = watch_ready(&mut vm, "ironbake: bench0 ready ci-node@")?;
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
    Ok(marks)
}

/// Polls `vm`'s console (often: the moment is a measurement) until a line contains `needle`,
/// the ready line; returns when it was seen and the uptime it gives.
fn watch_ready(vm: &mut Vm, needle: &str) -> Result<(std::time::SystemTime, f64)> {
    let deadline = std::time::Instant::now() + qemu_tests::deadline::PXE_READY;
    let (line, seen) = loop {
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
    let uptime: f64 = line
        .rsplit(" in ")
        .next()
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .context("reading the ready line")?;
    Ok((seen, uptime))
}

/// Power-on to the ready line of a VM booting `disk` alone (no NIC): (power-on to kernel
/// start, kernel start to ready), in seconds, and the console.
fn disk_boot(
    ns: &qemu_tests::netns::Netns,
    disk: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(f64, f64, String)> {
    let cfg = VmConfig {
        name: "bench-disk".into(),
        boot: qemu_tests::qemu::ovmf_disk(),
        mem_mib: 1536,
        nic: None,
        disks: vec![disk.to_path_buf()],
        links: vec![],
    };
    let power_on = std::time::SystemTime::now();
    let mut vm = Vm::start(ns, &cfg, dir)?;
    let (seen, uptime) = watch_ready(&mut vm, " ready ci-node@")?;
    let total = unix_s(seen) - unix_s(power_on);
    Ok((total - uptime, uptime, vm.console.text()))
}

/// The same disk image as ours, by the shell route: sgdisk for the table, mkfs.fat and mtools
/// for the ESP (the same files), dd for the slot's layers. Returns its seconds.
fn anchor_disk(
    layout: &ironbake::disk::Layout,
    esp: &[(String, Vec<u8>)],
    layers: (&std::path::Path, &std::path::Path),
    dest: &std::path::Path,
    work: &std::path::Path,
) -> Result<f64> {
    let files = work.join("anchor-esp-files");
    let _ = std::fs::remove_dir_all(&files);
    let _ = std::fs::remove_file(dest);
    let mut script = String::from("set -eu\n");
    let mut copies = String::new();
    let mut folders = std::collections::BTreeSet::new();
    for (i, (path, data)) in esp.iter().enumerate() {
        std::fs::create_dir_all(&files)?;
        let f = files.join(i.to_string());
        std::fs::write(&f, data)?;
        let mut parent = std::path::Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            folders.insert(p.display().to_string());
            parent = p.parent();
        }
        let _ = writeln!(copies, "mcopy -i \"$esp\" {} ::{path}", f.display());
    }
    let esp_part = layout.part("ESP").context("no ESP")?;
    let _ = writeln!(
        script,
        "img={}; esp={}",
        dest.display(),
        work.join("anchor-esp.img").display()
    );
    let _ = writeln!(
        script,
        "rm -f \"$esp\"; truncate -s {} \"$img\"",
        layout.size
    );
    let mut sg = format!("sgdisk -o -U {}", layout.disk_guid);
    for p in &layout.parts {
        let _ = write!(
            sg,
            " -n {n}:{}:{} -t {n}:{} -c {n}:{} -u {n}:{}",
            p.first_lba,
            p.last_lba,
            p.type_guid,
            p.label,
            p.guid,
            n = p.number
        );
    }
    let _ = writeln!(script, "{sg} \"$img\" >/dev/null");
    let _ = writeln!(
        script,
        "mkfs.fat -C -F 32 -n ESP --invariant \"$esp\" {} >/dev/null",
        esp_part.bytes() / 1024
    );
    let dirs: Vec<String> = folders.iter().map(|d| format!("::{d}")).collect();
    let _ = writeln!(script, "mmd -i \"$esp\" {}", dirs.join(" "));
    script.push_str(&copies);
    let _ = writeln!(
        script,
        "dd if=\"$esp\" of=\"$img\" bs=1M seek={} conv=notrunc,sparse status=none",
        esp_part.offset() >> 20
    );
    for (label, src) in [
        ("ironbake-base-a", layers.0),
        ("ironbake-overlay-a", layers.1),
    ] {
        let p = layout.part(label).context("no slot a")?;
        let _ = writeln!(
            script,
            "dd if={} of=\"$img\" bs=1M seek={} conv=notrunc status=none",
            src.display(),
            p.offset() >> 20
        );
    }
    script.push_str("sync \"$img\"\n");
    let t = std::time::Instant::now();
    let out = Command::new("bash").arg("-c").arg(&script).output()?;
    let took = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "the anchor script failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// Bytes `path` takes on its filesystem (a sparse file takes less than its length).
fn allocated(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// `cargo xtask bench disk`: a disk image's build time (ours against the shell route with
/// sgdisk, mkfs.fat, mtools and dd, for the same layout and files), its sizes, and
/// power-on to ready from disk (first boot, which makes the data partition, and a later one)
/// against the same version booted over PXE in the same run.
fn bench_disk(record: bool) -> Result<()> {
    if !qemu_tests::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let root = ironbake::cli::project_root();
    let work = root.join("target").join("bench-disk");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let paths = qemu_tests::fixture::disk_project("bench-disk-out");
    let progress = Progress::new(false);
    let t = std::time::Instant::now();
    let built = pipeline::build(&paths, "ci-node", &progress)?;
    let build_s = t.elapsed().as_secs_f64();
    let stage_s = progress
        .times()
        .iter()
        .find(|(n, _)| n == "disk image")
        .map(|(_, d)| d.as_secs_f64())
        .context("the build has no disk image stage")?;
    let m = &built.manifest;
    let image = built.dir.join("disk.img");
    let (image_sha, image_len) = netboot::layout::sha256_file(&image)?;
    let base = built.dir.join("base.squashfs");
    let overlay = built.dir.join("overlay.squashfs");
    let content = std::fs::metadata(&base)?.len() + std::fs::metadata(&overlay)?.len();
    let zstd_len = {
        struct Count(u64);
        impl std::io::Write for Count {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len() as u64;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Count(0);
        zstd::stream::copy_encode(std::fs::File::open(&image)?, &mut c, 3)?;
        c.0
    };

    // The image alone, written again by ours and by the anchor, RUNS times each, alternating.
    let layout = ironbake::disk::read_layout(&image)?;
    let esp = ironbake::disk::read_esp(&image)?;
    let esp_files: Vec<ironbake::disk::EspFile> = esp
        .iter()
        .map(|(p, d)| ironbake::disk::EspFile {
            path: p.clone(),
            data: d.clone(),
        })
        .collect();
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let dest = work.join("ours.img");
        let _ = std::fs::remove_file(&dest);
        let t = std::time::Instant::now();
        ironbake::disk::write(
            &dest,
            &layout,
            &ironbake::disk::Contents {
                esp: &esp_files,
                slot_a: (&base, &overlay),
                copy_to_b: false,
                epoch: m.source_date_epoch,
                seed: &m.inputs_sha256,
            },
        )?;
        ours.push(t.elapsed().as_secs_f64());
        let (again, _) = netboot::layout::sha256_file(&dest)?;
        if again != image_sha {
            bail!("writing the image again gave other bytes ({again}, published {image_sha})");
        }
        anchor.push(anchor_disk(
            &layout,
            &esp,
            (&base, &overlay),
            &work.join("anchor.img"),
            &work,
        )?);
    }
    let anchor_table = run_out(
        Command::new("sgdisk")
            .arg("--print")
            .arg(work.join("anchor.img")),
    )?;
    let ours_table = run_out(Command::new("sgdisk").arg("--print").arg(&image))?;
    if anchor_table.replace(&work.join("anchor.img").display().to_string(), "")
        != ours_table.replace(&image.display().to_string(), "")
    {
        bail!("the anchor's partition table differs from ours:\n{anchor_table}\n{ours_table}");
    }

    // Boots: a fresh copy, 256 MiB larger than the image (room for the data partition), booted
    // twice; then the same version over PXE.
    let ns = qemu_tests::netns::Netns::new("bdisk")?;
    let (mut first, mut later) = (Vec::new(), Vec::new());
    let (mut first_fw, mut first_kernel) = (Vec::new(), Vec::new());
    let (mut later_fw, mut later_kernel) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let dir = work.join(format!("run{run}"));
        std::fs::create_dir_all(&dir)?;
        let copy = dir.join("disk.img");
        let cp = Command::new("cp")
            .arg("--sparse=always")
            .arg(&image)
            .arg(&copy)
            .status()?;
        if !cp.success() {
            bail!("copying the image");
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)?
            .set_len(image_len + (256 << 20))?;
        let (fw, kernel, console) = disk_boot(&ns, &copy, &dir.join("first"))?;
        if !console.contains("): made on this boot") {
            bail!("the first boot made no data partition:\n{console}");
        }
        first.push(fw + kernel);
        first_fw.push(fw);
        first_kernel.push(kernel);
        let (fw, kernel, console) = disk_boot(&ns, &copy, &dir.join("later"))?;
        if !console.contains("): kept") {
            bail!("the second boot did not keep the data partition:\n{console}");
        }
        later.push(fw + kernel);
        later_fw.push(fw);
        later_kernel.push(kernel);
        eprintln!(
            "run {}: from disk, first boot {:.1} s, later boot {:.1} s",
            run + 1,
            first[run],
            later[run]
        );
    }
    drop(ns);
    let mut pxe = Vec::new();
    let mut pxe_kernel = Vec::new();
    for run in 0..RUNS {
        let marks = pxe_boot_marks(&paths, &work.join(format!("pxe{run}")))?;
        pxe.push(marks[9] - marks[0]);
        pxe_kernel.push(marks[9] - marks[5]);
        eprintln!("run {}: PXE {:.1} s", run + 1, pxe[run]);
    }

    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (o, a) = (median(&mut ours), median(&mut anchor));
    let (f, l, p) = (median(&mut first), median(&mut later), median(&mut pxe));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### disk, {} (`cargo xtask bench disk`)\n",
        ironbake::bench::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. `ci-node@{}` with the disk-boot overlay and the `disk` output. Image \
         writes: {RUNS} each, alternating, medians; ours is `disk::write` (the image only, \
         checked to give the published bytes again), the anchor the shell route for the same \
         layout, GUIDs and ESP files (sgdisk, mkfs.fat --invariant, mtools, dd, sync; its \
         `sgdisk --print` checked equal to ours). Boots: QEMU {} with TCG, q35, OVMF, 2 \
         vCPUs, 1536 MiB, {RUNS} runs, medians; from disk: a fresh sparse copy 256 MiB larger \
         than the image, no NIC, booted twice (the first boot makes the data partition); PXE: \
         the same version through the boot server and iPXE, as `bench boot`.\n",
        ironbake::bench::machine(),
        m.version,
        qemu_version()
    );
    let _ = writeln!(md, "| figure | value |");
    let _ = writeln!(md, "| --- | ---: |");
    let _ = writeln!(
        md,
        "| build of the version (package layer cached) | {build_s:.1} s |"
    );
    let _ = writeln!(
        md,
        "| of which the disk image stage (UKI + image) | {stage_s:.2} s |"
    );
    let _ = writeln!(md, "| image write, ours | {o:.2} s |");
    let _ = writeln!(
        md,
        "| image write, anchor (sgdisk + mkfs.fat + mtools + dd) | {a:.2} s |"
    );
    let _ = writeln!(md, "| **ours / anchor** | **{:.2}** |", o / a);
    let _ = writeln!(md, "| disk.img length | {:.0} MiB |", mib(image_len));
    let _ = writeln!(
        md,
        "| disk.img allocated (sparse) | {:.0} MiB |",
        mib(allocated(&image)?)
    );
    let _ = writeln!(
        md,
        "| of which the layers (base + overlay squashfs) | {:.0} MiB |",
        mib(content)
    );
    let _ = writeln!(md, "| disk.img zstd -3 | {:.0} MiB |", mib(zstd_len));
    let _ = writeln!(
        md,
        "| from disk, first boot: power-on to kernel / kernel to ready / **total** | {:.1} / {:.1} / **{f:.1}** s |",
        median(&mut first_fw),
        median(&mut first_kernel)
    );
    let _ = writeln!(
        md,
        "| from disk, later boot: power-on to kernel / kernel to ready / **total** | {:.1} / {:.1} / **{l:.1}** s |",
        median(&mut later_fw),
        median(&mut later_kernel)
    );
    let _ = writeln!(
        md,
        "| PXE, same version: kernel to ready / **total** | {:.1} / **{p:.1}** s |",
        median(&mut pxe_kernel)
    );
    let _ = writeln!(md, "| **disk later boot / PXE boot** | **{:.2}** |", l / p);
    print!("{md}");
    if record {
        ironbake::bench::append_record(&md)?;
    }
    Ok(())
}

fn run_out(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}
