//! A deterministic cpio "newc" writer, as the Linux kernel reads an initramfs.
//!
//! Entries are written in the order given (callers sort them, parents first); inode numbers
//! count up from 1 in that order; every mtime is the one passed in (SOURCE_DATE_EPOCH). Pure:
//! it writes to any `impl Write`.

use std::io::{self, Write};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A folder.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/` (`init`, `bin/busybox`).
    pub path: String,
    /// Permission bits (the type bits come from `body`).
    pub mode: u32,
    /// What it is.
    pub body: Body,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn pad4(w: &mut impl Write, len: usize) -> io::Result<usize> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(pad)
}

/// The fields of one newc header that vary.
struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a str,
}

fn header(w: &mut impl Write, h: &Header<'_>) -> io::Result<usize> {
    let namesize = h.name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        h.mtime,
        h.size,
        0,
        0,
        h.rdev.0,
        h.rdev.1,
        namesize as u32,
        0,
    ];
    let mut text = String::with_capacity(110);
    text.push_str("070701");
    for f in fields {
        text.push_str(&format!("{f:08x}"));
    }
    w.write_all(text.as_bytes())?;
    w.write_all(h.name.as_bytes())?;
    w.write_all(&[0])?;
    let written = 110 + namesize;
    Ok(written + pad4(w, written)?)
}

/// Writes `entries` and the trailer; returns the archive's length. Owners are root.
pub fn write(w: &mut impl Write, entries: &[Entry], mtime: u64) -> io::Result<u64> {
    let mtime = u32::try_from(mtime).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "mtime past 2106 does not fit newc",
        )
    })?;
    let mut total = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if e.path.starts_with('/')
            || e.path.is_empty()
            || e.path.split('/').any(|c| c.is_empty() || c == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio path {:?}", e.path),
            ));
        }
        let ino = i as u32 + 1;
        let perm = e.mode & 0o7777;
        let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &e.body {
            Body::Dir => (S_IFDIR | perm, 2, &[], (0, 0)),
            Body::File(d) => (S_IFREG | perm, 1, d, (0, 0)),
            Body::Symlink(t) => (S_IFLNK | 0o777, 1, t.as_bytes(), (0, 0)),
            Body::CharDev(ma, mi) => (S_IFCHR | perm, 1, &[], (*ma, *mi)),
        };
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is over 4 GiB", e.path),
            )
        })?;
        total += header(
            w,
            &Header {
                ino,
                mode,
                nlink,
                mtime,
                size,
                rdev,
                name: &e.path,
            },
        )? as u64;
        w.write_all(data)?;
        total += data.len() as u64 + pad4(w, data.len())? as u64;
    }
    total += header(
        w,
        &Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
            name: "TRAILER!!!",
        },
    )? as u64;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_archive_has_exact_bytes() {
        let entries = vec![
            Entry {
                path: "bin".into(),
                mode: 0o755,
                body: Body::Dir,
            },
            Entry {
                path: "bin/hi".into(),
                mode: 0o755,
                body: Body::File(b"hi\n".to_vec()),
            },
            Entry {
                path: "bin/sh".into(),
                mode: 0o777,
                body: Body::Symlink("hi".into()),
            },
        ];
        let mut out = Vec::new();
        let n = write(&mut out, &entries, 1_700_000_000).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // The first header, field by field: magic, ino 1, mode 040755, uid, gid, nlink 2,
        // mtime 0x6553f100, size 0, devmajor, devminor, rdevmajor, rdevminor, namesize 4, check.
        assert!(text.starts_with("07070100000001000041ed0000000000000000000000026553f10000000000000000000000000000000000000000000000000400000000bin\0"), "{text}");
        assert!(text.contains("bin/hi\0\0\0\0hi\n\0"), "{text:?}");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"), "{text:?}");
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["/init", "", "a/../b", "a//b"] {
            let e = Entry {
                path: p.into(),
                mode: 0o644,
                body: Body::Dir,
            };
            assert!(write(&mut Vec::new(), &[e], 0).is_err(), "{p}");
        }
    }
}
