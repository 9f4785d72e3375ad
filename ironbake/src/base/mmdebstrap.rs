//! The mmdebstrap run that makes a package layer: its command, its hook scripts (files in
//! `hooks/`, so shellcheck reads them too) and what is read back from the tree it made.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::squashfs::mksquashfs;
use super::{BaseInfo, BaseSpec, parse_dpkg_status};
use crate::exec::{self, Tool};
use crate::progress::Progress;

/// The essential hook: diverts `update-initramfs` while packages install.
pub(super) const ESSENTIAL_HOOK: &str = include_str!("hooks/essential.sh");
/// The customize hook: restores it and removes identity and build logs.
pub(super) const CUSTOMIZE_HOOK: &str = include_str!("hooks/customize.sh");

/// The dpkg path filters of a slim image: no man pages, docs or info, but licences kept.
const SLIM_DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
];

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

pub(super) fn build(
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
