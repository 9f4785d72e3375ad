//! `build`: recipe and overlays in, a published version out.
//!
//! prepare (recipe, overlays, inventory, apt sources pinned, artifacts fetched, version,
//! templates checked: `prepare.rs`, `sources.rs`, `templates.rs`, `digest.rs`) -> package
//! layer (cached: `crate::base`) -> overlay plan (`crate::plan`) -> emit (overlay layer,
//! node templates, initramfs, kernel, disk image: `emit.rs`) -> manifest and SHA256SUMS
//! (`manifest.rs`) -> publish (`crate::publish`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use netboot::layout::{self, Manifest};

use crate::base::{self, TreeView};
use crate::ipxe;
use crate::plan::{self, HostFiles};
use crate::progress::Progress;
use crate::project::Paths;
use crate::publish::{self, Staging};
use crate::recipe::Output;

mod digest;
mod emit;
mod manifest;
mod prepare;
mod sources;
mod templates;

pub use emit::write_tree;

/// The name of the package layer in a version folder.
pub const BASE_LAYER: &str = "base.squashfs";
/// The name of the overlay layer in a version folder.
pub const OVERLAY_LAYER: &str = "overlay.squashfs";
/// The name of the initramfs in a version folder (iPXE names it on the kernel line).
pub const INITRAMFS: &str = "initrd.img";

/// Choices made when a build is started.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Overlays of the recipe to leave out of this build (`--without`), for example one whose
    /// repository cannot be reached from here. Recorded in the manifest.
    pub without: Vec<String>,
}

/// What a build did.
#[derive(Debug)]
pub struct Built {
    /// The published folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// True if this version was already published and nothing was built.
    pub already_published: bool,
    /// True if the package layer came from the cache.
    pub base_cached: bool,
}

/// The build host's files, read as they are (what [`plan::resolve`] sees of overlay files).
struct Host;

impl HostFiles for Host {
    fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Builds recipe `name` and publishes it under `paths.out`; a version that is already
/// published (the same inputs and builder) is made `current` again instead.
pub fn build(
    paths: &Paths,
    name: &str,
    options: &BuildOptions,
    progress: &Progress,
) -> Result<Built> {
    let p = prepare::prepare(paths, name, options, progress)?;
    let existing = paths.out.join(name).join(&p.version);
    if existing.is_dir() {
        let manifest = layout::load_manifest(&existing)?;
        publish::set_current(&paths.out, name, &p.version)?;
        ipxe::publish(&paths.out)?;
        return Ok(Built {
            dir: existing,
            manifest,
            already_published: true,
            base_cached: true,
        });
    }
    publish::clean_stale(&paths.out)?;

    let base = base::ensure(&p.base_spec, &p.keys, &paths.cache, progress)?;
    if base.cached {
        progress.println(&format!(
            "      package layer: cached ({})",
            &base.info.key[..12]
        ));
    }
    let view = TreeView {
        root: base.rootfs(),
    };
    let stage = progress.stage("plan overlay layer");
    let plan = plan::resolve(&plan::Inputs {
        recipe_name: name,
        recipe: &p.recipe,
        version: &p.version,
        overlays: &p.overlays,
        artifacts: &p.fetched,
        base: &view,
        host: &Host,
        epoch: p.epoch,
    })?;
    stage.done(&format!("{} paths", plan.entries.len()));

    let staging = Staging::new(&paths.out, name, &p.version)?;
    let vdir = staging.version_dir();
    let outputs = &p.recipe.outputs;
    let mut known = emit::Known::new();
    if outputs.contains(&Output::Rootfs) {
        emit::rootfs(&p, &plan, &base, &staging, &mut known, progress)?;
    }
    if outputs.contains(&Output::Initramfs) {
        emit::initramfs(&p, &base, &view, &vdir, &paths.cache, progress)?;
    }
    if outputs.contains(&Output::Kernel) {
        emit::kernel(&plan, &base, &vdir)?;
    }
    if outputs.contains(&Output::Disk) {
        emit::disk_image(&p, &plan, &base, &vdir, &mut known, progress)?;
    }

    let stage = progress.stage("manifest");
    let manifest = manifest::write(&p, &plan, &base, &vdir, &known)?;
    stage.done(&format!(
        "{} outputs, {} packages",
        manifest.outputs.len(),
        manifest.packages.len()
    ));

    let stage = progress.stage("publish");
    let dir = staging.publish()?;
    ipxe::publish(&paths.out)?;
    stage.done(&format!("{}", dir.display()));
    Ok(Built {
        dir,
        manifest,
        already_published: false,
        base_cached: base.cached,
    })
}

/// Fails unless this process may build images (mmdebstrap's root mode, chown).
pub fn require_root() -> Result<()> {
    if !crate::host::is_root() {
        bail!(
            "building images needs root (mmdebstrap's root mode and file owners in the image): \
             run it as root or with sudo"
        );
    }
    Ok(())
}
