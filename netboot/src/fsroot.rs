//! Paths named by clients (TFTP file names, HTTP request paths), resolved under the served root
//! without ever leaving it. One function, used by every server, so the rules are the same
//! everywhere:
//!
//! - leading `/` are dropped (`/ipxe/snponly.efi` and `ipxe/snponly.efi` are the same file);
//! - refused: NUL and other control bytes, backslashes, `..` and `.` components, empty names,
//!   names starting with `.` (staging and temporary files are never served), names longer than
//!   [`MAX_NAME`] bytes or with a component longer than 255 bytes;
//! - symlinks are followed (`current` is one), but the final target must still lie under the
//!   root and must be a regular file.

use std::path::{Component, Path, PathBuf};

/// The longest name accepted, in bytes.
pub const MAX_NAME: usize = 1024;

/// Why a name was refused. The `Display` text is what a client sees (TFTP error message,
/// HTTP body); it never reveals paths outside the root.
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

/// Resolves `requested` under `root` (which should be canonical: see [`canonical_root`]) to a
/// regular file's real path.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, PathError> {
    let rel = check_name(requested)?;
    let joined = root.join(rel);
    let real = match std::fs::canonicalize(&joined) {
        Ok(p) => p,
        Err(_) => {
            // A dangling link or a missing file: say "outside" only if a link points out.
            return Err(if leaves_root(root, &joined) {
                PathError::Outside
            } else {
                PathError::NotFound
            });
        }
    };
    if !real.starts_with(root) {
        return Err(PathError::Outside);
    }
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() => Ok(real),
        Ok(_) => Err(PathError::NotAFile),
        Err(_) => Err(PathError::NotFound),
    }
}

/// Does some symlink on the way to `path` point outside `root`?
fn leaves_root(root: &Path, path: &Path) -> bool {
    let mut cur = PathBuf::new();
    for c in path.components() {
        cur.push(c);
        if let Ok(target) = std::fs::read_link(&cur) {
            let abs = cur.parent().map_or(target.clone(), |p| p.join(&target));
            let norm = normalize(&abs);
            if !norm.starts_with(root) {
                return true;
            }
        }
    }
    false
}

/// `a/b/../c` -> `a/c`, lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The canonical form of the served root, which [`resolve`] compares against.
pub fn canonical_root(root: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(root)
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
    fn files_resolve_inside_and_links_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir_all(root.join("r/1")).unwrap();
        std::fs::write(root.join("r/1/vmlinuz"), b"k").unwrap();
        std::os::unix::fs::symlink("1", root.join("r/current")).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("r/leak")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../nowhere", root.join("dangling")).unwrap();
        let root = canonical_root(&root).unwrap();
        assert_eq!(
            resolve(&root, "/r/current/vmlinuz").unwrap(),
            root.join("r/1/vmlinuz")
        );
        assert_eq!(resolve(&root, "r/leak"), Err(PathError::Outside));
        assert_eq!(resolve(&root, "etc/passwd"), Err(PathError::Outside));
        assert_eq!(resolve(&root, "dangling"), Err(PathError::Outside));
        assert_eq!(resolve(&root, "r/1"), Err(PathError::NotAFile));
        assert_eq!(resolve(&root, "r/2/vmlinuz"), Err(PathError::NotFound));
    }
}
