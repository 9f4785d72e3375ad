//! `cargo xtask bench disk`: a disk image's write time (ours against the shell route with
//! sgdisk, mkfs.fat, mtools and dd, for the same layout and files), its sizes, and power-on to
//! ready from disk (first boot, which makes the data partition, and a later one) against the
//! same version booted over PXE in the same run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};
use ironbake::disk;
use netboot::layout::Manifest;

use super::{RUNS, pxe_boot_marks, unix_s, watch_ready};
use crate::qemu::{Vm, VmConfig};
use crate::report::{Figure, Report, machine, median, qemu_version};

/// The published image and what the run measured of it.
struct Measured {
    manifest: Manifest,
    image: PathBuf,
    image_len: u64,
    allocated: u64,
    layers: u64,
    zstd_len: u64,
    build_s: f64,
    stage_s: f64,
    /// Image writes: ours, the anchor's.
    writes: (Vec<f64>, Vec<f64>),
    /// Boots from disk, first and later: (power-on to kernel, kernel to ready) per run.
    first: Vec<(f64, f64)>,
    later: Vec<(f64, f64)>,
    /// Boots over PXE: (kernel to ready, total) per run.
    pxe: Vec<(f64, f64)>,
}

/// Runs the benchmark for the project at `project`.
pub fn run(project: &Path) -> Result<Report> {
    if !crate::require::vm_tests() {
        bail!("the VM benchmark cannot run here");
    }
    let work = project.join("target").join("bench-disk");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let paths = crate::fixture::disk_project("bench-disk-out");
    let mut m = build(&paths)?;
    m.writes = writes(&m, &work)?;
    let ns = crate::netns::Netns::new("bdisk")?;
    for run in 0..RUNS {
        let (first, later) = disk_boots(&ns, &m, &work.join(format!("run{run}")))?;
        eprintln!(
            "run {}: from disk, first boot {:.1} s, later boot {:.1} s",
            run + 1,
            first.0 + first.1,
            later.0 + later.1
        );
        m.first.push(first);
        m.later.push(later);
    }
    drop(ns);
    for run in 0..RUNS {
        let marks = pxe_boot_marks(&paths.out, &work.join(format!("pxe{run}")))?;
        m.pxe.push((marks[9] - marks[5], marks[9] - marks[0]));
        eprintln!("run {}: PXE {:.1} s", run + 1, marks[9] - marks[0]);
    }
    Ok(report(&mut m))
}

/// Builds the disk project's `ci-node` and measures the image's sizes.
fn build(paths: &ironbake::Paths) -> Result<Measured> {
    let progress = ironbake::progress::Progress::new(false);
    let t = Instant::now();
    let built = ironbake::build(
        paths,
        "ci-node",
        &ironbake::BuildOptions::default(),
        &progress,
    )?;
    let build_s = t.elapsed().as_secs_f64();
    let stage_s = progress
        .times()
        .iter()
        .find(|(n, _)| n == "disk image")
        .map(|(_, d)| d.as_secs_f64())
        .context("the build has no disk image stage")?;
    let image = built.dir.join(disk::FILE);
    let image_len = std::fs::metadata(&image)?.len();
    let layers = std::fs::metadata(built.dir.join(ironbake::BASE_LAYER))?.len()
        + std::fs::metadata(built.dir.join(ironbake::OVERLAY_LAYER))?.len();
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
    Ok(Measured {
        manifest: built.manifest,
        allocated: allocated(&image)?,
        image,
        image_len,
        layers,
        zstd_len,
        build_s,
        stage_s,
        writes: (vec![], vec![]),
        first: vec![],
        later: vec![],
        pxe: vec![],
    })
}

/// The image alone, written again by ours and by the anchor, [`RUNS`] times each,
/// alternating; ours must give the published bytes, the anchor the same table.
fn writes(m: &Measured, work: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let (image_sha, _) = netboot::layout::sha256_file(&m.image)?;
    let vdir = m.image.parent().context("the version folder")?;
    let (base, overlay) = (
        vdir.join(ironbake::BASE_LAYER),
        vdir.join(ironbake::OVERLAY_LAYER),
    );
    let layout = disk::read_layout(&m.image)?;
    let esp = disk::read_esp(&m.image)?;
    let esp_files: Vec<disk::EspFile> = esp
        .iter()
        .map(|(p, d)| disk::EspFile {
            path: p.clone(),
            data: d.clone(),
        })
        .collect();
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let dest = work.join("ours.img");
        let _ = std::fs::remove_file(&dest);
        let t = Instant::now();
        let contents = disk::Contents {
            esp: &esp_files,
            slot_a: (&base, &overlay),
            copy_to_b: false,
            epoch: m.manifest.source_date_epoch,
            seed: &m.manifest.inputs_sha256,
        };
        disk::write(&dest, &layout, &contents)?;
        ours.push(t.elapsed().as_secs_f64());
        let (again, _) = netboot::layout::sha256_file(&dest)?;
        if again != image_sha {
            bail!("writing the image again gave other bytes ({again}, published {image_sha})");
        }
        let shell = work.join("anchor.img");
        anchor.push(anchor_disk(&layout, &esp, (&base, &overlay), &shell, work)?);
    }
    let anchor_img = work.join("anchor.img");
    let anchor_table = run_out(Command::new("sgdisk").arg("--print").arg(&anchor_img))?;
    let ours_table = run_out(Command::new("sgdisk").arg("--print").arg(&m.image))?;
    if anchor_table.replace(&anchor_img.display().to_string(), "")
        != ours_table.replace(&m.image.display().to_string(), "")
    {
        bail!("the anchor's partition table differs from ours:\n{anchor_table}\n{ours_table}");
    }
    Ok((ours, anchor))
}

/// A fresh copy of the image, 256 MiB larger (room for the data partition), booted twice:
/// (power-on to kernel, kernel to ready) of the first boot and of the later one.
fn disk_boots(
    ns: &crate::netns::Netns,
    m: &Measured,
    dir: &Path,
) -> Result<((f64, f64), (f64, f64))> {
    std::fs::create_dir_all(dir)?;
    let copy = dir.join("disk.img");
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(&m.image)
        .arg(&copy)
        .status()?;
    if !cp.success() {
        bail!("copying the image");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)?
        .set_len(m.image_len + (256 << 20))?;
    let (fw, kernel, console) = disk_boot(ns, &copy, &dir.join("first"))?;
    if !console.contains("): made on this boot") {
        bail!("the first boot made no data partition:\n{console}");
    }
    let first = (fw, kernel);
    let (fw, kernel, console) = disk_boot(ns, &copy, &dir.join("later"))?;
    if !console.contains("): kept") {
        bail!("the second boot did not keep the data partition:\n{console}");
    }
    Ok((first, (fw, kernel)))
}

/// The medians of one part of each run.
fn med(runs: &[(f64, f64)], part: impl Fn(&(f64, f64)) -> f64) -> f64 {
    median(&mut runs.iter().map(part).collect::<Vec<_>>())
}

fn report(m: &mut Measured) -> Report {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (o, a) = (median(&mut m.writes.0), median(&mut m.writes.1));
    let f = med(&m.first, |r| r.0 + r.1);
    let l = med(&m.later, |r| r.0 + r.1);
    let p = med(&m.pxe, |r| r.1);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### disk, {} (`cargo xtask bench disk`)\n",
        crate::report::today()
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
        machine(),
        m.manifest.version,
        qemu_version()
    );
    let rows = [
        (
            "build of the version (package layer cached)".to_string(),
            format!("{:.1} s", m.build_s),
        ),
        (
            "of which the disk image stage (UKI + image)".into(),
            format!("{:.2} s", m.stage_s),
        ),
        ("image write, ours".into(), format!("{o:.2} s")),
        (
            "image write, anchor (sgdisk + mkfs.fat + mtools + dd)".into(),
            format!("{a:.2} s"),
        ),
        ("**ours / anchor**".into(), format!("**{:.2}**", o / a)),
        (
            "disk.img length".into(),
            format!("{:.0} MiB", mib(m.image_len)),
        ),
        (
            "disk.img allocated (sparse)".into(),
            format!("{:.0} MiB", mib(m.allocated)),
        ),
        (
            "of which the layers (base + overlay squashfs)".into(),
            format!("{:.0} MiB", mib(m.layers)),
        ),
        (
            "disk.img zstd -3".into(),
            format!("{:.0} MiB", mib(m.zstd_len)),
        ),
        (
            "from disk, first boot: power-on to kernel / kernel to ready / **total**".into(),
            format!(
                "{:.1} / {:.1} / **{f:.1}** s",
                med(&m.first, |r| r.0),
                med(&m.first, |r| r.1)
            ),
        ),
        (
            "from disk, later boot: power-on to kernel / kernel to ready / **total**".into(),
            format!(
                "{:.1} / {:.1} / **{l:.1}** s",
                med(&m.later, |r| r.0),
                med(&m.later, |r| r.1)
            ),
        ),
        (
            "PXE, same version: kernel to ready / **total**".into(),
            format!("{:.1} / **{p:.1}** s", med(&m.pxe, |r| r.0)),
        ),
        (
            "**disk later boot / PXE boot**".into(),
            format!("**{:.2}**", l / p),
        ),
    ];
    let rows: Vec<(String, String)> = rows.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    crate::report::figure_table(&mut md, &rows);
    let figures = vec![
        Figure::info("image write, ours / anchor", format!("{:.2}x", o / a)),
        Figure::info(
            "power-on to ready from disk, later boot",
            format!("{l:.1} s"),
        ),
        Figure::info("disk later boot / PXE boot", format!("{:.2}", l / p)),
    ];
    Report::new("disk", md, figures)
}

/// Power-on to the ready line of a VM booting `disk` alone (no NIC): (power-on to kernel
/// start, kernel start to ready), in seconds, and the console.
fn disk_boot(ns: &crate::netns::Netns, disk: &Path, dir: &Path) -> Result<(f64, f64, String)> {
    let cfg = VmConfig {
        name: "bench-disk".into(),
        boot: crate::qemu::ovmf_disk(),
        mem_mib: 1536,
        cpus: 2,
        nic: None,
        disks: vec![disk.to_path_buf()],
        links: vec![],
    };
    let power_on = SystemTime::now();
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
    layers: (&Path, &Path),
    dest: &Path,
    work: &Path,
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
        let mut parent = Path::new(path).parent();
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
fn allocated(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

fn run_out(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}
