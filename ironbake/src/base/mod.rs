//! The package layer: a Debian root filesystem built by mmdebstrap from packages, compressed
//! to `base.squashfs`, and cached under a digest of every input that shapes it.
//!
//! Inputs of the digest ([`BaseSpec`]): suite, variant, packages (the recipe's, the kernel,
//! every overlay's), the apt sources with the digest of each one's signed `InRelease` (so a
//! changed archive is a new base), the signing keys, slimming, SOURCE_DATE_EPOCH, squashfs
//! settings, and [`code_digest`]: the code that runs mmdebstrap and mksquashfs and the hook
//! scripts, so a change to what a base contains is a new base without anyone remembering to
//! say so (the rest of the builder's code is in the version's digest, not here: a change to
//! it rebuilds the small layers, not the package layer).
//!
//! `mmdebstrap.rs` runs mmdebstrap with the hooks in `hooks/`; `squashfs.rs` compresses a
//! layer; `tree.rs` is the built tree seen as the plan's [`BaseView`](crate::plan::BaseView).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::exec::Tool;
use crate::progress::Progress;
use crate::recipe::Squashfs;
use netboot::layout::PackageRecord;

mod mmdebstrap;
mod squashfs;
mod tree;

pub use mmdebstrap::mmdebstrap_command;
pub use squashfs::mksquashfs;
pub use tree::TreeView;

/// The sources that decide what a package layer holds, for [`code_digest`].
const CODE: [&str; 4] = [
    include_str!("mmdebstrap.rs"),
    include_str!("squashfs.rs"),
    include_str!("hooks/essential.sh"),
    include_str!("hooks/customize.sh"),
];

/// sha256 of the code that builds a package layer (part of its cache key).
pub fn code_digest() -> String {
    crate::digest::sha256_hex(CODE.concat().as_bytes())
}

/// Everything that decides the package layer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseSpec {
    /// [`code_digest`] of the builder that makes it.
    pub code: String,
    /// Suite.
    pub suite: String,
    /// mmdebstrap variant.
    pub variant: String,
    /// Packages to include, sorted and unique.
    pub packages: Vec<String>,
    /// The sources, in order.
    pub sources: Vec<SourceUse>,
    /// Leave out docs and man pages.
    pub slim: bool,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// squashfs settings.
    pub squashfs: Squashfs,
}

/// One apt source as the base uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceUse {
    /// `host`, `recipe`, or an overlay name.
    pub origin: String,
    /// URI.
    pub uri: String,
    /// Suite.
    pub suite: String,
    /// Components.
    pub components: Vec<String>,
    /// sha256 of its InRelease/Release file.
    pub release_sha256: String,
    /// The signing key's file name in the image's `/etc/apt/keyrings/` and its digest.
    pub key: Option<(String, String)>,
}

/// What is known about a built base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// The digest that names this base.
    pub key: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// Installed packages.
    pub packages: Vec<PackageRecord>,
    /// sha256 of `base.squashfs`.
    pub squashfs_sha256: String,
    /// Size of `base.squashfs`.
    pub squashfs_size: u64,
}

/// A built (or cached) base.
#[derive(Debug, Clone)]
pub struct Base {
    /// The cache entry's folder.
    pub dir: PathBuf,
    /// What it holds.
    pub info: BaseInfo,
    /// Was it already in the cache?
    pub cached: bool,
}

impl Base {
    /// The root filesystem tree.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// The compressed layer.
    pub fn squashfs(&self) -> PathBuf {
        self.dir.join("base.squashfs")
    }
    /// The kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        self.rootfs()
            .join("boot")
            .join(format!("vmlinuz-{}", self.info.kernel_release))
    }
}

impl BaseSpec {
    /// The cache key: sha256 of this spec's canonical JSON.
    pub fn key(&self) -> String {
        crate::digest::sha256_hex(&serde_json::to_vec(self).expect("a spec serialises"))
    }
}

/// Parses dpkg's status file into the installed packages, sorted by name.
pub fn parse_dpkg_status(text: &str) -> Vec<PackageRecord> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, None, None, false);
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), Some(a), true) = (name, version, arch, installed) {
            out.push(PackageRecord {
                name: n.into(),
                version: v.into(),
                architecture: a.into(),
            });
        }
    }
    out.sort();
    out
}

/// Where the cached bases live under the cache folder.
pub fn cache_root(cache: &Path) -> PathBuf {
    cache.join("base")
}

/// Returns the base for `spec`, building it if the cache does not have it.
/// `keys` are the signing key files to copy in, by their name in `spec.sources`.
pub fn ensure(
    spec: &BaseSpec,
    keys: &[(String, PathBuf)],
    cache: &Path,
    progress: &Progress,
) -> Result<Base> {
    let key = spec.key();
    let root = cache_root(cache);
    let dir = root.join(&key);
    let info_path = dir.join("info.json");
    if let Ok(text) = fs::read_to_string(&info_path) {
        let info: BaseInfo = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", info_path.display()))?;
        return Ok(Base {
            dir,
            info,
            cached: true,
        });
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Builds killed earlier may have left their work folders (and mmdebstrap's mounts).
    for e in fs::read_dir(&root)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            remove_tree(&e.path())?;
        }
    }
    let tmp = root.join(format!(".tmp-{key}-{}", std::process::id()));
    fs::create_dir_all(tmp.join("hooks"))?;
    let result = mmdebstrap::build(spec, keys, &tmp, &key, progress);
    match result {
        Ok(info) => {
            fs::write(tmp.join("info.json"), serde_json::to_vec_pretty(&info)?)?;
            // The inputs beside the result, so the same base can be rebuilt by hand.
            fs::write(tmp.join("spec.json"), serde_json::to_vec_pretty(spec)?)?;
            fs::rename(&tmp, &dir)
                .with_context(|| format!("moving the new base into {}", dir.display()))?;
            Ok(Base {
                dir,
                info,
                cached: false,
            })
        }
        Err(e) => {
            if let Err(cleanup) = remove_tree(&tmp) {
                tracing::warn!("{cleanup:#}");
            }
            Err(e)
        }
    }
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return vec![];
    };
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal; our paths have none.
        .map(PathBuf::from)
        .filter(|m| m.starts_with(&dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Removes a work folder, first unmounting anything a killed mmdebstrap left mounted in it
/// (a recursive delete through a bind mount of /dev or /proc would reach the build host).
pub fn remove_tree(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        Tool::new("umount")
            .arg("--lazy")
            .arg(&m)
            .run(None)
            .with_context(|| {
                format!(
                    "unmounting {} before removing {}",
                    m.display(),
                    dir.display()
                )
            })?;
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        bail!(
            "{} still has mounts ({}); not removing it",
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let text = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\nPackage: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4\n";
        let p = parse_dpkg_status(text);
        assert_eq!(
            p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["base-files", "zlib1g"]
        );
        assert_eq!(p[1].version, "1:1.2.13");
    }
}
