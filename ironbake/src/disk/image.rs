//! Writing a new disk image (the table, the ESP, slot A) and reading a disk's table back.

use std::fs;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::esp::{EspFile, write_esp};
use super::layout::{
    ALIGN, Layout, MIB, Part, SECTOR, TYPE_ESP, TYPE_LINUX_DATA, TYPE_ROOT_X86_64, TYPE_VAR,
    guid_bytes, guid_text, slot_label,
};

/// Copies `src` into `disk` at `part`, refusing what does not fit.
pub(super) fn write_raw(disk: &mut fs::File, part: &Part, src: &Path) -> Result<u64> {
    let len = fs::metadata(src)
        .with_context(|| format!("reading {}", src.display()))?
        .len();
    if len > part.bytes() {
        bail!(
            "{} ({} MiB) does not fit in partition {} ({} MiB): give the slot more room under \
             [disk] in the recipe",
            src.display(),
            len.div_ceil(MIB),
            part.label,
            part.bytes() / MIB
        );
    }
    disk.seek(SeekFrom::Start(part.offset()))?;
    let mut f = fs::File::open(src)?;
    let n = io::copy(&mut f, disk)?;
    Ok(n)
}

/// What to write into a layout.
#[derive(Debug)]
pub struct Contents<'a> {
    /// Files of the ESP.
    pub esp: &'a [EspFile],
    /// Slot A's layers: base and overlay squashfs files.
    pub slot_a: (&'a Path, &'a Path),
    /// Also copy slot A into slot B.
    pub copy_to_b: bool,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// The seed the layout was made with.
    pub seed: &'a str,
}

/// Writes a disk image at `dest` (created; sparse where nothing is written).
pub fn write(dest: &Path, layout: &Layout, c: &Contents<'_>) -> Result<()> {
    let mut disk = create(dest, layout)?;
    write_into(&mut disk, layout, c, &|_| {})
}

/// Creates the file of a disk image at `dest`, of the layout's size and sparse, for
/// [`write_into`].
pub fn create(dest: &Path, layout: &Layout) -> Result<fs::File> {
    let disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    disk.set_len(layout.size)
        .with_context(|| format!("sizing {}", dest.display()))?;
    Ok(disk)
}

/// Writes the image into `disk` (made by [`create`]), then syncs it. The table first (both
/// copies), then the partitions in order; after each, `on_final(offset)` says that no byte
/// before `offset` will change again (so that it can be hashed meanwhile).
pub fn write_into(
    disk: &mut fs::File,
    layout: &Layout,
    c: &Contents<'_>,
    on_final: &dyn Fn(u64),
) -> Result<()> {
    let mut gpt = gptman::GPT::new_from(disk, SECTOR, guid_bytes(&layout.disk_guid)?)
        .context("making the partition table")?;
    gpt.align = ALIGN;
    for p in &layout.parts {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: guid_bytes(p.type_guid)?,
            unique_partition_guid: guid_bytes(&p.guid)?,
            starting_lba: p.first_lba,
            ending_lba: p.last_lba,
            attribute_bits: 0,
            partition_name: p.label.as_str().into(),
        };
    }
    gpt.write_into(disk)
        .context("writing the partition table")?;
    gptman::GPT::write_protective_mbr_into(disk, SECTOR).context("writing the protective MBR")?;
    let esp = layout.part("ESP").context("the layout has no ESP")?;
    // What is written, in the order of the disk (the layout's order).
    let slots: &[char] = if c.copy_to_b { &['a', 'b'] } else { &['a'] };
    let mut layers = Vec::new();
    for slot in slots {
        for (layer, src) in [("base", c.slot_a.0), ("overlay", c.slot_a.1)] {
            let label = slot_label(layer, *slot);
            let part = layout
                .part(&label)
                .with_context(|| format!("the layout has no {label}"))?;
            layers.push((part, src));
        }
    }
    // `on_final` is only true if each part comes after the one before.
    let mut at = esp.offset();
    for (part, _) in &layers {
        anyhow::ensure!(
            part.offset() > at,
            "partition {} comes before the one written ahead of it",
            part.label
        );
        at = part.offset();
    }
    let next = |i: usize| layers.get(i).map_or(layout.size, |(p, _)| p.offset());
    on_final(esp.offset());
    write_esp(disk, esp, c.seed, c.epoch, c.esp)?;
    on_final(next(0));
    for (i, (part, src)) in layers.iter().enumerate() {
        write_raw(disk, part, src)?;
        on_final(next(i + 1));
    }
    disk.sync_all()?;
    Ok(())
}

/// Reads the partition table of a disk or image back into a [`Layout`] (type GUIDs other
/// than ironbake's are shown as the Linux data type).
pub fn read_layout(target: &Path) -> Result<Layout> {
    let mut disk =
        fs::File::open(target).with_context(|| format!("opening {}", target.display()))?;
    let size = disk.seek(SeekFrom::End(0))?;
    let gpt = gptman::GPT::read_from(&mut disk, SECTOR)
        .with_context(|| format!("{}: no GPT partition table", target.display()))?;
    // GPT stores the first three fields little-endian.
    let text = |b: [u8; 16]| {
        guid_text([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ])
    };
    let known = [TYPE_ESP, TYPE_ROOT_X86_64, TYPE_LINUX_DATA, TYPE_VAR];
    let parts = gpt
        .iter()
        .filter(|(_, e)| e.is_used())
        .map(|(n, e)| {
            let t = text(e.partition_type_guid);
            Part {
                number: n,
                label: e.partition_name.as_str().to_string(),
                type_guid: known
                    .iter()
                    .find(|k| **k == t)
                    .copied()
                    .unwrap_or(TYPE_LINUX_DATA),
                guid: text(e.unique_partition_guid),
                first_lba: e.starting_lba,
                last_lba: e.ending_lba,
            }
        })
        .collect();
    Ok(Layout {
        disk_guid: text(gpt.header.disk_guid),
        parts,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::esp::read_esp;
    use crate::disk::layout::{layout, sizes};
    use crate::disk::node_settings::{NODE_SETTINGS, set_node_settings};

    #[test]
    fn a_layout_reads_back_from_the_written_table() {
        let dir = tempfile::tempdir().unwrap();
        let (base, overlay) = (dir.path().join("b"), dir.path().join("o"));
        fs::write(&base, b"b").unwrap();
        fs::write(&overlay, b"o").unwrap();
        let l = layout(&sizes(), "seed").unwrap();
        let img = dir.path().join("d.img");
        let c = Contents {
            esp: &[],
            slot_a: (&base, &overlay),
            copy_to_b: true,
            epoch: 0,
            seed: "seed",
        };
        write(&img, &l, &c).unwrap();
        assert_eq!(read_layout(&img).unwrap(), l);
    }

    #[test]
    fn a_written_disk_reads_back_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let overlay = dir.path().join("overlay");
        fs::write(&base, vec![0xbb; 3 * MIB as usize + 5]).unwrap();
        fs::write(&overlay, b"overlay layer").unwrap();
        let l = layout(&sizes(), "seed").unwrap();
        let esp = [
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                data: b"boot".to_vec(),
            },
            EspFile {
                path: "loader/loader.conf".into(),
                data: b"timeout 0\n".to_vec(),
            },
        ];
        let c = Contents {
            esp: &esp,
            slot_a: (&base, &overlay),
            copy_to_b: false,
            epoch: 1_723_282_601,
            seed: "seed",
        };
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        write(&a, &l, &c).unwrap();
        write(&b, &l, &c).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "same bytes");
        assert!(write(&a, &l, &c).is_err(), "never overwrites");
        let files = read_esp(&a).unwrap();
        assert_eq!(
            files,
            [
                ("EFI/BOOT/BOOTX64.EFI".to_string(), b"boot".to_vec()),
                ("loader/loader.conf".to_string(), b"timeout 0\n".to_vec()),
            ]
        );
        let img = fs::read(&a).unwrap();
        let p = l.part("ironbake-overlay-a").unwrap();
        assert_eq!(&img[p.offset() as usize..][..13], b"overlay layer");
        let pb = l.part("ironbake-base-b").unwrap();
        assert!(
            img[pb.offset() as usize..][..4096].iter().all(|b| *b == 0),
            "B is empty"
        );
        assert_eq!(&img[510..512], &[0x55, 0xaa], "protective MBR");
        assert_eq!(&img[512..520], b"EFI PART");
        // A node's settings go onto the ESP, are replaced, and removed; nothing else moves.
        set_node_settings(&b, Some(b"first"), 1_723_282_601).unwrap();
        set_node_settings(&b, Some(b"second, longer"), 1_723_282_601).unwrap();
        let files = read_esp(&b).unwrap();
        assert_eq!(files.len(), 3);
        assert!(files.contains(&(NODE_SETTINGS.to_string(), b"second, longer".to_vec())));
        let after = fs::read(&b).unwrap();
        let esp_part = l.part("ESP").unwrap();
        let esp_end = (esp_part.offset() + esp_part.bytes()) as usize;
        assert!(
            after[..esp_part.offset() as usize] == img[..esp_part.offset() as usize]
                && after[esp_end..] == img[esp_end..],
            "only the ESP changed"
        );
        set_node_settings(&b, None, 1_723_282_601).unwrap();
        assert_eq!(read_esp(&b).unwrap().len(), 2);
        let big = dir.path().join("big");
        fs::write(&big, vec![1u8; 9 * MIB as usize]).unwrap();
        let c2 = Contents {
            slot_a: (&big, &overlay),
            ..c
        };
        let err = write(&dir.path().join("c.img"), &l, &c2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not fit in partition ironbake-base-a"),
            "{err}"
        );
    }
}
