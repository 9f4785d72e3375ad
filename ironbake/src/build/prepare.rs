//! Everything a build is made from, resolved and pinned before anything is built: the recipe
//! and its overlays, the apt sources, the artifacts, the package layer's inputs, the version,
//! and every template checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::digest::{self, BUILDER_SHA256};
use super::{BuildOptions, sources, templates};
use crate::base::{self, BaseSpec};
use crate::digest::sha256_hex;
use crate::overlay::{self, Overlay};
use crate::plan::FetchedArtifact;
use crate::progress::Progress;
use crate::project::Paths;
use crate::recipe::{self, Output, Recipe};
use crate::{artifact, disk, initramfs};

/// Everything a build is made from.
pub struct Prepared {
    /// The recipe's name.
    pub name: String,
    /// The recipe.
    pub recipe: Recipe,
    /// sha256 of the recipe file.
    pub recipe_sha: String,
    /// The overlays in order.
    pub overlays: Vec<Overlay>,
    /// The package layer's inputs.
    pub base_spec: BaseSpec,
    /// Signing keys for overlay apt sources.
    pub keys: Vec<(String, PathBuf)>,
    /// Fetched artifacts.
    pub fetched: Vec<FetchedArtifact>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// The build host's EFI binaries a disk image carries, with their sha256.
    pub efi: BTreeMap<String, String>,
    /// The digest of all inputs.
    pub inputs_sha256: String,
    /// The version to publish.
    pub version: String,
    /// The kernel package installed.
    pub kernel_package: String,
    /// The recipe's overlays that this build leaves out.
    pub left_out: Vec<String>,
}

/// Resolves and pins every input of recipe `name`.
pub fn prepare(
    paths: &Paths,
    name: &str,
    options: &BuildOptions,
    progress: &Progress,
) -> Result<Prepared> {
    let stage = progress.stage("resolve recipe and overlays");
    let (recipe, recipe_text) = recipe::load(&paths.project, name)?;
    let mut left_out = options.without.clone();
    left_out.sort();
    left_out.dedup();
    let overlays = kept_overlays(name, &recipe.overlays, &left_out)?
        .iter()
        .map(|o| overlay::load(&paths.project, o))
        .collect::<Result<Vec<_>>>()?;
    let inv = netboot::inventory::load(&paths.project)?;
    let kernel_package = kernel_package(&recipe, &overlays)?;
    let efi = efi_inputs(name, &recipe, &overlays)?;
    stage.done(&match left_out.as_slice() {
        [] => format!("{} overlays", overlays.len()),
        l => format!(
            "{} overlays; left out as asked: {}",
            overlays.len(),
            l.join(", ")
        ),
    });

    let stage = progress.stage("pin apt sources");
    let pinned = sources::pin(paths, name, &recipe, &overlays)?;
    stage.done(&format!(
        "{} sources, SOURCE_DATE_EPOCH={}",
        pinned.uses.len(),
        pinned.epoch
    ));

    let fetched = fetch_artifacts(paths, name, &overlays, progress)?;
    let base_spec = base_spec(
        &recipe,
        &overlays,
        &kernel_package,
        pinned.uses,
        pinned.epoch,
    );
    let mut p = Prepared {
        name: name.to_string(),
        recipe_sha: sha256_hex(recipe_text.as_bytes()),
        recipe,
        overlays,
        base_spec,
        keys: pinned.keys,
        fetched,
        epoch: pinned.epoch,
        efi,
        inputs_sha256: String::new(),
        version: String::new(),
        kernel_package,
        left_out,
    };
    p.inputs_sha256 = inputs(&p).sha256();
    p.version = digest::version(p.recipe.version.as_str(), &p.inputs_sha256);
    progress.println(&format!("      {name}@{}", p.version));

    // Every template now, before the long steps, so a template error costs seconds.
    let checked = templates::check(&p.recipe, name, &p.version, &p.overlays, &inv)?;
    if checked > 0 {
        progress.println(&format!(
            "      {checked} node template renderings checked against inventory.toml"
        ));
    }
    Ok(p)
}

/// What the version's digest is made of.
fn inputs(p: &Prepared) -> digest::Inputs<'_> {
    digest::Inputs {
        builder: BUILDER_SHA256,
        left_out: &p.left_out,
        recipe: &p.name,
        recipe_sha256: &p.recipe_sha,
        base: p.base_spec.key(),
        overlays: p
            .overlays
            .iter()
            .map(|o| (o.name.as_str(), o.sha256.as_str()))
            .collect(),
        artifacts: p
            .fetched
            .iter()
            .map(|a| {
                let spec = &a.spec;
                let (dest, mode) = (spec.dest.as_str(), spec.mode.to_string());
                (
                    a.overlay.as_str(),
                    spec.name.as_str(),
                    a.sha256.as_str(),
                    dest,
                    mode,
                )
            })
            .collect(),
        outputs: &p.recipe.outputs,
        efi: &p.efi,
    }
}

/// The overlays of `recipe` less those in `without`, each of which must be one of them.
pub fn kept_overlays(
    recipe_name: &str,
    overlays: &[crate::checked::Name],
    without: &[String],
) -> Result<Vec<String>> {
    for w in without {
        if !overlays.iter().any(|o| o.as_str() == w) {
            bail!(
                "--without {w}: the recipe {recipe_name} has no overlay {w:?} (its overlays: {})",
                overlays
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(overlays
        .iter()
        .map(|o| o.to_string())
        .filter(|o| !without.contains(o))
        .collect())
}

/// The kernel package: the recipe's, unless one overlay replaces it.
pub fn kernel_package(recipe: &Recipe, overlays: &[Overlay]) -> Result<String> {
    let replacing: Vec<(&Overlay, &str)> = overlays
        .iter()
        .filter_map(|o| o.spec.kernel.as_ref().map(|k| (o, k.as_str())))
        .collect();
    match replacing.as_slice() {
        [] => Ok(recipe.kernel.package.to_string()),
        [(_, kernel)] => Ok(kernel.to_string()),
        many => bail!(
            "overlays {} each replace the kernel; a recipe can use one of them",
            many.iter()
                .map(|(o, _)| o.name.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

/// The build host's EFI binaries a disk image carries, by path, with their sha256 (empty
/// without the disk output). The disk output needs the disk-boot overlay.
fn efi_inputs(
    name: &str,
    recipe: &Recipe,
    overlays: &[Overlay],
) -> Result<BTreeMap<String, String>> {
    let mut efi = BTreeMap::new();
    if !recipe.outputs.contains(&Output::Disk) {
        return Ok(efi);
    }
    if !overlays.iter().any(|o| o.name == "disk-boot") {
        bail!(
            "recipes/{name}.toml: the \"disk\" output needs the \"disk-boot\" overlay in \
             `overlays` (it mounts the ESP and marks a slot good once the node is ready, which \
             the fallback between slots relies on)"
        );
    }
    for p in [disk::STUB, disk::SYSTEMD_BOOT] {
        let (sha, _) = netboot::layout::sha256_file(Path::new(p)).with_context(|| {
            format!("reading {p} for the disk image (Debian package systemd-boot-efi)")
        })?;
        efi.insert(p.to_string(), sha);
    }
    Ok(efi)
}

/// Fetches (or finds in the cache) every overlay's artifacts, each verified.
fn fetch_artifacts(
    paths: &Paths,
    name: &str,
    overlays: &[Overlay],
    progress: &Progress,
) -> Result<Vec<FetchedArtifact>> {
    let n: usize = overlays.iter().map(|o| o.spec.artifacts.len()).sum();
    let mut fetched = Vec::new();
    if n == 0 {
        return Ok(fetched);
    }
    let stage = progress.stage("fetch artifacts");
    for ov in overlays {
        for a in &ov.spec.artifacts {
            stage.line(&format!("{} ({})", a.name, a.url));
            fetched.push(artifact::fetch(name, &ov.name, a, &paths.cache)?);
        }
    }
    stage.done(&format!("{n} verified"));
    Ok(fetched)
}

/// The package layer's inputs: the recipe's packages, the kernel, busybox for the first
/// stage, every overlay's packages; the sources; the settings that shape its bytes.
fn base_spec(
    recipe: &Recipe,
    overlays: &[Overlay],
    kernel_package: &str,
    sources: Vec<base::SourceUse>,
    epoch: u64,
) -> BaseSpec {
    let mut packages: Vec<String> = recipe
        .debian
        .packages
        .iter()
        .map(|p| p.to_string())
        .collect();
    packages.push(kernel_package.to_string());
    if recipe.outputs.contains(&Output::Initramfs) {
        packages.push(initramfs::BUSYBOX_PACKAGE.into());
    }
    packages.extend(
        overlays
            .iter()
            .flat_map(|o| o.spec.packages.iter().map(|p| p.to_string())),
    );
    packages.sort();
    packages.dedup();
    BaseSpec {
        code: base::code_digest(),
        suite: recipe.debian.suite.clone(),
        variant: recipe.debian.variant.to_string(),
        packages,
        sources,
        slim: recipe.debian.slim,
        epoch,
        squashfs: recipe.squashfs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checked::Name;

    fn project() -> PathBuf {
        crate::project::discover(None, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn without_leaves_out_only_overlays_the_recipe_has() {
        let all: Vec<Name> = ["base", "infiniband", "proxmox-kernel"]
            .map(|n| Name::try_from(n).unwrap())
            .to_vec();
        assert_eq!(
            kept_overlays("core-node", &all, &["proxmox-kernel".into()]).unwrap(),
            ["base", "infiniband"]
        );
        assert_eq!(
            kept_overlays("core-node", &all, &[]).unwrap(),
            ["base", "infiniband", "proxmox-kernel"]
        );
        let err = kept_overlays("core-node", &all, &["k3s".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--without k3s: the recipe core-node has no overlay \"k3s\" \
             (its overlays: base, infiniband, proxmox-kernel)"
        );
    }

    #[test]
    fn one_overlay_at_most_replaces_the_kernel() {
        let root = project();
        let (recipe, _) = recipe::load(&root, "core-node").unwrap();
        let overlays: Vec<Overlay> = ["base", "infiniband", "proxmox-kernel"]
            .iter()
            .map(|o| overlay::load(&root, o).unwrap())
            .collect();
        assert_eq!(
            kernel_package(&recipe, &overlays).unwrap(),
            "proxmox-default-kernel"
        );
        assert_eq!(
            kernel_package(&recipe, &overlays[..2]).unwrap(),
            "linux-image-amd64",
            "without the overlay, the recipe's kernel"
        );
        let mut twice = overlays.clone();
        let mut other = overlays[2].clone();
        other.name = "other-kernel".into();
        twice.push(other);
        let err = kernel_package(&recipe, &twice).unwrap_err().to_string();
        assert!(
            err.contains("proxmox-kernel and other-kernel each replace the kernel"),
            "{err}"
        );
    }
}
