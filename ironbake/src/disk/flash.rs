//! `disk flash`: a published disk image onto a whole disk.
//!
//! Before anything is written the disk is checked against what the kernel says about it
//! (`in_use.rs`). The device is then opened with `O_EXCL`, which the kernel refuses for a
//! disk in use, as a second guard.
//!
//! The image is written, read back past the page cache and compared with the manifest's
//! digest; then the backup partition table moves to the disk's real end (so the space past
//! the image is free for the data partition), the node's settings go onto the ESP when a node
//! is named, and the kernel re-reads the partition table.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::layout::SECTOR;
use crate::progress::Stage;

pub use super::in_use::{Disk, Kernel, check_target, in_use, major_minor};

/// What [`write`] did.
#[derive(Debug, Clone)]
pub struct Flashed {
    /// Bytes written.
    pub bytes: u64,
    /// Seconds spent writing (to the disk, synced).
    pub write_s: f64,
    /// Seconds spent reading back and verifying.
    pub verify_s: f64,
}

const CHUNK: usize = 4 << 20;

/// Writes `image` (whose sha256 is `digest`) onto the block device at `device`, which
/// [`in_use`] has accepted: all of it, synced, read back with `O_DIRECT` and compared; then
/// moves the backup partition table to the disk's end. Progress goes to `stage`.
pub fn write(image: &Path, digest: &str, device: &Path, stage: &Stage<'_>) -> Result<Flashed> {
    let start = Instant::now();
    let (len, dev_len) = copy_onto(image, device, stage)?;
    let write_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let got = read_back(device, len, stage)?;
    if got != digest {
        bail!(
            "{} does not read back as written: sha256 {got}, the image's is {digest}; the disk \
             may be failing",
            device.display()
        );
    }
    let verify_s = start.elapsed().as_secs_f64();
    if dev_len > len {
        move_backup_table(device, len)?;
    }
    Ok(Flashed {
        bytes: len,
        write_s,
        verify_s,
    })
}

/// Progress at most once a second, and at the end.
struct Every {
    last: Instant,
}

impl Every {
    fn due(&mut self, last: bool) -> bool {
        let due = last || self.last.elapsed().as_secs_f64() >= 1.0;
        if due {
            self.last = Instant::now();
        }
        due
    }
}

/// Copies `image` onto `device` (opened with `O_EXCL`) and syncs it; returns the image's and
/// the device's lengths.
fn copy_onto(image: &Path, device: &Path, stage: &Stage<'_>) -> Result<(u64, u64)> {
    let mut src = fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = src.metadata()?.len();
    let mut dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
        .with_context(|| {
            format!(
                "opening {} for writing (the kernel refuses a disk in use)",
                device.display()
            )
        })?;
    let dev_len = dev.seek(SeekFrom::End(0))?;
    dev.seek(SeekFrom::Start(0))?;
    let start = Instant::now();
    let mut every = Every { last: start };
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .with_context(|| format!("reading {}", image.display()))?;
        dev.write_all(&buf[..n])
            .with_context(|| format!("writing {} at byte {done}", device.display()))?;
        done += n as u64;
        if every.due(done == len) {
            let s = start.elapsed().as_secs_f64().max(1e-3);
            stage.line(&format!(
                "written {} of {} MiB ({:.0} MiB/s)",
                done >> 20,
                len >> 20,
                (done >> 20) as f64 / s
            ));
        }
    }
    dev.sync_all()
        .with_context(|| format!("syncing {}", device.display()))?;
    Ok((len, dev_len))
}

/// sha256 of the first `len` bytes of `device`, read past the page cache: `O_DIRECT` wants
/// buffers, offsets and lengths aligned to the sector size (the image is a whole number of
/// MiB).
fn read_back(device: &Path, len: u64, stage: &Stage<'_>) -> Result<String> {
    let mut dev = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .with_context(|| format!("opening {} to read it back", device.display()))?;
    let mut raw = vec![0u8; CHUNK + 4096];
    let skew = (4096 - (raw.as_ptr() as usize) % 4096) % 4096;
    let aligned = &mut raw[skew..skew + CHUNK];
    let mut hasher = Sha256::new();
    let mut every = Every {
        last: Instant::now(),
    };
    let mut read = 0u64;
    while read < len {
        let n = (len - read).min(CHUNK as u64) as usize;
        dev.read_exact(&mut aligned[..n])
            .with_context(|| format!("reading {} back at byte {read}", device.display()))?;
        hasher.update(&aligned[..n]);
        read += n as u64;
        if every.due(read == len) {
            stage.line(&format!("verified {} of {} MiB", read >> 20, len >> 20));
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Moves the backup GPT of an image of `image_len` bytes written at the start of a larger
/// disk to the disk's last sectors, and clears the old copy.
pub fn move_backup_table(device: &Path, image_len: u64) -> Result<()> {
    let mut dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("opening {}", device.display()))?;
    let mut gpt = gptman::GPT::read_from(&mut dev, SECTOR)
        .with_context(|| format!("reading back the partition table of {}", device.display()))?;
    let entries_sectors = u64::from(gpt.header.number_of_partition_entries)
        * u64::from(gpt.header.size_of_partition_entry)
        / SECTOR;
    gpt.header
        .update_from(&mut dev, SECTOR)
        .context("sizing the partition table to the disk")?;
    gpt.write_into(&mut dev)
        .with_context(|| format!("writing the partition table of {}", device.display()))?;
    // The old backup (entries, then header in the image's last sector) is now stale.
    let stale = (entries_sectors + 1) * SECTOR;
    dev.seek(SeekFrom::Start(image_len - stale))?;
    dev.write_all(&vec![0u8; stale as usize])?;
    dev.sync_all()?;
    Ok(())
}

/// Asks the kernel to re-read the partition table of `device`; says why when it cannot.
pub fn reread(device: &Path) -> Result<()> {
    let mut dev = fs::File::open(device)?;
    gptman::linux::reread_partition_table(&mut dev).map_err(|e| {
        anyhow::anyhow!(
            "the kernel did not re-read the partition table of {} ({e}); it will at the next \
             boot (or run `partprobe {}`)",
            device.display(),
            device.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_table_moves_to_the_end_of_a_larger_disk() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("disk");
        let sizes = crate::disk::layout::Sizes {
            esp_mib: 64,
            base_mib: 1,
            overlay_mib: 1,
            data_mib: 0,
        };
        let layout = crate::disk::layout::layout(&sizes, "seed").unwrap();
        let mut f = fs::File::create_new(&img).unwrap();
        f.set_len(layout.size).unwrap();
        let mut gpt = gptman::GPT::new_from(&mut f, SECTOR, [7; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 4095,
            attribute_bits: 0,
            partition_name: "ESP".into(),
        };
        gpt.write_into(&mut f).unwrap();
        f.set_len(layout.size + (8 << 20)).unwrap();
        drop(f);
        move_backup_table(&img, layout.size).unwrap();
        let mut f = fs::File::open(&img).unwrap();
        let gpt = gptman::GPT::read_from(&mut f, SECTOR).unwrap();
        let end = (layout.size + (8 << 20)) / SECTOR;
        assert_eq!(gpt.header.backup_lba, end - 1);
        assert_eq!(gpt.header.last_usable_lba, end - 34);
        assert_eq!(gpt[1].partition_name.as_str(), "ESP");
        // The old backup header is gone.
        let mut sector = vec![0u8; 512];
        f.seek(SeekFrom::Start(layout.size - 512)).unwrap();
        f.read_exact(&mut sector).unwrap();
        assert!(sector.iter().all(|b| *b == 0));
        // And the backup at the new end is a valid header.
        f.seek(SeekFrom::Start((end - 1) * SECTOR)).unwrap();
        f.read_exact(&mut sector).unwrap();
        assert_eq!(&sector[..8], b"EFI PART");
    }
}
