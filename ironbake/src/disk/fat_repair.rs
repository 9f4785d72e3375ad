//! A repair pass over what fatfs 0.3.6 writes (small and exact, so fsck.fat finds nothing).

use std::io::{self, Read, Seek, SeekFrom, Write};

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// A FAT32 volume's geometry, from its boot sector, and its first FAT.
struct Volume {
    bytes_per_sector: u64,
    root: u64,
    fsinfo: u64,
    data_start: u64,
    cluster_bytes: u64,
    clusters: u64,
    fat: Vec<u8>,
}

impl Volume {
    fn read<T: Read + Seek>(v: &mut T) -> io::Result<Volume> {
        let mut bs = [0u8; 512];
        v.seek(SeekFrom::Start(0))?;
        v.read_exact(&mut bs)?;
        let bps = le16(&bs, 11);
        let spc = u64::from(bs[13]);
        let reserved = le16(&bs, 14);
        let fats = u64::from(bs[16]);
        let total = le32(&bs, 32);
        let fat_size = le32(&bs, 36);
        if bps == 0 || spc == 0 || fat_size == 0 || le16(&bs, 17) != 0 {
            return Err(bad("not a FAT32 volume"));
        }
        let mut fat = vec![0u8; (fat_size * bps) as usize];
        v.seek(SeekFrom::Start(reserved * bps))?;
        v.read_exact(&mut fat)?;
        Ok(Volume {
            bytes_per_sector: bps,
            root: le32(&bs, 44),
            fsinfo: le16(&bs, 48),
            data_start: (reserved + fats * fat_size) * bps,
            cluster_bytes: bps * spc,
            clusters: (total - (reserved + fats * fat_size)) / spc,
            fat,
        })
    }

    /// The cluster after `c` in its chain (or an end/free marker).
    fn next(&self, c: u64) -> u64 {
        le32(&self.fat, (c * 4) as usize) & 0x0FFF_FFFF
    }

    /// The clusters of the chain that starts at `first`.
    fn chain(&self, first: u64) -> io::Result<Vec<u64>> {
        let mut out = vec![first];
        let mut c = first;
        while (2..0x0FFF_FFF8).contains(&self.next(c)) {
            c = self.next(c);
            if out.len() as u64 > self.clusters {
                return Err(bad("a cluster chain loops"));
            }
            out.push(c);
        }
        Ok(out)
    }

    /// The byte offset of cluster `c`.
    fn at(&self, c: u64) -> u64 {
        self.data_start + (c - 2) * self.cluster_bytes
    }

    /// The entries of the folder that starts at cluster `dir`.
    fn folder<T: Read + Seek>(&self, v: &mut T, dir: u64) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        for c in self.chain(dir)? {
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            v.seek(SeekFrom::Start(self.at(c)))?;
            v.read_exact(&mut buf)?;
            raw.extend_from_slice(&buf);
        }
        Ok(raw)
    }
}

/// The first cluster of each subfolder listed in a folder's entries.
fn subfolders(raw: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for e in raw.chunks(32) {
        if e[0] == 0 {
            break;
        }
        if e[0] == 0xE5 || e[11] == 0x0F || e[11] & 0x10 == 0 || e[0] == b'.' {
            continue;
        }
        out.push((le16(e, 20) << 16) | le16(e, 26));
    }
    out
}

/// The first four entries of a folder as fatfs writes them (long name, `.`, long name, `..`)
/// rewritten as `.`, `..` pointing at `parent`, and two deleted entries; `None` when the
/// folder does not start that way.
fn fixed_head(raw: &[u8], parent: u64) -> Option<[u8; 128]> {
    let is_lfn = |i: usize| raw[i * 32 + 11] == 0x0F;
    let is_sfn = |i: usize, name: &[u8; 11]| raw[i * 32..i * 32 + 11] == name[..];
    if !(is_lfn(0) && is_sfn(1, b".          ") && is_lfn(2) && is_sfn(3, b"..         ")) {
        return None;
    }
    let mut head = [0u8; 128];
    head[..32].copy_from_slice(&raw[32..64]);
    head[32..64].copy_from_slice(&raw[96..128]);
    let up = parent.to_le_bytes();
    head[32 + 20..32 + 22].copy_from_slice(&up[2..4]);
    head[32 + 26..32 + 28].copy_from_slice(&up[0..2]);
    head[64] = 0xE5;
    head[96] = 0xE5;
    Some(head)
}

/// Brings what fatfs 0.3.6 writes in line with the FAT specification and dosfstools: it puts
/// long-name entries before each folder's `.` and `..` (which must be the first two entries),
/// points `..` of a top-level folder at the root's cluster (the specification says 0), and
/// leaves the FSInfo free-cluster count unset. Small and exact: reads the boot sector, walks
/// the folders from the root, rewrites the first entries of each folder and the count.
pub fn repair_fat32<T: Read + Write + Seek>(v: &mut T) -> io::Result<()> {
    let vol = Volume::read(v)?;
    // (folder's first cluster, its parent's first cluster or 0 for the root)
    let mut todo = vec![(vol.root, 0u64)];
    while let Some((dir, parent)) = todo.pop() {
        let raw = vol.folder(v, dir)?;
        let up = if dir == vol.root { 0 } else { dir };
        todo.extend(subfolders(&raw).into_iter().map(|child| (child, up)));
        if dir == vol.root {
            continue;
        }
        if let Some(head) = fixed_head(&raw, parent) {
            v.seek(SeekFrom::Start(vol.at(dir)))?;
            v.write_all(&head)?;
        }
    }
    let free = (2..vol.clusters + 2).filter(|c| vol.next(*c) == 0).count() as u32;
    let info = vol.fsinfo * vol.bytes_per_sector;
    let mut sig = [0u8; 4];
    v.seek(SeekFrom::Start(info))?;
    v.read_exact(&mut sig)?;
    if u32::from_le_bytes(sig) == 0x4161_5252 {
        v.seek(SeekFrom::Start(info + 488))?;
        v.write_all(&free.to_le_bytes())?;
    }
    v.flush()
}
