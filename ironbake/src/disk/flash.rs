//! `disk flash`: a published disk image onto a whole disk.
//!
//! Before anything is written the disk is checked against what the kernel says about it
//! ([`in_use`], from `/sys` and `/proc`): a partition instead of a disk, a read-only disk, a
//! disk or partition that is mounted (the system disk is), used as swap, or held by
//! device-mapper, RAID or another driver, a disk smaller than the image, and sectors other
//! than 512 bytes are all refused with what was found. The device is then opened with
//! `O_EXCL`, which the kernel refuses for a disk in use, as a second guard.
//!
//! The image is written, read back past the page cache and compared with the manifest's
//! digest; then the backup partition table moves to the disk's real end (so the space past
//! the image is free for the data partition), the node's settings go onto the ESP when a node
//! is named, and the kernel re-reads the partition table.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::layout::SECTOR;
use crate::progress::Stage;

/// A whole disk, as the kernel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Its kernel name (`sdb`, `nvme0n1`, `loop3`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Vendor and model, when the kernel knows them.
    pub model: String,
}

/// Where the kernel's views are read from: `/` on a machine; a folder with `sys/` and `proc/`
/// trees in tests.
#[derive(Debug, Clone)]
pub struct Kernel {
    root: PathBuf,
}

impl Kernel {
    /// The running kernel's `/sys` and `/proc`.
    pub fn live() -> Kernel {
        Kernel { root: "/".into() }
    }

    /// `sys/` and `proc/` under `root` (tests).
    pub fn at(root: &Path) -> Kernel {
        Kernel { root: root.into() }
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.root.join(rel))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn block(&self, name: &str) -> PathBuf {
        self.root.join("sys/class/block").join(name)
    }

    /// The kernel name of the block device numbered `major:minor`.
    pub fn name_of(&self, major: u32, minor: u32) -> Option<String> {
        let link = self
            .root
            .join(format!("sys/dev/block/{major}:{minor}"))
            .canonicalize()
            .ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// The partitions of disk `name`: (kernel name, `major:minor`).
    fn partitions(&self, name: &str) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Ok(dir) = fs::read_dir(self.block(name)) {
            for e in dir.flatten() {
                let p = e.path();
                if p.join("partition").is_file() {
                    let dev = fs::read_to_string(p.join("dev")).unwrap_or_default();
                    v.push((
                        e.file_name().to_string_lossy().into_owned(),
                        dev.trim().to_string(),
                    ));
                }
            }
        }
        v.sort();
        v
    }
}

/// Why a disk cannot be flashed, in words; the disk when it can. `image_len` is the image's
/// size. Pure over `k` (see [`Kernel::at`]).
pub fn in_use(k: &Kernel, name: &str, image_len: u64) -> Result<Disk, String> {
    if !k.block(name).exists() {
        return Err(format!("the kernel knows no block device {name}"));
    }
    refuse_partition(k, name)?;
    if k.read(&format!("sys/class/block/{name}/ro")).as_deref() == Some("1") {
        return Err(format!("/dev/{name} is read-only"));
    }
    let mut devices = vec![(
        name.to_string(),
        k.read(&format!("sys/class/block/{name}/dev"))
            .unwrap_or_default(),
    )];
    devices.extend(k.partitions(name));
    refuse_mounted(k, name, &devices)?;
    refuse_swap(k, &devices)?;
    refuse_held(k, &devices)?;
    let size = fits(k, name, image_len)?;
    let model = [
        k.read(&format!("sys/class/block/{name}/device/vendor")),
        k.read(&format!("sys/class/block/{name}/device/model")),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Ok(Disk {
        name: name.to_string(),
        size,
        model,
    })
}

/// A block device and its partitions: (kernel name, `major:minor`).
type Devices = [(String, String)];

/// Refuses a partition: the whole disk is what gets flashed.
fn refuse_partition(k: &Kernel, name: &str) -> Result<(), String> {
    let Some(n) = k.read(&format!("sys/class/block/{name}/partition")) else {
        return Ok(());
    };
    let disk = k
        .block(name)
        .canonicalize()
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "its disk".into());
    Err(format!(
        "/dev/{name} is partition {n} of /dev/{disk}: flash the whole disk (/dev/{disk})"
    ))
}

/// Refuses a disk of which anything is mounted: by device number, or by the source path for
/// filesystems (btrfs) that report an anonymous device number.
fn refuse_mounted(k: &Kernel, name: &str, devices: &Devices) -> Result<(), String> {
    let mountinfo = k.read("proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(devno), Some(point), Some(source)) = (f.get(2), f.get(4), f.get(sep + 2)) else {
            continue;
        };
        for (dev, number) in devices {
            if *devno == number || source.strip_prefix("/dev/") == Some(dev.as_str()) {
                let point = point.replace("\\040", " ");
                let system = matches!(
                    point.as_str(),
                    "/" | "/usr" | "/boot" | "/boot/efi" | "/efi" | "/var" | "/home"
                );
                let what = if system {
                    format!(": /dev/{name} is a system disk")
                } else {
                    format!(": unmount it first (umount {point})")
                };
                return Err(format!("/dev/{dev} is mounted at {point}{what}"));
            }
        }
    }
    Ok(())
}

/// Refuses a disk of which anything is swap.
fn refuse_swap(k: &Kernel, devices: &Devices) -> Result<(), String> {
    let swaps = k.read("proc/swaps").unwrap_or_default();
    for path in swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        for (dev, _) in devices {
            if path.strip_prefix("/dev/") == Some(dev.as_str()) {
                return Err(format!(
                    "/dev/{dev} is in use as swap: swapoff /dev/{dev} first"
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a disk of which anything is held by device-mapper, RAID or another driver.
fn refuse_held(k: &Kernel, devices: &Devices) -> Result<(), String> {
    for (dev, _) in devices {
        if let Ok(mut h) = fs::read_dir(k.block(dev).join("holders"))
            && let Some(Ok(holder)) = h.next()
        {
            let hname = holder.file_name().to_string_lossy().into_owned();
            let what = k
                .read(&format!("sys/class/block/{hname}/dm/name"))
                .map(|n| format!("device-mapper device {n} (LVM, LUKS or multipath)"))
                .unwrap_or_else(|| format!("{hname} (RAID or device-mapper)"));
            return Err(format!("/dev/{dev} is held by {what}: stop it first"));
        }
    }
    Ok(())
}

/// The disk's size, if the image fits and its sectors are the image's.
fn fits(k: &Kernel, name: &str, image_len: u64) -> Result<u64, String> {
    let size = k
        .read(&format!("sys/class/block/{name}/size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| s * 512)
        .ok_or_else(|| format!("cannot read the size of /dev/{name}"))?;
    if size < image_len {
        return Err(format!(
            "/dev/{name} holds {} MiB, the image needs {} MiB",
            size >> 20,
            image_len.div_ceil(1 << 20)
        ));
    }
    let lbs = k
        .read(&format!("sys/class/block/{name}/queue/logical_block_size"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(SECTOR);
    if lbs != SECTOR {
        return Err(format!(
            "/dev/{name} has {lbs}-byte sectors; ironbake's disk images are made for 512-byte \
             sectors"
        ));
    }
    Ok(size)
}

/// The disk at `device` if it may take an image of `image_len` bytes (0: any size), from
/// what the running kernel says of it; otherwise why not.
pub fn check_target(device: &Path, image_len: u64) -> Result<Disk> {
    let k = Kernel::live();
    let name = device_name(&k, device)?;
    in_use(&k, &name, image_len)
        .map_err(|why| anyhow::anyhow!("not writing to {}: {why}", device.display()))
}

impl std::fmt::Display for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/dev/{} (", self.name)?;
        if !self.model.is_empty() {
            write!(f, "{}, ", self.model)?;
        }
        write!(f, "{} MiB)", self.size >> 20)
    }
}

/// The major and minor numbers of a device number (`st_rdev`, `st_dev`), as glibc's
/// `major()` and `minor()` split it.
pub fn major_minor(dev: u64) -> (u32, u32) {
    (
        ((dev >> 32) & 0xffff_f000) as u32 | ((dev >> 8) & 0xfff) as u32,
        ((dev >> 12) & 0xffff_ff00) as u32 | (dev & 0xff) as u32,
    )
}

/// The kernel name of the block device at `path` (symbolic links such as
/// `/dev/disk/by-id/...` followed); refuses what is not a block device.
pub fn device_name(k: &Kernel, path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!(
            "{} is not a block device: `disk flash` writes whole disks (for the image as a file, \
             copy the version's disk.img)",
            path.display()
        );
    }
    let (major, minor) = major_minor(meta.rdev());
    k.name_of(major, minor).with_context(|| {
        format!(
            "{} is device {major}:{minor}, which /sys does not list",
            path.display()
        )
    })
}

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
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut shown = Instant::now();
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .with_context(|| format!("reading {}", image.display()))?;
        dev.write_all(&buf[..n])
            .with_context(|| format!("writing {} at byte {done}", device.display()))?;
        done += n as u64;
        if shown.elapsed().as_secs_f64() >= 1.0 || done == len {
            shown = Instant::now();
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
    let write_s = start.elapsed().as_secs_f64();
    drop(dev);

    // Read back past the page cache: O_DIRECT wants buffers, offsets and lengths aligned to
    // the sector size; the image is a whole number of MiB.
    let start = Instant::now();
    let mut dev = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .with_context(|| format!("opening {} to read it back", device.display()))?;
    let mut raw = vec![0u8; CHUNK + 4096];
    let skew = (4096 - (raw.as_ptr() as usize) % 4096) % 4096;
    let aligned = &mut raw[skew..skew + CHUNK];
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    while read < len {
        let n = (len - read).min(CHUNK as u64) as usize;
        dev.read_exact(&mut aligned[..n])
            .with_context(|| format!("reading {} back at byte {read}", device.display()))?;
        hasher.update(&aligned[..n]);
        read += n as u64;
        if shown.elapsed().as_secs_f64() >= 1.0 || read == len {
            shown = Instant::now();
            stage.line(&format!("verified {} of {} MiB", read >> 20, len >> 20));
        }
    }
    let got = hex::encode(hasher.finalize());
    if got != digest {
        bail!(
            "{} does not read back as written: sha256 {got}, the image's is {digest}; the disk \
             may be failing",
            device.display()
        );
    }
    let verify_s = start.elapsed().as_secs_f64();
    drop(dev);

    if dev_len > len {
        move_backup_table(device, len)?;
    }
    Ok(Flashed {
        bytes: len,
        write_s,
        verify_s,
    })
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

    /// A fake `/sys` and `/proc`: disk `sdb` (2 GiB, two partitions) and `sda` (the system
    /// disk: sda2 mounted at /, sda3 held by dm-0, sda4 swap).
    fn kernel(mountinfo: &str) -> (tempfile::TempDir, Kernel) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |rel: &str, text: &str| {
            let p = r.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        for (disk, major, sectors, parts) in
            [("sda", 8, 500_000_000u64, 4u32), ("sdb", 8, 4_194_304, 2)]
        {
            let base = if disk == "sda" { 0 } else { 16 };
            let d = format!("sys/devices/pci0000:00/block/{disk}");
            w(&format!("{d}/dev"), &format!("{major}:{base}\n"));
            w(&format!("{d}/size"), &format!("{sectors}\n"));
            w(&format!("{d}/ro"), "0\n");
            w(&format!("{d}/queue/logical_block_size"), "512\n");
            w(&format!("{d}/device/vendor"), "ATA\n");
            w(&format!("{d}/device/model"), "Test Disk\n");
            fs::create_dir_all(r.join(format!("{d}/holders"))).unwrap();
            fs::create_dir_all(r.join("sys/class/block")).unwrap();
            std::os::unix::fs::symlink(r.join(&d), r.join(format!("sys/class/block/{disk}")))
                .unwrap();
            for p in 1..=parts {
                let pd = format!("{d}/{disk}{p}");
                w(&format!("{pd}/dev"), &format!("{major}:{}\n", base + p));
                w(&format!("{pd}/partition"), &format!("{p}\n"));
                fs::create_dir_all(r.join(format!("{pd}/holders"))).unwrap();
                std::os::unix::fs::symlink(
                    r.join(&pd),
                    r.join(format!("sys/class/block/{disk}{p}")),
                )
                .unwrap();
            }
        }
        fs::create_dir_all(r.join("sys/devices/virtual/block/dm-0/dm")).unwrap();
        w("sys/devices/virtual/block/dm-0/dm/name", "vg-data\n");
        std::os::unix::fs::symlink(
            r.join("sys/devices/virtual/block/dm-0"),
            r.join("sys/class/block/dm-0"),
        )
        .unwrap();
        fs::create_dir_all(r.join("sys/devices/pci0000:00/block/sda/sda3/holders/dm-0")).unwrap();
        w(
            "proc/swaps",
            "Filename Type Size Used Priority\n/dev/sda4 partition 1000 0 -2\n",
        );
        w("proc/self/mountinfo", mountinfo);
        let k = Kernel::at(r);
        (t, k)
    }

    const ROOT: &str = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                        23 22 0:21 / /proc rw shared:2 - proc proc rw\n";

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(major_minor(0x0811), (8, 17));
        // Minor 65536 of major 259 (NVMe-style numbers past 8 bits).
        assert_eq!(major_minor(0x1001_0300), (259, 65536));
    }

    #[test]
    fn a_free_disk_is_accepted_with_its_size_and_model() {
        let (_t, k) = kernel(ROOT);
        let d = in_use(&k, "sdb", 1 << 30).unwrap();
        assert_eq!(d.size, 4_194_304 * 512);
        assert_eq!(d.model, "ATA Test Disk");
    }

    #[test]
    fn the_system_disk_is_refused_with_the_partition_and_mount_point() {
        let (_t, k) = kernel(ROOT);
        let e = in_use(&k, "sda", 1 << 30).unwrap_err();
        assert_eq!(e, "/dev/sda2 is mounted at /: /dev/sda is a system disk");
    }

    #[test]
    fn a_mounted_partition_swap_holders_and_partitions_are_refused() {
        let (_t, k) = kernel(&format!(
            "{ROOT}40 22 8:17 / /mnt/usb\\040stick rw - vfat /dev/sdb1 rw\n"
        ));
        let e = in_use(&k, "sdb", 1 << 30).unwrap_err();
        assert_eq!(
            e,
            "/dev/sdb1 is mounted at /mnt/usb stick: unmount it first (umount /mnt/usb stick)"
        );
        // btrfs reports an anonymous device number; the source still names the partition.
        let (_t, k) = kernel(&format!(
            "{ROOT}40 22 0:45 / /srv rw - btrfs /dev/sdb2 rw\n"
        ));
        assert!(
            in_use(&k, "sdb", 1 << 30)
                .unwrap_err()
                .contains("/dev/sdb2 is mounted at /srv")
        );
        // sda without its root mount: still swap, then dm.
        let (_t, k) = kernel("");
        assert_eq!(
            in_use(&k, "sda", 1 << 30).unwrap_err(),
            "/dev/sda4 is in use as swap: swapoff /dev/sda4 first"
        );
        fs::write(
            k.root.join("proc/swaps"),
            "Filename Type Size Used Priority\n",
        )
        .unwrap();
        assert_eq!(
            in_use(&k, "sda", 1 << 30).unwrap_err(),
            "/dev/sda3 is held by device-mapper device vg-data (LVM, LUKS or multipath): stop it first"
        );
        assert_eq!(
            in_use(&k, "sdb1", 1 << 30).unwrap_err(),
            "/dev/sdb1 is partition 1 of /dev/sdb: flash the whole disk (/dev/sdb)"
        );
        assert_eq!(
            in_use(&k, "sdc", 1 << 30).unwrap_err(),
            "the kernel knows no block device sdc"
        );
    }

    #[test]
    fn a_small_read_only_or_4k_disk_is_refused() {
        let (_t, k) = kernel(ROOT);
        assert_eq!(
            in_use(&k, "sdb", 3 << 30).unwrap_err(),
            "/dev/sdb holds 2048 MiB, the image needs 3072 MiB"
        );
        let q = k.block("sdb").join("queue/logical_block_size");
        fs::write(&q, "4096\n").unwrap();
        assert!(
            in_use(&k, "sdb", 1 << 30)
                .unwrap_err()
                .contains("4096-byte sectors")
        );
        fs::write(k.block("sdb").join("ro"), "1\n").unwrap();
        assert_eq!(
            in_use(&k, "sdb", 1 << 30).unwrap_err(),
            "/dev/sdb is read-only"
        );
    }

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
