//! Paths named by clients (TFTP file names, HTTP request paths), opened under the served root
//! without ever leaving it. One function, used by every server, so the rules are the same
//! everywhere:
//!
//! - leading `/` are dropped (`/ipxe/snponly.efi` and `ipxe/snponly.efi` are the same file);
//! - refused: NUL and other control bytes, backslashes, `..` and `.` components, empty names,
//!   names starting with `.` (staging and temporary files are never served), names longer than
//!   [`MAX_NAME`] bytes or with a component longer than 255 bytes;
//! - symlinks are followed (`current` is one), but only while they stay under the root;
//! - only regular files are served.
//!
//! The file served is the file checked: [`Root::open`] opens the name in one step beneath the
//! root's directory handle, with `openat2(2)` and `RESOLVE_BENEATH` (Linux 5.6 and later), so
//! the kernel refuses any resolution that would leave the root, however the tree changes while
//! the server runs (a folder swapped for a symlink between a check and an open is exactly what
//! a check-then-open would miss). Nothing is looked up by path a second time: the size, the
//! time and the bytes all come from the one open file.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// The longest name accepted, in bytes.
pub const MAX_NAME: usize = 1024;

/// Why a name was refused. The `Display` text is what a client sees (TFTP error message,
/// HTTP body); it never reveals paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty after dropping leading slashes.
    #[error("empty file name")]
    Empty,
    /// Longer than [`MAX_NAME`], or a component over 255 bytes.
    #[error("file name too long")]
    TooLong,
    /// NUL or another control character.
    #[error("control character in file name")]
    ControlChar,
    /// A backslash (a Windows-style path, or an attempt to confuse a path check).
    #[error("backslash in file name")]
    Backslash,
    /// A `..`, `.` or hidden component.
    #[error("file name component not allowed: {0:?}")]
    BadComponent(String),
    /// Nothing there.
    #[error("no such file")]
    NotFound,
    /// It exists, but resolves outside the root (a symlink pointing out).
    #[error("access violation")]
    Outside,
    /// It is a folder or a special file.
    #[error("not a regular file")]
    NotAFile,
    /// The file is there but cannot be read (its mode, an IO error): the details are logged.
    #[error("cannot read the file")]
    Unreadable,
}

/// Checks `requested` against the rules (no IO) and returns it relative to the root, without
/// leading slashes.
pub fn check_name(requested: &str) -> Result<&str, PathError> {
    if requested.len() > MAX_NAME {
        return Err(PathError::TooLong);
    }
    if requested.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    if requested.contains('\\') {
        return Err(PathError::Backslash);
    }
    let rel = requested.trim_start_matches('/');
    if rel.is_empty() {
        return Err(PathError::Empty);
    }
    for part in rel.split('/') {
        if part.len() > 255 {
            return Err(PathError::TooLong);
        }
        if part.is_empty() {
            return Err(PathError::BadComponent(String::new()));
        }
        if part.starts_with('.') {
            return Err(PathError::BadComponent(part.to_string()));
        }
    }
    // Belt and braces: the split above already refused `.`, `..` and empty parts.
    if Path::new(rel)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(PathError::BadComponent(rel.to_string()));
    }
    Ok(rel)
}

/// The served root: a handle on its folder, under which every name is opened.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

/// A file opened under the root, with what was read of it through the same handle.
#[derive(Debug)]
pub struct Opened {
    /// The open file.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, seconds since the epoch.
    pub mtime: i64,
    /// Where it really is, relative to the root (symlinks such as `current` resolved), as the
    /// kernel names the open file; `None` where `/proc` does not say.
    pub real: Option<PathBuf>,
}

impl Root {
    /// Opens the folder at `path` as the served root; fails if it is not a folder, or if this
    /// kernel cannot open files beneath it (`openat2`, Linux 5.6 and later).
    pub fn new(path: &Path) -> std::io::Result<Root> {
        let path = std::fs::canonicalize(path)?;
        let dir: OwnedFd = File::open(&path)?.into();
        let root = Root { dir, path };
        rustix::fs::openat2(
            root.dir.as_fd(),
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH,
        )
        .map_err(|e| {
            std::io::Error::other(format!(
                "this kernel cannot open files beneath a folder (openat2 with RESOLVE_BENEATH, \
                 Linux 5.6 and later): {e}"
            ))
        })?;
        Ok(root)
    }

    /// The root's canonical path (for logs and the published-version lookups).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `requested` (a client's name) under the root: the rules of this module, then one
    /// `openat2` beneath the root, then the checks on the open file.
    pub fn open(&self, requested: &str) -> Result<Opened, PathError> {
        let rel = check_name(requested)?;
        let fd = rustix::fs::openat2(
            self.dir.as_fd(),
            rel,
            // Non-blocking so that a FIFO under the root cannot hang the open; it is refused
            // below as not a regular file.
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => PathError::NotFound,
            rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => PathError::Outside,
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => PathError::Unreadable,
            _ => {
                tracing::warn!(name = rel, "opening under the root: {e}");
                PathError::Unreadable
            }
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|_| PathError::Unreadable)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(PathError::NotAFile);
        }
        let real = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .ok()
        .and_then(|p| p.strip_prefix(&self.path).ok().map(Path::to_path_buf));
        Ok(Opened {
            file: File::from(fd),
            size: st.st_size as u64,
            mtime: st.st_mtime,
            real,
        })
    }

    /// Opens a file the server itself names (a `SHA256SUMS` beside a served file) under the
    /// root, by its path relative to the root.
    pub fn open_own(&self, rel: &Path) -> Option<File> {
        let fd = rustix::fs::openat2(
            self.dir.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("/ipxe/snponly.efi"), Ok("ipxe/snponly.efi"));
        assert_eq!(check_name("//a"), Ok("a"));
        assert_eq!(check_name(""), Err(PathError::Empty));
        assert_eq!(check_name("/"), Err(PathError::Empty));
        assert_eq!(check_name("a\0b"), Err(PathError::ControlChar));
        assert_eq!(check_name("a\nb"), Err(PathError::ControlChar));
        assert_eq!(check_name("..\\..\\etc"), Err(PathError::Backslash));
        assert!(matches!(
            check_name("../etc/passwd"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_name("a/../../b"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_name("a/./b"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_name("a//b"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_name(".ci-node-staging/x"),
            Err(PathError::BadComponent(_))
        ));
        assert_eq!(check_name(&"a".repeat(2000)), Err(PathError::TooLong));
        assert_eq!(check_name(&"a".repeat(300)), Err(PathError::TooLong));
    }

    #[test]
    fn files_open_inside_and_links_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir_all(root.join("r/1")).unwrap();
        std::fs::write(root.join("r/1/vmlinuz"), b"k").unwrap();
        std::os::unix::fs::symlink("1", root.join("r/current")).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("r/leak")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../nowhere", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink("1/vmlinuz", root.join("r/inside")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            root.join("r/fifo"),
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let root = Root::new(&root).unwrap();
        let o = root.open("/r/current/vmlinuz").unwrap();
        assert_eq!(
            (o.size, o.real.as_deref()),
            (1, Some(Path::new("r/1/vmlinuz")))
        );
        assert_eq!(root.open("r/inside").unwrap().size, 1);
        let err = |name: &str| root.open(name).unwrap_err();
        assert_eq!(err("r/leak"), PathError::Outside);
        assert_eq!(err("etc/passwd"), PathError::Outside);
        assert_eq!(err("dangling"), PathError::Outside);
        assert_eq!(err("r/1"), PathError::NotAFile);
        assert_eq!(
            err("r/fifo"),
            PathError::NotAFile,
            "and the open did not hang"
        );
        assert_eq!(err("r/2/vmlinuz"), PathError::NotFound);
        assert_eq!(err("r/1/vmlinuz/x"), PathError::NotFound);
    }
}
