//! iPXE for the boot server, from Debian's `ipxe` package on the build host, published as
//! `out/ipxe/VERSION/` (the package version) with `out/ipxe/current`, so that `out/` alone is
//! enough to boot a node.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::exec::Tool;
use crate::publish::{self, Staging};

/// The published folder's name under `out/`.
pub const DIR: &str = "ipxe";

/// The binaries, as published and where Debian's package installs them.
pub const FILES: &[(&str, &str)] = &[
    // UEFI, using the firmware's own network driver (what OVMF and most PCs want)
    ("snponly.efi", "/usr/lib/ipxe/snponly.efi"),
    // UEFI, with iPXE's own drivers (for firmware whose SNP is broken)
    ("ipxe.efi", "/usr/lib/ipxe/ipxe.efi"),
    // BIOS, chained from the NIC's PXE ROM
    ("undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
];

/// Publishes the host's iPXE binaries under `out/ipxe/` if this version is not there yet;
/// returns the version.
pub fn publish(out: &Path) -> Result<String> {
    let version = Tool::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "ipxe"])
        .run_capture(None)
        .context("reading the ipxe package's version (apt-get install ipxe)")?;
    let version: String = version
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+~-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.join(DIR).join(&version).is_dir() {
        if netboot::layout::read_current(&out.join(DIR))?.as_deref() != Some(version.as_str()) {
            publish::set_current(out, DIR, &version)?;
        }
        return Ok(version);
    }
    let staging = Staging::new(out, DIR, &version)?;
    let dir = staging.version_dir();
    let mut sums = String::new();
    for (name, src) in FILES {
        fs::copy(src, dir.join(name))
            .with_context(|| format!("copying {src} (from Debian's ipxe package)"))?;
        let (digest, _) = netboot::layout::sha256_file(&dir.join(name))?;
        sums.push_str(&format!("{digest}  {name}\n"));
    }
    fs::write(dir.join(netboot::layout::SHA256SUMS), sums)?;
    staging.publish()?;
    Ok(version)
}
