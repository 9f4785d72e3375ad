//! ironbake's netboot initramfs: busybox, the first-stage `/init`, and only the kernel modules
//! needed (with their dependencies from `modules.dep`), as a deterministic cpio compressed
//! with zstd.
//!
//! Two archives, one after the other (the kernel unpacks each in turn, as it does early
//! microcode before an initramfs): first a tiny uncompressed one with what names the version
//! (`/etc/ironbake/release`), then the compressed one with everything else. The second depends
//! only on the kernel, its drivers and ironbake's own scripts, so a rebuild of the same base
//! (an overlay edit) takes it compressed from the build cache instead of compressing it again
//! ([`build`]'s `cache`).
//!
//! Why busybox and a shell script rather than an init of our own in Rust: the first stage is
//! a short sequence of well-known steps (insmod, DHCP, HTTP with resume, sha256, mount,
//! switch_root) that busybox's applets already do, in one 2 MB static binary from Debian; the
//! script is short enough to read on a console when a boot goes wrong, and a rescue shell
//! comes for free.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::checked::ModuleName;
use crate::plan::BaseView;
use netboot::cpio::{self, Body, Entry};

/// The first stage.
pub const INIT: &str = include_str!("init.sh");
/// The first stage's install mode, sourced by `/init`.
pub const INSTALL: &str = include_str!("install.sh");
/// udhcpc's hook.
pub const UDHCPC_SCRIPT: &str = include_str!("udhcpc.script");

/// Modules the first stage always loads: what the root needs, whatever the hardware.
pub const ALWAYS: &[&str] = &["squashfs", "overlay", "loop"];

/// Drivers every initramfs carries: QEMU's virtio, the homelab's NICs, storage for local mode,
/// and the filesystems the root needs. Hardware drivers are loaded only for devices that are
/// present (matched by their modalias, as udev would); [`ALWAYS`] and the recipe's own
/// modules are loaded on every boot.
pub const DEFAULT_MODULES: &[&str] = &[
    // QEMU
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    // NICs: Intel, Realtek, Mellanox ConnectX-3 (mlx4) and later (mlx5)
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "r8169",
    "mlx4_core",
    "mlx4_en",
    "mlx5_core",
    // storage for local mode
    "ahci",
    "nvme",
    "sd_mod",
    // the root
    "squashfs",
    "overlay",
    "loop",
    // install mode: the ESP, and the firmware's boot entries
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "efivarfs",
];

/// zstd level for the initramfs. Measured on the default set (13.8 MB of cpio): level 9 gives
/// 3.6 MB in 0.44 s, level 19 gives 3.2 MB in 7.2 s; every rebuild pays this, the node does not.
const ZSTD_LEVEL: i32 = 9;

/// A module's name as modprobe spells it: file stem, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module path -> its dependencies' paths.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect()
}

/// The modules to load for `wanted`, dependencies first, each once. Names in `builtin` need
/// nothing. Returns the load order (paths) and the wanted names this kernel does not have.
pub fn load_order(
    dep: &BTreeMap<String, Vec<String>>,
    builtin: &BTreeSet<String>,
    wanted: &[String],
) -> (Vec<String>, Vec<String>) {
    let by_name: BTreeMap<String, &String> = dep.keys().map(|p| (module_name(p), p)).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    fn visit(
        p: &str,
        dep: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(p.to_string()) {
            return;
        }
        for d in dep.get(p).into_iter().flatten() {
            visit(d, dep, seen, order);
        }
        order.push(p.to_string());
    }
    for w in wanted {
        let name = w.replace('-', "_");
        match by_name.get(&name) {
            Some(p) => visit(p, dep, &mut seen, &mut order),
            None if builtin.contains(&name) => {}
            None => missing.push(w.clone()),
        }
    }
    (order, missing)
}

/// What an initramfs holds, for the build summary and the benchmark.
#[derive(Debug, Clone)]
pub struct Built {
    /// The compressed archive.
    pub bytes: Vec<u8>,
    /// Size before compression.
    pub uncompressed: u64,
    /// Modules included.
    pub modules: usize,
    /// Default drivers this kernel lacks (skipped).
    pub skipped: Vec<String>,
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o755,
        body: Body::Dir,
    }
}

fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
    Entry {
        path: path.into(),
        mode,
        body: Body::File(data),
    }
}

/// The drivers an initramfs carries: `modules.dep`, and the load order of the default set
/// and the recipe's modules (dependencies first).
struct Drivers {
    dep: BTreeMap<String, Vec<String>>,
    order: Vec<String>,
    skipped: Vec<String>,
}

/// Resolves the default drivers and `extra` (each of which must exist) in the kernel's
/// `modules.dep`; default drivers this kernel lacks are skipped.
fn drivers(base: &dyn BaseView, release: &str, extra: &[String]) -> Result<Drivers> {
    let moddir = format!("/lib/modules/{release}");
    let dep_text = base
        .read(&format!("{moddir}/modules.dep"))
        .with_context(|| format!("{moddir}/modules.dep is missing from the image"))?;
    let dep = parse_modules_dep(&String::from_utf8_lossy(&dep_text));
    let builtin: BTreeSet<String> = base
        .read(&format!("{moddir}/modules.builtin"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(module_name)
                .collect()
        })
        .unwrap_or_default();
    let (_, missing_extra) = load_order(&dep, &builtin, extra);
    if !missing_extra.is_empty() {
        bail!(
            "the recipe's initramfs modules {} are not in kernel {release} (not in modules.dep, \
             not built in)",
            missing_extra.join(", ")
        );
    }
    let wanted: Vec<String> = DEFAULT_MODULES
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect();
    let (order, skipped) = load_order(&dep, &builtin, &wanted);
    Ok(Drivers {
        dep,
        order,
        skipped,
    })
}

/// Everything but the modules: folders, device nodes, busybox, the first stage and what it
/// reads about this image.
fn skeleton(busybox: Vec<u8>, release: &str, extra: &[String]) -> Vec<Entry> {
    let mut v = vec![dir("lib/modules"), dir(&format!("lib/modules/{release}"))];
    for d in [
        "bin",
        "dev",
        "etc",
        "etc/ironbake",
        "lib",
        "newroot",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "tmp",
        "usr",
        "usr/bin",
        "usr/sbin",
    ] {
        v.push(dir(d));
    }
    let always: String = ALWAYS
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .map(|m| format!("{m}\n"))
        .collect();
    v.extend([
        Entry {
            path: "dev/console".into(),
            mode: 0o600,
            body: Body::CharDev(5, 1),
        },
        Entry {
            path: "dev/null".into(),
            mode: 0o666,
            body: Body::CharDev(1, 3),
        },
        file("bin/busybox", 0o755, busybox),
        Entry {
            path: "bin/sh".into(),
            mode: 0o777,
            body: Body::Symlink("busybox".into()),
        },
        file("init", 0o755, INIT.as_bytes().to_vec()),
        file(
            "etc/ironbake/install.sh",
            0o644,
            INSTALL.as_bytes().to_vec(),
        ),
        file(
            "etc/ironbake/udhcpc.script",
            0o755,
            UDHCPC_SCRIPT.as_bytes().to_vec(),
        ),
        file(
            "etc/ironbake/kernel-release",
            0o644,
            format!("{release}\n").into_bytes(),
        ),
        file("etc/ironbake/modules.always", 0o644, always.into_bytes()),
    ]);
    v
}

/// The modules, their folders, and the `modules.dep` and `modules.alias` busybox modprobe
/// reads: only the included modules' lines, so every alias it can resolve names a module
/// that is here.
fn module_entries(base: &dyn BaseView, release: &str, d: &Drivers) -> Result<Vec<Entry>> {
    let moddir = format!("lib/modules/{release}");
    let included: BTreeSet<String> = d.order.iter().map(|p| module_name(p)).collect();
    let dep_subset: String = d
        .order
        .iter()
        .map(|p| {
            let deps: String = d.dep[p].iter().map(|x| format!(" {x}")).collect();
            format!("{p}:{deps}\n")
        })
        .collect();
    let alias_text = base
        .read(&format!("/{moddir}/modules.alias"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let alias_subset: String = alias_text
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|m| included.contains(&m.replace('-', "_")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let mut v = vec![
        file(
            &format!("{moddir}/modules.dep"),
            0o644,
            dep_subset.into_bytes(),
        ),
        file(
            &format!("{moddir}/modules.alias"),
            0o644,
            alias_subset.into_bytes(),
        ),
    ];
    for m in &d.order {
        let path = format!("{moddir}/{m}");
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            v.push(dir(&parent));
        }
        let data = base
            .read(&format!("/{path}"))
            .with_context(|| format!("reading /{path} from the image"))?;
        v.push(file(&path, 0o644, data));
    }
    Ok(v)
}

/// Builds the initramfs of an image from its root filesystem (`base`), for kernel `release`.
/// `extra` are the recipe's own modules: each must exist. `label` goes into
/// `/etc/ironbake/release` (`RECIPE@VERSION`), in the leading uncompressed archive. With
/// `cache` (a folder), the compressed archive is kept there under the digest of its contents
/// and taken from there when the same contents come again.
pub fn build(
    base: &dyn BaseView,
    release: &str,
    extra: &[ModuleName],
    label: &str,
    epoch: u64,
    cache: Option<&Path>,
) -> Result<Built> {
    let extra: Vec<String> = extra.iter().map(|m| m.to_string()).collect();
    let d = drivers(base, release, &extra)?;
    let busybox = base
        .read("/bin/busybox")
        .context("the image has no /bin/busybox (the busybox-static package)")?;
    // One entry a path, sorted: folders that several modules share appear once.
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    for e in skeleton(busybox, release, &extra)
        .into_iter()
        .chain(module_entries(base, release, &d)?)
    {
        files.insert(e.path.clone(), e);
    }
    let entries: Vec<Entry> = files.into_values().collect();
    let mut raw = Vec::new();
    let uncompressed = cpio::write(&mut raw, &entries, epoch)?;
    let compressed = match cache {
        Some(dir) => cached_compress(dir, &raw)?,
        None => compress(&raw)?,
    };
    let mut bytes = Vec::new();
    let head = [
        dir("etc"),
        dir("etc/ironbake"),
        file(
            "etc/ironbake/release",
            0o644,
            format!("{label}\n").into_bytes(),
        ),
    ];
    let head_len = cpio::write(&mut bytes, &head, epoch)?;
    // The compressed archive starts 4-byte aligned (newc pads to 4; this says so).
    debug_assert_eq!(bytes.len() % 4, 0);
    bytes.extend_from_slice(&compressed);
    Ok(Built {
        bytes,
        uncompressed: uncompressed + head_len,
        modules: d.order.len(),
        skipped: d.skipped,
    })
}

fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(raw, ZSTD_LEVEL).context("compressing the initramfs")
}

/// Compressed archives kept in a build cache: the newest few.
const CACHE_KEEP: usize = 8;

/// `raw` compressed, from `dir` when it is there (under the sha256 of `raw` and the level),
/// else compressed now and kept there (written aside, then renamed: never half a file).
fn cached_compress(dir: &Path, raw: &[u8]) -> Result<Vec<u8>> {
    let key = crate::digest::sha256_hex(raw);
    let path = dir.join(format!("{key}-zstd{ZSTD_LEVEL}.cpio.zst"));
    if let Ok(bytes) = std::fs::read(&path) {
        // A cached file that does not decompress to `raw` (damaged) is made again.
        if zstd::bulk::decompress(&bytes, raw.len()).is_ok_and(|d| d == raw) {
            // Used now: the newest, as far as pruning goes.
            let _ = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(bytes);
        }
    }
    let bytes = compress(raw)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{key}.tmp"));
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    prune(dir);
    Ok(bytes)
}

/// Keeps the [`CACHE_KEEP`] newest archives in `dir`.
fn prune(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cpio.zst"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let extra = files.len().saturating_sub(CACHE_KEEP);
    for (_, p) in files.into_iter().take(extra) {
        let _ = std::fs::remove_file(p);
    }
}

/// The Debian package whose static busybox the initramfs carries; added to every image that
/// publishes an initramfs, so its version is in the manifest like any other package.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_archive_comes_from_the_cache_and_a_damaged_one_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{} ", i.wrapping_mul(2_654_435_761) % 1000).into_bytes())
            .collect();
        let first = cached_compress(dir.path(), &raw).unwrap();
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), first);
        assert_eq!(zstd::bulk::decompress(&first, raw.len()).unwrap(), raw);
        // From the cache: what is there (here, another valid compression of the same bytes)
        // is what is returned, not compressed again.
        let other = zstd::bulk::compress(&raw, 1).unwrap();
        assert_ne!(other, first);
        std::fs::write(&kept[0], &other).unwrap();
        assert_eq!(cached_compress(dir.path(), &raw).unwrap(), other);
        // Damaged: made again, and the cache mended.
        std::fs::write(&kept[0], b"not zstd").unwrap();
        assert_eq!(cached_compress(dir.path(), &raw).unwrap(), first);
        assert_eq!(std::fs::read(&kept[0]).unwrap(), first);
        // Only the newest few are kept.
        for i in 0..CACHE_KEEP + 3 {
            cached_compress(dir.path(), format!("archive {i}").as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), CACHE_KEEP);
    }

    const DEP: &str = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci-legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci-legacy_dev.ko:
";

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = parse_modules_dep(DEP);
        let builtin = BTreeSet::from(["loop".to_string()]);
        let (order, missing) = load_order(
            &dep,
            &builtin,
            &[
                "virtio_pci".into(),
                "virtio-net".into(),
                "loop".into(),
                "nope".into(),
            ],
        );
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_legacy_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert_eq!(missing, ["nope"]);
    }

    #[test]
    fn module_names_follow_modprobe() {
        assert_eq!(module_name("kernel/drivers/scsi/sd_mod.ko"), "sd_mod");
        assert_eq!(module_name("kernel/x/nvme-core.ko.zst"), "nvme_core");
    }
}
