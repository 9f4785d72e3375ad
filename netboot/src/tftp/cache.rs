//! Small boot files held in memory, shared by every transfer of the same file.
//!
//! In lock-step (no `windowsize`, as older PXE firmware asks) a transfer's speed is set by
//! the time from one ACK to the next DATA. A read through tokio's file type is a trip to the
//! blocking pool and back; made every few blocks, those trips were most of that time. A boot
//! file (iPXE, shim, GRUB: 0.2 to 2 MB) is read whole once, on that pool, and then every block
//! comes from memory; a boot storm of a hundred machines asking for the same bootloader holds
//! one copy of it, not a hundred read buffers.
//!
//! An entry is found by the open file's device and inode and is used only while its size, its
//! modification time and its change time are still the file's: a file replaced or rewritten
//! in place is read again. The cache holds at most [`BUDGET`] bytes; an entry that would pass
//! it first drops the entries no transfer is using. Files over [`FILE_MAX`] are not cached
//! (the caller reads them through a buffer).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// The most bytes held in all.
pub const BUDGET: usize = 16 << 20;
/// The largest file cached.
pub const FILE_MAX: u64 = 8 << 20;

/// Which file, and which state of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Key {
    fn of(file: &File) -> io::Result<Key> {
        let m = file.metadata()?;
        Ok(Key {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The cache; see the module doc.
#[derive(Debug, Default)]
pub struct Cache {
    entries: Mutex<HashMap<Key, Arc<[u8]>>>,
}

impl Cache {
    /// The contents of `file` (opened, `size` bytes long) from memory, read now if they are
    /// not there; `None` for a file over [`FILE_MAX`]. Blocking: call it off the async
    /// threads.
    pub fn get(&self, file: &mut File, size: u64) -> io::Result<Option<Arc<[u8]>>> {
        if size > FILE_MAX {
            return Ok(None);
        }
        let key = Key::of(file)?;
        if let Some(hit) = self.lock().get(&key) {
            return Ok(Some(Arc::clone(hit)));
        }
        let mut data = Vec::with_capacity(key.size as usize);
        file.read_to_end(&mut data)?;
        if data.len() as u64 != key.size || Key::of(file)? != key {
            // Changed while it was read: serve what was read, keep nothing.
            return Ok(Some(data.into()));
        }
        let data: Arc<[u8]> = data.into();
        let mut entries = self.lock();
        let held = |e: &HashMap<Key, Arc<[u8]>>| e.values().map(|d| d.len()).sum::<usize>();
        if held(&entries) + data.len() > BUDGET {
            entries.retain(|_, d| Arc::strong_count(d) > 1);
        }
        if held(&entries) + data.len() <= BUDGET {
            entries.insert(key, Arc::clone(&data));
        }
        Ok(Some(data))
    }

    /// Bytes held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().values().map(|d| d.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<[u8]>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> (File, u64) {
        let f = File::open(path).unwrap();
        let n = f.metadata().unwrap().len();
        (f, n)
    }

    #[test]
    fn a_file_is_read_once_and_read_again_once_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snponly.efi");
        std::fs::write(&path, b"first").unwrap();
        let cache = Cache::default();
        let (mut f, n) = open(&path);
        let a = cache.get(&mut f, n).unwrap().unwrap();
        let (mut f, n) = open(&path);
        let b = cache.get(&mut f, n).unwrap().unwrap();
        assert_eq!(&*a, b"first");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second transfer shares the first one's copy"
        );
        // Rewritten in place (same inode): the change time moves, so it is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"again").unwrap();
        let (mut f, n) = open(&path);
        assert_eq!(&*cache.get(&mut f, n).unwrap().unwrap(), b"again");
        // Replaced by a new file under the same name (as a publish does).
        let new = dir.path().join("new");
        std::fs::write(&new, b"replaced").unwrap();
        std::fs::rename(&new, &path).unwrap();
        let (mut f, n) = open(&path);
        assert_eq!(&*cache.get(&mut f, n).unwrap().unwrap(), b"replaced");
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_skips_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::default();
        let piece = vec![7u8; 6 << 20];
        let mut kept = Vec::new();
        for i in 0..4 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &piece).unwrap();
            let (mut f, n) = open(&path);
            let data = cache.get(&mut f, n).unwrap().unwrap();
            assert_eq!(data.len(), piece.len());
            assert!(cache.held() <= BUDGET, "{} bytes held", cache.held());
            if i == 0 {
                // Still being sent: not dropped to make room.
                kept.push(data);
            }
        }
        assert!(cache.lock().values().any(|d| Arc::ptr_eq(d, &kept[0])));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; FILE_MAX as usize + 1]).unwrap();
        let (mut f, n) = open(&big);
        assert!(cache.get(&mut f, n).unwrap().is_none());
    }
}
