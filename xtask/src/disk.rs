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
//! SOURCE_DATE_EPOCH: the same inputs give the same bytes. [`layout`] is pure; [`write`] puts
//! a layout and its contents into a file.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// Bump when this module changes the bytes of a disk image (part of the version's digest).
pub const REVISION: u32 = 2;

/// Sector size.
pub const SECTOR: u64 = 512;
/// Partition alignment: 1 MiB.
pub const ALIGN: u64 = 2048;
const MIB: u64 = 1 << 20;

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
fn guid_text(b: [u8; 16]) -> String {
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
    let (year, month, day) = crate::apt::civil_from_days((epoch / 86400) as i64);
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
fn write_esp(
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

/// Brings what fatfs 0.3.6 writes in line with the FAT specification and dosfstools: it puts
/// long-name entries before each folder's `.` and `..` (which must be the first two entries),
/// points `..` of a top-level folder at the root's cluster (the specification says 0), and
/// leaves the FSInfo free-cluster count unset. Small and exact: reads the boot sector, walks
/// the folders from the root, rewrites the first entries of each folder and the count.
pub fn repair_fat32<T: Read + Write + Seek>(v: &mut T) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut bs = [0u8; 512];
    v.seek(SeekFrom::Start(0))?;
    v.read_exact(&mut bs)?;
    let le16 = |b: &[u8], at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let le32 = |b: &[u8], at: usize| {
        u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
    };
    let bps = le16(&bs, 11);
    let spc = u64::from(bs[13]);
    let reserved = le16(&bs, 14);
    let fats = u64::from(bs[16]);
    let total = le32(&bs, 32);
    let fat_size = le32(&bs, 36);
    let root = le32(&bs, 44);
    let fsinfo = le16(&bs, 48);
    if bps == 0 || spc == 0 || fat_size == 0 || le16(&bs, 17) != 0 {
        return Err(bad("not a FAT32 volume"));
    }
    let data_start = (reserved + fats * fat_size) * bps;
    let cluster_bytes = bps * spc;
    let clusters = (total - (reserved + fats * fat_size)) / spc;
    let mut fat = vec![0u8; (fat_size * bps) as usize];
    v.seek(SeekFrom::Start(reserved * bps))?;
    v.read_exact(&mut fat)?;
    let next = |c: u64| le32(&fat, (c * 4) as usize) & 0x0FFF_FFFF;
    let chain = |first: u64| -> io::Result<Vec<u64>> {
        let mut out = vec![first];
        let mut c = first;
        while (2..0x0FFF_FFF8).contains(&next(c)) {
            c = next(c);
            if out.len() as u64 > clusters {
                return Err(bad("a cluster chain loops"));
            }
            out.push(c);
        }
        Ok(out)
    };
    let at = |c: u64| data_start + (c - 2) * cluster_bytes;
    // (folder's first cluster, its parent's first cluster or 0 for the root)
    let mut todo = vec![(root, 0u64)];
    while let Some((dir, parent)) = todo.pop() {
        let mut raw = Vec::new();
        for c in chain(dir)? {
            let mut buf = vec![0u8; cluster_bytes as usize];
            v.seek(SeekFrom::Start(at(c)))?;
            v.read_exact(&mut buf)?;
            raw.extend_from_slice(&buf);
        }
        for e in raw.chunks(32) {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 || e[11] == 0x0F || e[11] & 0x10 == 0 || e[0] == b'.' {
                continue;
            }
            let child = (le16(e, 20) << 16) | le16(e, 26);
            todo.push((child, if dir == root { 0 } else { dir }));
        }
        if dir == root {
            continue;
        }
        let is_lfn = |i: usize| raw[i * 32 + 11] == 0x0F;
        let is_sfn = |i: usize, name: &[u8; 11]| raw[i * 32..i * 32 + 11] == name[..];
        let dot = *b".          ";
        let dotdot = *b"..         ";
        if is_lfn(0) && is_sfn(1, &dot) && is_lfn(2) && is_sfn(3, &dotdot) {
            let mut head = [0u8; 128];
            head[..32].copy_from_slice(&raw[32..64]);
            head[32..64].copy_from_slice(&raw[96..128]);
            let up = parent.to_le_bytes();
            head[32 + 20..32 + 22].copy_from_slice(&up[2..4]);
            head[32 + 26..32 + 28].copy_from_slice(&up[0..2]);
            head[64] = 0xE5;
            head[96] = 0xE5;
            v.seek(SeekFrom::Start(at(dir)))?;
            v.write_all(&head)?;
        }
    }
    let free = (2..clusters + 2).filter(|c| next(*c) == 0).count() as u32;
    let info = fsinfo * bps;
    let mut sig = [0u8; 4];
    v.seek(SeekFrom::Start(info))?;
    v.read_exact(&mut sig)?;
    if u32::from_le_bytes(sig) == 0x4161_5252 {
        v.seek(SeekFrom::Start(info + 488))?;
        v.write_all(&free.to_le_bytes())?;
    }
    v.flush()
}

/// Copies `src` into `disk` at `part`, refusing what does not fit.
fn write_raw(disk: &mut fs::File, part: &Part, src: &Path) -> Result<u64> {
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
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    disk.set_len(layout.size)?;
    let mut gpt = gptman::GPT::new_from(&mut disk, SECTOR, guid_bytes(&layout.disk_guid)?)
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
    gpt.write_into(&mut disk)
        .context("writing the partition table")?;
    gptman::GPT::write_protective_mbr_into(&mut disk, SECTOR)
        .context("writing the protective MBR")?;
    let esp = layout.part("ESP").context("the layout has no ESP")?;
    write_esp(&mut disk, esp, c.seed, c.epoch, c.esp)?;
    let slots: &[char] = if c.copy_to_b { &['a', 'b'] } else { &['a'] };
    for slot in slots {
        for (layer, src) in [("base", c.slot_a.0), ("overlay", c.slot_a.1)] {
            let label = slot_label(layer, *slot);
            let part = layout
                .part(&label)
                .with_context(|| format!("the layout has no {label}"))?;
            write_raw(&mut disk, part, src)?;
        }
    }
    disk.sync_all()?;
    Ok(())
}

/// The name of a slot's UKI under `EFI/Linux/`: `RECIPE-GENERATION-SLOT[+LEFT[-DONE]].efi`.
/// The generation grows by one with each update, so systemd-boot, which lists the newest
/// version first, offers the latest slot first; `+LEFT` is systemd-boot's boot counter (tries
/// left, tries done), absent on an entry known to be good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiName {
    /// The recipe.
    pub recipe: String,
    /// The generation: 1 for a new disk, one more for each update.
    pub generation: u64,
    /// `a` or `b`.
    pub slot: char,
    /// Boot counting: (tries left, tries done).
    pub tries: Option<(u32, u32)>,
}

/// How many boots an updated slot gets to reach ready before systemd-boot falls back.
pub const TRIES: u32 = 3;

impl UkiName {
    /// The entry of a new disk's slot: generation 1, known good.
    pub fn initial(recipe: &str, slot: char) -> UkiName {
        UkiName {
            recipe: recipe.into(),
            generation: 1,
            slot,
            tries: None,
        }
    }

    /// Its file name.
    pub fn file(&self) -> String {
        // Always the full `+LEFT-DONE` form (the spec also allows `+LEFT`), so the name keeps
        // its length as systemd-boot renames it at each counted boot.
        let tries = match self.tries {
            None => String::new(),
            Some((left, done)) => format!("+{left}-{done}"),
        };
        format!(
            "{}-{}-{}{tries}.efi",
            self.recipe, self.generation, self.slot
        )
    }

    /// Parses a file name; `None` for files that are not ironbake's.
    pub fn parse(file: &str) -> Option<UkiName> {
        let stem = file.strip_suffix(".efi")?;
        let (stem, tries) = match stem.split_once('+') {
            None => (stem, None),
            Some((s, t)) => {
                let (left, done) = t.split_once('-').unwrap_or((t, "0"));
                (s, Some((left.parse().ok()?, done.parse().ok()?)))
            }
        };
        let (rest, slot) = stem.rsplit_once('-')?;
        let slot = match slot {
            "a" => 'a',
            "b" => 'b',
            _ => return None,
        };
        let (recipe, generation) = rest.rsplit_once('-')?;
        Some(UkiName {
            recipe: recipe.into(),
            generation: generation.parse().ok()?,
            slot,
            tries,
        })
    }
}

/// The os-release a UKI carries: systemd-boot orders entries by `IMAGE_VERSION`, newest first,
/// so it is the generation; the published version is there for people.
pub fn uki_osrel(recipe: &str, version: &str, slot: char, generation: u64) -> String {
    format!(
        "ID=debian\nNAME=\"ironbake {recipe}\"\nIMAGE_ID={recipe}\nIMAGE_VERSION={generation}\n\
         VERSION=\"{version}\"\nPRETTY_NAME=\"{recipe} {version} (slot {slot}, generation \
         {generation})\"\n"
    )
}

/// The UKI that boots a published version (its folder `vdir`) from `slot`: Debian's stub with
/// the version's kernel and initramfs, and a command line that names the slot's partitions.
pub fn slot_uki(
    vdir: &Path,
    recipe: &str,
    version: &str,
    cmdline: &str,
    kernel_release: &str,
    slot: char,
    generation: u64,
) -> Result<Vec<u8>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let cmdline = format!(
        "{} ironbake.root=partlabel:{},partlabel:{} ironbake.slot={slot}",
        cmdline.trim(),
        slot_label("base", slot),
        slot_label("overlay", slot)
    );
    let osrel = uki_osrel(recipe, version, slot, generation);
    crate::uki::assemble(
        &read(Path::new(crate::uki::STUB))?,
        &crate::uki::Parts {
            osrel: osrel.as_bytes(),
            cmdline: cmdline.as_bytes(),
            uname: kernel_release.as_bytes(),
            initrd: &read(&vdir.join("initrd.img"))?,
            linux: &read(&vdir.join("vmlinuz"))?,
        },
    )
    .context("assembling the unified kernel image")
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

/// What [`update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The slot written.
    pub slot: char,
    /// The new entry's file name.
    pub entry: String,
    /// Entries removed from that slot.
    pub removed: Vec<String>,
}

/// Writes a published version (folder `vdir`) into the inactive slot of the disk or image at
/// `target` and makes it the next boot, with [`TRIES`] boots to reach ready before
/// systemd-boot falls back to the other slot. The active slot is the one of the newest entry;
/// its partitions and entry are not touched.
pub fn update(target: &Path, vdir: &Path, m: &netboot::layout::Manifest) -> Result<Updated> {
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("opening {}", target.display()))?;
    let layout = read_layout(target)?;
    let find = |label: &str| -> Result<(u64, u64)> {
        layout
            .part(label)
            .map(|p| (p.offset(), p.offset() + p.bytes()))
            .with_context(|| {
                format!(
                    "{}: no partition labelled {label}: not an ironbake disk",
                    target.display()
                )
            })
    };
    let esp = find("ESP")?;
    // The entries now on the ESP.
    let entries: Vec<UkiName> = {
        let slice = fscommon::StreamSlice::new(&mut disk, esp.0, esp.1)?;
        let fs =
            fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).context("reading the ESP")?;
        let dir = fs
            .root_dir()
            .open_dir("EFI/Linux")
            .context("the ESP has no EFI/Linux folder: not an ironbake disk")?;
        let mut v = Vec::new();
        for e in dir.iter() {
            if let Some(n) = UkiName::parse(&e?.file_name()) {
                v.push(n);
            }
        }
        v
    };
    let newest = entries.iter().max_by_key(|e| e.generation);
    let slot = match newest {
        Some(n) if n.slot == 'a' => 'b',
        _ => 'a',
    };
    let generation = newest.map_or(1, |n| n.generation + 1);
    // The layers first: until the entry is written, the slot is not booted.
    for (layer, file) in [("base", "base.squashfs"), ("overlay", "overlay.squashfs")] {
        let label = slot_label(layer, slot);
        find(&label)?;
        let part = layout.part(&label).expect("found above").clone();
        write_raw(&mut disk, &part, &vdir.join(file))?;
    }
    disk.sync_all()?;
    let cmdline =
        fs::read_to_string(vdir.join("cmdline")).context("reading the version's cmdline")?;
    let image = slot_uki(
        vdir,
        &m.recipe,
        &m.version,
        &cmdline,
        &m.kernel.release,
        slot,
        generation,
    )?;
    let name = UkiName {
        recipe: m.recipe.clone(),
        generation,
        slot,
        tries: Some((TRIES, 0)),
    };
    let removed = edit_esp(&mut disk, esp, m.source_date_epoch, |root| {
        let dir = root.open_dir("EFI/Linux")?;
        let mut removed = Vec::new();
        for e in entries.iter().filter(|e| e.slot == slot) {
            dir.remove(&e.file())
                .with_context(|| format!("removing EFI/Linux/{}", e.file()))?;
            removed.push(e.file());
        }
        let mut f = dir.create_file(&name.file())?;
        f.truncate()?;
        f.write_all(&image).with_context(|| {
            format!("writing EFI/Linux/{} ({} bytes)", name.file(), image.len())
        })?;
        f.flush()?;
        Ok(removed)
    })?;
    Ok(Updated {
        slot,
        entry: name.file(),
        removed,
    })
}

/// Opens the FAT filesystem of the ESP at byte range `esp` of `disk`, lets `f` change it, then
/// closes it, applies [`repair_fat32`] and syncs. New entries get SOURCE_DATE_EPOCH (`epoch`):
/// without a time provider fatfs stamps them with month 0, which firmware rejects when
/// systemd-boot renames an entry to count a boot.
fn edit_esp<T>(
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

/// Where a disk's ESP carries its node's settings (the archive the boot server would send):
/// systemd-stub hands every `loader/credentials/*.cred` to the kernel, inside the initramfs,
/// as `/.extra/global_credentials/`, whichever slot boots.
pub const NODE_SETTINGS: &str = "loader/credentials/ironbake-node.cred";

/// Writes a node's settings archive onto the ESP of the disk or image at `target` (`None`:
/// removes it, and the disk boots as no node in particular). `epoch` stamps the entry.
pub fn set_node_settings(target: &Path, settings: Option<&[u8]>, epoch: u64) -> Result<()> {
    let layout = read_layout(target)?;
    let esp = layout.part("ESP").with_context(|| {
        format!(
            "{}: no partition labelled ESP: not an ironbake disk",
            target.display()
        )
    })?;
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("opening {}", target.display()))?;
    let range = (esp.offset(), esp.offset() + esp.bytes());
    edit_esp(&mut disk, range, epoch, |root| {
        let (folder, file) = NODE_SETTINGS.rsplit_once('/').expect("has a folder");
        let dir = match root.open_dir(folder) {
            Ok(d) => d,
            Err(_) if settings.is_none() => return Ok(()),
            Err(_) => {
                let parent = root
                    .open_dir("loader")
                    .context("the ESP has no loader folder")?;
                parent.create_dir("credentials")?
            }
        };
        match settings {
            Some(data) => {
                let mut f = dir.create_file(file)?;
                f.truncate()?;
                f.write_all(data)
                    .with_context(|| format!("writing {NODE_SETTINGS} ({} bytes)", data.len()))?;
                f.flush()?;
            }
            None => {
                if dir.iter().any(|e| e.is_ok_and(|e| e.file_name() == file)) {
                    dir.remove(file)?;
                }
            }
        }
        Ok(())
    })
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

    fn sizes() -> Sizes {
        Sizes {
            esp_mib: 64,
            base_mib: 8,
            overlay_mib: 1,
            data_mib: 4,
        }
    }

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
    fn uki_names_carry_generation_slot_and_boot_counter() {
        let first = UkiName::initial("core-node", 'a');
        assert_eq!(first.file(), "core-node-1-a.efi");
        assert_eq!(UkiName::parse("core-node-1-a.efi"), Some(first));
        let counted = UkiName::parse("core-node-12-b+2-1.efi").unwrap();
        assert_eq!(
            (counted.generation, counted.slot, counted.tries),
            (12, 'b', Some((2, 1)))
        );
        assert_eq!(counted.file(), "core-node-12-b+2-1.efi");
        let short = UkiName::parse("core-node-3-a+3.efi").unwrap();
        assert_eq!(short.tries, Some((3, 0)));
        assert_eq!(
            short.file(),
            "core-node-3-a+3-0.efi",
            "written with both counts"
        );
        for not_ours in [
            "linux.efi",
            "core-node-x-a.efi",
            "core-node-1-c.efi",
            "a-1-a.conf",
        ] {
            assert_eq!(UkiName::parse(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn fat_times_follow_the_calendar() {
        let t = fat_time(1_723_282_601); // Sat, 10 Aug 2024 09:36:41 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2024, 8, 10));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (9, 36, 41));
        assert_eq!(fat_time(0).date.year, 1980, "clamped to FAT's range");
        assert_eq!(roomy_mib(100 * MIB), 192);
        assert_eq!(roomy_mib(1), 64);
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
