//! A repair pass over what fatfs 0.3.6 writes (small and exact, so fsck.fat finds nothing).

use std::io::{self, Read, Seek, SeekFrom, Write};

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
