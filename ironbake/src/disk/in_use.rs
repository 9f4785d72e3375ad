//! What the kernel says about a disk before `disk flash` writes it ([`in_use`], from `/sys`
//! and `/proc`): a partition instead of a disk, a read-only disk, a disk or partition that is
//! mounted (the system disk is), used as swap, or held by device-mapper, RAID or another
//! driver, a disk smaller than the image, and sectors other than 512 bytes are all refused
//! with what was found. Pure over a [`Kernel`] root, so tests give it a fake `/sys`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::layout::SECTOR;

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
}
