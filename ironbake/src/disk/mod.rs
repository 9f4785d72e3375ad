//! Disk images: a GPT disk that boots a published version with no network.
//!
//! ```text
//! LBA 0        protective MBR
//! LBA 1-33     GPT header and entries (the backup pair at the end of the disk)
//! 1 MiB        1 ESP                 FAT32: systemd-boot at the removable-media path,
//!                                    one UKI per slot under EFI/Linux/
//!              2 ironbake-base-a     slot A: base.squashfs, raw
//!              3 ironbake-overlay-a  slot A: overlay.squashfs, raw
//!              4 ironbake-base-b     slot B: empty (or a copy of A), filled by an update
//!              5 ironbake-overlay-b
//!              6 ironbake-data       optional: state that outlives updates
//! ```
//!
//! Every partition starts on a 1 MiB boundary. The disk GUID and each partition's GUID are
//! derived from the version's input digest, and the FAT volume id and timestamps from it and
//! SOURCE_DATE_EPOCH: the same inputs give the same bytes.
//!
//! One file a part: [`layout`] (the table, pure), `image` (a new image written whole, a table
//! read back), `esp` (the FAT32 ESP), `fat_repair`, `slots` (the UKI of each slot and
//! `disk update`), `node_settings`, `in_use` (what the kernel says of a disk), [`flash`] (`disk flash` onto
//! a real disk), `uki` (the
//! unified kernel image assembler).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use netboot::layout::{self as published, Manifest};

mod esp;
mod fat_repair;
pub mod flash;
mod image;
mod in_use;
pub mod layout;
mod node_settings;
mod slots;
mod uki;

pub use esp::{EspFile, read_esp};
pub use image::{Contents, create, read_layout, write, write_into};
pub use layout::{DATA_LABEL, Layout, Part, derived_guid};
pub use node_settings::{NODE_SETTINGS, render as render_node_settings, set_node_settings};
pub(crate) use slots::{SlotVersion, UkiName, slot_uki};
pub use slots::{TRIES, Updated, update};
pub(crate) use uki::STUB;

/// systemd-boot (Debian package `systemd-boot-efi`), the disk's boot manager.
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The disk image in a version folder.
pub const FILE: &str = published::DISK_IMAGE;

/// A published version's disk image, checked before it goes onto a disk: the version has the
/// files a slot is made of, and they match its manifest.
#[derive(Debug)]
pub struct Image {
    /// `disk.img` in the version folder.
    pub path: PathBuf,
    /// Its sha256, from the manifest.
    pub sha256: String,
    /// Its length in bytes.
    pub len: u64,
    /// The version's SOURCE_DATE_EPOCH, for the FAT entries written later.
    pub epoch: u64,
    /// The version's manifest.
    pub manifest: Manifest,
}

impl Image {
    /// Checks the published version `p` and returns its disk image.
    pub fn of(p: &crate::publish::Published) -> Result<Image> {
        let manifest = published::load_manifest(&p.dir)?;
        for f in ["vmlinuz", "initrd.img", "base.squashfs", "overlay.squashfs"] {
            if !p.dir.join(f).is_file() {
                bail!("{p} has no {f}: a disk slot needs the kernel, initramfs and rootfs outputs");
            }
        }
        let (_, problems) = published::verify(&p.dir)?;
        if !problems.is_empty() {
            bail!(
                "{p} does not match its manifest ({} problem(s), see `verify {p}`); not \
                 writing it to a disk",
                problems.len()
            );
        }
        let sha256 = manifest
            .outputs
            .iter()
            .find(|o| o.path == FILE)
            .map(|o| o.sha256.clone())
            .with_context(|| {
                format!("{p} has no disk image: add \"disk\" to the recipe's outputs")
            })?;
        let path = p.dir.join(FILE);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        Ok(Image {
            path,
            sha256,
            len,
            epoch: manifest.source_date_epoch,
            manifest,
        })
    }
}
