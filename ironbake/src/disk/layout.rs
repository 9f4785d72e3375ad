//! The partition table of a disk image, computed before anything is written (pure).

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

/// Sector size.
pub const SECTOR: u64 = 512;
/// Partition alignment: 1 MiB.
pub const ALIGN: u64 = 2048;
pub(super) const MIB: u64 = 1 << 20;

/// EFI System Partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Linux root (x86-64), per the Discoverable Partitions Specification.
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Linux filesystem data.
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Linux /var, for the data partition.
pub const TYPE_VAR: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// The GPT label of a slot's layer partition: `ironbake-base-a`.
pub fn slot_label(layer: &str, slot: char) -> String {
    format!("ironbake-{layer}-{slot}")
}

/// The data partition's label.
pub const DATA_LABEL: &str = "ironbake-data";

/// What a disk holds, in MiB where sizes are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// The ESP.
    pub esp_mib: u64,
    /// Each slot's base partition.
    pub base_mib: u64,
    /// Each slot's overlay partition.
    pub overlay_mib: u64,
    /// The data partition (0: none).
    pub data_mib: u64,
}

/// One partition of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based entry number.
    pub number: u32,
    /// GPT partition name.
    pub label: String,
    /// Type GUID, text form.
    pub type_guid: &'static str,
    /// Unique GUID, text form.
    pub guid: String,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
}

impl Part {
    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
    /// Its first byte.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
}

/// A disk's partition table, computed before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The disk GUID, text form.
    pub disk_guid: String,
    /// The partitions in table order.
    pub parts: Vec<Part>,
    /// The image size in bytes.
    pub size: u64,
}

impl Layout {
    /// The partition labelled `label`.
    pub fn part(&self, label: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.label == label)
    }
}

/// The text form of a GUID given in RFC 9562 byte order.
pub(super) fn guid_text(b: [u8; 16]) -> String {
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A GUID (RFC 9562 version 4 layout, so tools accept it) derived from `seed` and `what`.
pub fn derived_guid(seed: &str, what: &str) -> String {
    let d = Sha256::digest(format!("ironbake disk {seed} {what}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    guid_text(b)
}

/// A GUID in text form as GPT stores it: the first three fields little-endian.
pub fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let hexs: String = text.chars().filter(|c| *c != '-').collect();
    ensure!(
        hexs.len() == 32 && text.len() == 36,
        "{text:?} is not a GUID"
    );
    let raw = hex::decode(&hexs).with_context(|| format!("{text:?} is not a GUID"))?;
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..].copy_from_slice(&raw[8..]);
    Ok(b)
}

/// Lays out a disk for `sizes`; `seed` (the version's input digest) names every GUID.
pub fn layout(sizes: &Sizes, seed: &str) -> Result<Layout> {
    ensure!(
        sizes.esp_mib >= 64,
        "the ESP must be at least 64 MiB (FAT32 needs 65525 clusters; firmware reads a smaller \
         one as FAT16)"
    );
    ensure!(
        sizes.base_mib > 0 && sizes.overlay_mib > 0,
        "slot partitions cannot be empty"
    );
    let mut want: Vec<(String, &'static str, u64)> = vec![
        ("ESP".into(), TYPE_ESP, sizes.esp_mib),
        (slot_label("base", 'a'), TYPE_ROOT_X86_64, sizes.base_mib),
        (
            slot_label("overlay", 'a'),
            TYPE_LINUX_DATA,
            sizes.overlay_mib,
        ),
        (slot_label("base", 'b'), TYPE_ROOT_X86_64, sizes.base_mib),
        (
            slot_label("overlay", 'b'),
            TYPE_LINUX_DATA,
            sizes.overlay_mib,
        ),
    ];
    if sizes.data_mib > 0 {
        want.push((DATA_LABEL.into(), TYPE_VAR, sizes.data_mib));
    }
    let mut lba = ALIGN;
    let mut parts = Vec::new();
    for (i, (label, type_guid, mib)) in want.into_iter().enumerate() {
        let sectors = mib * MIB / SECTOR;
        parts.push(Part {
            number: i as u32 + 1,
            guid: derived_guid(seed, &label),
            label,
            type_guid,
            first_lba: lba,
            last_lba: lba + sectors - 1,
        });
        lba += sectors;
    }
    // The backup GPT (33 sectors) after the last partition, in a final aligned MiB.
    let size = (lba + ALIGN) * SECTOR;
    Ok(Layout {
        disk_guid: derived_guid(seed, "disk"),
        parts,
        size,
    })
}

/// A size in MiB with room to grow: `bytes` plus half again, rounded up to 64 MiB.
pub fn roomy_mib(bytes: u64) -> u64 {
    let mib = (bytes + bytes / 2).div_ceil(MIB);
    mib.div_ceil(64).max(1) * 64
}

/// A small layout's sizes, for the disk modules' tests.
#[cfg(test)]
pub(crate) fn sizes() -> Sizes {
    Sizes {
        esp_mib: 64,
        base_mib: 8,
        overlay_mib: 1,
        data_mib: 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_aligned_ordered_and_named() {
        let l = layout(&sizes(), "seed").unwrap();
        let labels: Vec<&str> = l.parts.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "ESP",
                "ironbake-base-a",
                "ironbake-overlay-a",
                "ironbake-base-b",
                "ironbake-overlay-b",
                "ironbake-data"
            ]
        );
        let mut next = ALIGN;
        for p in &l.parts {
            assert_eq!(p.first_lba % ALIGN, 0, "{p:?}");
            assert_eq!(p.first_lba, next, "no gaps, no overlaps");
            next = p.last_lba + 1;
        }
        assert_eq!(l.part("ESP").unwrap().bytes(), 64 * MIB);
        assert_eq!(l.size, (next + ALIGN) * SECTOR);
        assert_eq!(layout(&sizes(), "seed").unwrap(), l, "deterministic");
        assert_ne!(layout(&sizes(), "other").unwrap().disk_guid, l.disk_guid);
        let mut no_data = sizes();
        no_data.data_mib = 0;
        assert_eq!(layout(&no_data, "seed").unwrap().parts.len(), 5);
        let mut small = sizes();
        small.esp_mib = 32;
        assert!(
            layout(&small, "seed")
                .unwrap_err()
                .to_string()
                .contains("64 MiB")
        );
    }

    #[test]
    fn rooms_round_up_to_64_mib() {
        assert_eq!(roomy_mib(100 * MIB), 192);
        assert_eq!(roomy_mib(1), 64);
    }

    #[test]
    fn guids_are_version_4_and_stored_mixed_endian() {
        let g = derived_guid("s", "disk");
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        assert!("89AB".contains(&g[19..20]), "{g}");
        let b = guid_bytes(TYPE_ESP).unwrap();
        assert_eq!(
            b,
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert!(guid_bytes("nope").is_err());
    }
}
