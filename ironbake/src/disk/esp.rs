//! The ESP: FAT32 formatted by fatfs with fixed timestamps, written whole for a new image
//! and edited in place (an update's UKI, a node's settings), then repaired.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use super::fat_repair::repair_fat32;
use super::layout::{Part, SECTOR, TYPE_ESP, guid_bytes};

/// A file for the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// Path inside the ESP, `/`-separated (`EFI/BOOT/BOOTX64.EFI`).
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// A FAT timestamp for seconds since the epoch (clamped to FAT's 1980-2107 range).
pub fn fat_time(epoch: u64) -> fatfs::DateTime {
    let secs = epoch % 86400;
    let (year, month, day) = crate::date::civil_from_days((epoch / 86400) as i64);
    let (year, month, day) = (year.clamp(1980, 2107) as u16, month as u16, day as u16);
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs % 3600 / 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Formats the ESP (FAT32) in `disk` at `part` and writes `files` into it.
pub(super) fn write_esp(
    disk: &mut fs::File,
    part: &Part,
    seed: &str,
    epoch: u64,
    files: &[EspFile],
) -> Result<()> {
    let slice =
        fscommon::StreamSlice::new(&mut *disk, part.offset(), part.offset() + part.bytes())?;
    let id = Sha256::digest(format!("ironbake esp {seed}").as_bytes());
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    fatfs::format_volume(
        slice,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )
    .context("formatting the ESP")?;
    let slice =
        fscommon::StreamSlice::new(&mut *disk, part.offset(), part.offset() + part.bytes())?;
    // fatfs wants a provider for the whole program's life; one per disk written is small.
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new().time_provider(time))
        .context("opening the new ESP")?;
    ensure!(
        fs.fat_type() == fatfs::FatType::Fat32,
        "the ESP came out as {:?}, not FAT32",
        fs.fat_type()
    );
    let mut sorted: Vec<&EspFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    {
        let root = fs.root_dir();
        for f in sorted {
            let parts: Vec<&str> = f.path.split('/').collect();
            let mut dir = root.clone();
            for d in &parts[..parts.len() - 1] {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir
                        .create_dir(d)
                        .with_context(|| format!("ESP: creating {d}"))?,
                };
            }
            let mut file = dir
                .create_file(parts[parts.len() - 1])
                .with_context(|| format!("ESP: creating {}", f.path))?;
            file.truncate()?;
            file.write_all(&f.data)
                .with_context(|| format!("ESP: writing {} ({} bytes)", f.path, f.data.len()))?;
            file.flush()?;
        }
    }
    fs.unmount().context("closing the ESP")?;
    let mut slice =
        fscommon::StreamSlice::new(&mut *disk, part.offset(), part.offset() + part.bytes())?;
    repair_fat32(&mut slice).context("finishing the ESP's folders")?;
    Ok(())
}

/// Opens the FAT filesystem of the ESP at byte range `esp` of `disk`, lets `f` change it, then
/// closes it, applies [`repair_fat32`] and syncs. New entries get SOURCE_DATE_EPOCH (`epoch`):
/// without a time provider fatfs stamps them with month 0, which firmware rejects when
/// systemd-boot renames an entry to count a boot.
pub(super) fn edit_esp<T>(
    disk: &mut fs::File,
    esp: (u64, u64),
    epoch: u64,
    f: impl FnOnce(&fatfs::Dir<'_, fscommon::StreamSlice<&mut fs::File>>) -> Result<T>,
) -> Result<T> {
    let out = {
        let slice = fscommon::StreamSlice::new(&mut *disk, esp.0, esp.1)?;
        let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new().time_provider(time))
            .context("opening the ESP")?;
        let out = {
            let root = fs.root_dir();
            f(&root)?
        };
        fs.unmount().context("closing the ESP")?;
        out
    };
    let mut slice = fscommon::StreamSlice::new(&mut *disk, esp.0, esp.1)?;
    repair_fat32(&mut slice)?;
    disk.sync_all()?;
    Ok(out)
}

/// Reads back the files of a disk image's ESP (for checks and tests).
pub fn read_esp(image: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut disk = fs::File::open(image)?;
    let gpt = gptman::GPT::read_from(&mut disk, SECTOR).context("reading the partition table")?;
    let esp_type = guid_bytes(TYPE_ESP)?;
    let (_, e) = gpt
        .iter()
        .find(|(_, e)| e.is_used() && e.partition_type_guid == esp_type)
        .context("no ESP in the partition table")?;
    let (start, end) = (e.starting_lba * SECTOR, (e.ending_lba + 1) * SECTOR);
    let mut disk = fs::OpenOptions::new().read(true).write(true).open(image)?;
    let slice = fscommon::StreamSlice::new(&mut disk, start, end)?;
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())?;
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = stack.pop() {
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if entry.is_dir() {
                stack.push((path, entry.to_dir()));
            } else {
                let mut data = Vec::new();
                entry.to_file().read_to_end(&mut data)?;
                out.push((path, data));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_times_follow_the_calendar() {
        let t = fat_time(1_723_282_601); // Sat, 10 Aug 2024 09:36:41 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2024, 8, 10));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (9, 36, 41));
        assert_eq!(fat_time(0).date.year, 1980, "clamped to FAT's range");
    }
}
