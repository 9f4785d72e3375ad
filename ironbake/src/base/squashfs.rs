//! mksquashfs for the layers: the same flags for the package layer and the overlay layer,
//! with every timestamp pinned.

use std::path::Path;

use anyhow::{Context, Result};

use crate::exec::Tool;
use crate::recipe::{Compression, Squashfs};

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
        Compression::Zstd | Compression::Gzip => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squashfs_flags_pin_every_timestamp() {
        let a = mksquashfs_args(&Squashfs::default(), 1700000000);
        assert_eq!(
            a.join(" "),
            "-noappend -quiet -no-progress -comp zstd -Xcompression-level 9 -b 1024K -all-time 1700000000 -mkfs-time 1700000000"
        );
    }
}
