//! The package layer: a Debian root filesystem built by mmdebstrap from packages, compressed
//! to `base.squashfs`, and cached under a digest of every input that shapes it.
//!
//! Inputs of the digest ([`BaseSpec`]): suite, variant, packages (the recipe's, the kernel,
//! every overlay's), the apt sources with the digest of each one's signed `InRelease` (so a
//! changed archive is a new base), the signing keys, slimming, SOURCE_DATE_EPOCH, squashfs
//! settings, and [`BASE_REVISION`] (bumped when this module changes what it builds).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::exec::{self, Tool};
use crate::plan::BaseView;
use crate::progress::Progress;
use crate::recipe::Squashfs;
use netboot::layout::PackageRecord;

/// Bump when the hooks or flags below change what a base contains.
pub const BASE_REVISION: u32 = 2;

/// Everything that decides the package layer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseSpec {
    /// [`BASE_REVISION`].
    pub revision: u32,
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
        crate::apt::sha256_hex(&serde_json::to_vec(self).expect("a spec serialises"))
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

/// The mksquashfs arguments (after source and destination) for a layer.
pub fn mksquashfs_args(sq: &Squashfs, epoch: u64) -> Vec<String> {
    let mut a = vec![
        "-noappend".into(),
        "-quiet".into(),
        "-no-progress".into(),
        "-comp".into(),
        sq.compression.as_str().into(),
    ];
    match sq.compression {
        crate::recipe::Compression::Zstd | crate::recipe::Compression::Gzip => {
            a.extend(["-Xcompression-level".into(), sq.level.to_string()]);
        }
        _ => {}
    }
    a.extend([
        "-b".into(),
        format!("{}K", sq.block_size_kib),
        "-all-time".into(),
        epoch.to_string(),
        "-mkfs-time".into(),
        epoch.to_string(),
    ]);
    a
}

/// Runs mksquashfs over `src` into `dest` with the layer settings and extra arguments.
pub fn mksquashfs(
    src: &Path,
    dest: &Path,
    sq: &Squashfs,
    epoch: u64,
    extra: &[&str],
    progress: &crate::progress::Stage<'_>,
) -> Result<()> {
    let sink = |l: &str| {
        // mksquashfs warns once per ACL xattr it cannot store; these are harmless and noisy.
        if !l.starts_with("Unrecognised xattr prefix") {
            progress.line(l)
        }
    };
    Tool::new("mksquashfs")
        .arg(src)
        .arg(dest)
        .args(mksquashfs_args(sq, epoch))
        .args(extra)
        // mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time; the flags say it all.
        .env_remove("SOURCE_DATE_EPOCH")
        .run(Some(&sink))
        .with_context(|| format!("compressing {} into {}", src.display(), dest.display()))
}

const ESSENTIAL_HOOK: &str = r#"#!/bin/sh
# ironbake replaces initramfs-tools' initrd with its own: skip generating one (about half the
# time of a kernel install). Restored by the customize hook.
set -e
chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\nexit 0\n' > "$1/usr/sbin/update-initramfs"
chmod 755 "$1/usr/sbin/update-initramfs"
"#;

const CUSTOMIZE_HOOK: &str = r#"#!/bin/sh
# Undo the build-time diversion, then remove everything that would give every node the same
# identity or make two builds differ.
set -e
rm -f "$1/usr/sbin/update-initramfs"
chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
if [ -f "$1/etc/apt/sources.list" ]; then
    sed -i "s|signed-by=$1/|signed-by=/|g" "$1/etc/apt/sources.list"
fi
: > "$1/etc/machine-id"
# mmdebstrap copies the build host's name; a node's name comes from its per-node settings.
echo localhost > "$1/etc/hostname"
if [ -e "$1/var/lib/dbus/machine-id" ] && [ ! -L "$1/var/lib/dbus/machine-id" ]; then
    rm -f "$1/var/lib/dbus/machine-id"
fi
rm -f "$1"/etc/ssh/ssh_host_* "$1/var/lib/systemd/random-seed" "$1/var/lib/systemd/credential.secret"
rm -f "$1/var/cache/ldconfig/aux-cache" "$1/var/cache/debconf/"*-old "$1/var/lib/dpkg/"*-old
find "$1/var/log" -type f -delete
"#;

/// The dpkg path filters of a slim image: no man pages, docs or info, but licences kept.
const SLIM_DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
];

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
    let result = build(spec, keys, &tmp, &key, progress);
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

fn write_hook(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("hooks").join(name);
    fs::write(&path, text)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The mmdebstrap command that builds `spec` into `rootfs`, with its hook scripts written
/// under `work/hooks`. The benchmark runs the same command by hand.
pub fn mmdebstrap_command(
    spec: &BaseSpec,
    keys: &[(String, PathBuf)],
    work: &Path,
    rootfs: &Path,
) -> Result<Tool> {
    let tmp = work;
    fs::create_dir_all(tmp.join("hooks"))?;
    let essential = write_hook(tmp, "essential.sh", ESSENTIAL_HOOK)?;
    let customize = write_hook(tmp, "customize.sh", CUSTOMIZE_HOOK)?;
    let mut cmd = Tool::new("mmdebstrap")
        .arg("--mode=root")
        .arg(format!("--variant={}", spec.variant))
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg(format!("--essential-hook={}", essential.display()))
        .arg(format!("--customize-hook={}", customize.display()))
        .env("SOURCE_DATE_EPOCH", spec.epoch.to_string());
    if !spec.packages.is_empty() {
        cmd = cmd.arg(format!("--include={}", spec.packages.join(",")));
    }
    if spec.slim {
        cmd = cmd.args(SLIM_DPKG_OPTS.iter().map(|o| format!("--dpkgopt={o}")));
    }
    if !keys.is_empty() {
        // Keys go into the image's /etc/apt/keyrings before apt first reads the sources.
        let mut script = String::from("#!/bin/sh\nset -e\nmkdir -p \"$1/etc/apt/keyrings\"\n");
        for (name, path) in keys {
            script.push_str(&format!(
                "cp {} \"$1/etc/apt/keyrings/{name}\"\n",
                exec::shell_quote(path.as_os_str())
            ));
        }
        let setup = write_hook(tmp, "setup.sh", &script)?;
        cmd = cmd.arg(format!("--setup-hook={}", setup.display()));
    }
    cmd = cmd.arg(&spec.suite).arg(rootfs);
    for s in &spec.sources {
        let opts = match &s.key {
            Some((name, _)) => format!("[signed-by={}/etc/apt/keyrings/{name}] ", rootfs.display()),
            None => String::new(),
        };
        // apt's file method hands dpkg the packages where they lie, outside the chroot that
        // dpkg runs in; its copy method copies them into the image's archive first.
        let uri = match s.uri.strip_prefix("file://") {
            Some(path) => format!("copy://{path}"),
            None => s.uri.clone(),
        };
        cmd = cmd.arg(format!(
            "deb {opts}{uri} {} {}",
            s.suite,
            s.components.join(" ")
        ));
    }
    Ok(cmd)
}

fn build(
    spec: &BaseSpec,
    keys: &[(String, PathBuf)],
    tmp: &Path,
    key: &str,
    progress: &Progress,
) -> Result<BaseInfo> {
    let rootfs = tmp.join("rootfs");
    let cmd = mmdebstrap_command(spec, keys, tmp, &rootfs)?;
    let stage = progress.stage(&format!(
        "mmdebstrap {} {} (+{} packages)",
        spec.suite,
        spec.variant,
        spec.packages.len()
    ));
    let sink = |l: &str| stage.line(l);
    cmd.run(Some(&sink)).context(
        "building the package layer with mmdebstrap; if a package is missing, check its name and \
         the recipe's suite; if a download failed, check the mirror or set `mirror` under [debian]",
    )?;
    stage.done("");

    let boot = rootfs.join("boot");
    let mut kernels: Vec<String> = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    kernels.sort();
    let kernel_release = match kernels.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "the kernel package installed no /boot/vmlinuz-*: is [kernel] package a kernel image package?"
        ),
        many => bail!(
            "the image has {} kernels ({}); install exactly one",
            many.len(),
            many.join(", ")
        ),
    };
    let status = fs::read_to_string(rootfs.join("var/lib/dpkg/status"))
        .context("reading the image's dpkg status")?;
    let packages = parse_dpkg_status(&status);

    let stage = progress.stage("mksquashfs base layer");
    let sq = tmp.join("base.squashfs");
    // The kernel is published beside the layers; the node does not need a second copy.
    mksquashfs(
        &rootfs,
        &sq,
        &spec.squashfs,
        spec.epoch,
        &["-wildcards", "-e", "boot/vmlinuz-*", "boot/initrd.img-*"],
        &stage,
    )?;
    let (squashfs_sha256, squashfs_size) = netboot::layout::sha256_file(&sq)?;
    stage.done(&format!("{} MB", squashfs_size / 1_000_000));
    Ok(BaseInfo {
        key: key.to_string(),
        kernel_release,
        packages,
        squashfs_sha256,
        squashfs_size,
    })
}

/// The cached root filesystem tree, seen as the plan's base. Symlinks resolve inside the tree,
/// never on the build host.
pub struct TreeView {
    /// The tree's top.
    pub root: PathBuf,
}

impl TreeView {
    fn resolve(&self, path: &str, follow_last: bool) -> Option<PathBuf> {
        let mut parts: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        parts.reverse();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(p) = parts.pop() {
            match p.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(p);
            let host = self.root.join(cur.join("/"));
            let is_last = parts.is_empty();
            if let Ok(target) = fs::read_link(&host) {
                if is_last && !follow_last {
                    break;
                }
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur.clear();
                }
                let mut tparts: Vec<String> = t
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                tparts.reverse();
                parts.extend(tparts);
            }
        }
        Some(self.root.join(cur.join("/")))
    }
}

impl BaseView for TreeView {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.resolve(path, true)?;
        if p.is_file() { fs::read(p).ok() } else { None }
    }
    fn link_target(&self, path: &str) -> Option<String> {
        let p = self.resolve(path, false)?;
        fs::read_link(p)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }
    fn stat(&self, path: &str) -> Option<(u32, u32, u32, bool)> {
        use std::os::unix::fs::MetadataExt;
        let p = self.resolve(path, false)?;
        let m = fs::symlink_metadata(p).ok()?;
        Some((m.mode() & 0o7777, m.uid(), m.gid(), m.is_dir()))
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

    #[test]
    fn squashfs_flags_pin_every_timestamp() {
        let a = mksquashfs_args(&Squashfs::default(), 1700000000);
        assert_eq!(
            a.join(" "),
            "-noappend -quiet -no-progress -comp zstd -Xcompression-level 9 -b 1024K -all-time 1700000000 -mkfs-time 1700000000"
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", r.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", r.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("etc/host")).unwrap();
        let v = TreeView { root: r.to_owned() };
        assert_eq!(v.read("/etc/os-release").unwrap(), b"ID=debian\n");
        assert_eq!(v.read("/etc/abs").unwrap(), b"ID=debian\n");
        assert_eq!(
            v.read("/etc/host"),
            None,
            "an absolute link must not reach the build host"
        );
        assert!(v.stat("/etc").unwrap().3);
        assert!(!v.stat("/etc/abs").unwrap().3);
    }
}
