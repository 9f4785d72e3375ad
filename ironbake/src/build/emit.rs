//! Writing a version's outputs into its staging folder: the overlay layer and node templates,
//! the initramfs, the kernel and its command line, the disk image. Each step takes the plan
//! and the package layer and says what it wrote.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

use anyhow::{Context, Result};

use super::prepare::Prepared;
use super::{BASE_LAYER, INITRAMFS, OVERLAY_LAYER};
use crate::base::{self, Base, TreeView};
use crate::overlay::NODE_TEMPLATES_DIR;
use crate::plan::{Data, Kind, Plan};
use crate::progress::Progress;
use crate::publish::Staging;
use crate::recipe::SlotB;
use crate::{disk, initramfs};

/// Digests already known for outputs that were not written here (the cached base layer), so
/// the manifest does not hash them again.
pub type Known = BTreeMap<String, (String, u64)>;

/// The overlay layer (from the plan), the base layer (linked from the cache) and the node
/// templates.
pub fn rootfs(
    p: &Prepared,
    plan: &Plan,
    base: &Base,
    staging: &Staging,
    known: &mut Known,
    progress: &Progress,
) -> Result<()> {
    let vdir = staging.version_dir();
    let stage = progress.stage("mksquashfs overlay layer");
    let tree = staging.scratch("overlay");
    write_tree(plan, &tree)?;
    base::mksquashfs(
        &tree,
        &vdir.join(OVERLAY_LAYER),
        &p.recipe.squashfs,
        p.epoch,
        &[],
        &stage,
    )?;
    stage.done("");
    link_or_copy(&base.squashfs(), &vdir.join(BASE_LAYER))?;
    known.insert(
        BASE_LAYER.into(),
        (base.info.squashfs_sha256.clone(), base.info.squashfs_size),
    );
    for (dest, t) in &plan.node_templates {
        let path = vdir
            .join(NODE_TEMPLATES_DIR)
            .join(format!("{}.j2", dest.trim_start_matches('/')));
        fs::create_dir_all(path.parent().expect("has parent"))?;
        write_synced(&path, t.text.as_bytes())?;
    }
    Ok(())
}

/// The build cache's folder of compressed initramfs archives.
const INITRAMFS_CACHE: &str = "initramfs";

/// ironbake's first stage, with the drivers the kernel has (its compressed archive from the
/// build cache when a build before made the same).
pub fn initramfs(
    p: &Prepared,
    base: &Base,
    view: &TreeView,
    vdir: &Path,
    cache: &Path,
    progress: &Progress,
) -> Result<()> {
    let stage = progress.stage("initramfs");
    let release = &base.info.kernel_release;
    let ird = initramfs::build(
        view,
        release,
        &p.recipe.initramfs.modules,
        &format!("{}@{}", p.name, p.version),
        p.epoch,
        Some(&cache.join(INITRAMFS_CACHE)),
    )?;
    write_synced(&vdir.join(INITRAMFS), &ird.bytes)?;
    if !ird.skipped.is_empty() {
        stage.line(&format!(
            "kernel {release} lacks default drivers {}: left out",
            ird.skipped.join(", ")
        ));
    }
    stage.done(&format!(
        "{} modules, {:.1} MB ({:.1} MB unpacked)",
        ird.modules,
        ird.bytes.len() as f64 / 1e6,
        ird.uncompressed as f64 / 1e6
    ));
    Ok(())
}

/// `vmlinuz` and `cmdline`.
pub fn kernel(plan: &Plan, base: &Base, vdir: &Path) -> Result<()> {
    fs::copy(base.vmlinuz(), vdir.join("vmlinuz")).context("copying the kernel")?;
    write_synced(
        &vdir.join("cmdline"),
        format!("{}\n", plan.cmdline).as_bytes(),
    )
}

/// `disk.img`, from the version's kernel, initramfs and layers already in `vdir`, and its
/// chunk list `disk.chunks` (each piece's sha256, for installs over the network).
pub fn disk_image(
    p: &Prepared,
    plan: &Plan,
    base: &Base,
    vdir: &Path,
    known: &mut Known,
    progress: &Progress,
) -> Result<()> {
    let stage = progress.stage("disk image");
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let d = &p.recipe.disk;
    let base_len = fs::metadata(vdir.join(BASE_LAYER))?.len();
    let sizes = disk::layout::Sizes {
        esp_mib: d.esp_mib,
        base_mib: d
            .base_mib
            .unwrap_or_else(|| disk::layout::roomy_mib(base_len)),
        overlay_mib: d.overlay_mib,
        data_mib: d.data_mib,
    };
    let seed = &p.inputs_sha256;
    let layout = disk::layout::layout(&sizes, seed)?;
    let slot = 'a';
    let uki = disk::slot_uki(
        vdir,
        &disk::SlotVersion {
            recipe: &p.name,
            version: &p.version,
            cmdline: &plan.cmdline,
            kernel_release: &base.info.kernel_release,
        },
        slot,
        1,
    )?;
    let esp = [
        disk::EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: read(Path::new(disk::SYSTEMD_BOOT))?,
        },
        disk::EspFile {
            path: format!("EFI/Linux/{}", disk::UkiName::initial(&p.name, slot).file()),
            data: uki,
        },
        disk::EspFile {
            path: "loader/loader.conf".into(),
            data: b"timeout 0\neditor no\n".to_vec(),
        },
    ];
    // Hashed while it is written: each piece once it is final.
    let image = vdir.join(disk::FILE);
    let mut file = disk::create(&image, &layout)?;
    // Its own open file (not a clone of the writer's): its seeks for data must not move the
    // writer's offset.
    let reader = fs::File::open(&image).with_context(|| format!("reading {}", image.display()))?;
    let written = netboot::layout::Written::default();
    let contents = disk::Contents {
        esp: &esp,
        slot_a: (&vdir.join(BASE_LAYER), &vdir.join(OVERLAY_LAYER)),
        copy_to_b: d.slot_b == SlotB::Copy,
        epoch: p.epoch,
        seed,
    };
    let (wrote, hashed) = std::thread::scope(|s| {
        let hashing = s.spawn(|| netboot::layout::disk_chunks_as_written(&reader, &written));
        let wrote = disk::write_into(&mut file, &layout, &contents, &|at| written.advance(at));
        match &wrote {
            Ok(()) => written.finish(),
            Err(_) => written.abandon(),
        }
        (wrote, hashing.join())
    });
    wrote?;
    let (chunks, sha256, len) = hashed
        .map_err(|_| anyhow::anyhow!("hashing {} failed", image.display()))?
        .with_context(|| format!("reading {}", image.display()))?;
    write_synced(&vdir.join(netboot::layout::DISK_CHUNKS), chunks.as_bytes())?;
    known.insert(disk::FILE.to_string(), (sha256, len));
    stage.done(&format!(
        "{} MiB, {} partitions, slot {slot} booting",
        layout.size >> 20,
        layout.parts.len()
    ));
    Ok(())
}

/// Writes `bytes` to a new file at `path` and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// A hard link to `from` at `to`, or a synced copy where a link cannot be made.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::File::open(to)?.sync_all()?;
    }
    Ok(())
}

/// Writes the plan's entries under `dir` with their modes and owners (the build runs as root).
pub fn write_tree(plan: &Plan, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for (path, e) in &plan.entries {
        let p = dir.join(path.trim_start_matches('/'));
        match &e.kind {
            Kind::Dir => {
                fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            }
            Kind::File(Data::Bytes(b)) => {
                fs::write(&p, b).with_context(|| format!("writing {}", p.display()))?
            }
            Kind::File(Data::Path(src, _)) => {
                fs::copy(src, &p)
                    .with_context(|| format!("copying {} to {}", src.display(), p.display()))?;
            }
            Kind::Symlink(t) => {
                symlink(t, &p).with_context(|| format!("linking {}", p.display()))?
            }
        }
        if !matches!(e.kind, Kind::Symlink(_)) {
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))?;
        }
        lchown(&p, Some(e.uid), Some(e.gid))
            .with_context(|| format!("setting the owner of {path} (the build needs root)"))?;
    }
    Ok(())
}
