//! The cached root filesystem tree seen as the plan's base, symlinks resolved inside it.

use std::fs;
use std::path::PathBuf;

use crate::plan::BaseView;

/// The cached root filesystem tree, seen as the plan's base. Symlinks resolve inside the tree,
/// never on the build host.
pub struct TreeView {
    /// The tree's top.
    pub root: PathBuf,
}

impl TreeView {
    fn resolve(&self, path: &str, follow_last: bool) -> Option<PathBuf> {
        let mut parts: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        parts.reverse();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(p) = parts.pop() {
            match p.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(p);
            let host = self.root.join(cur.join("/"));
            let is_last = parts.is_empty();
            if let Ok(target) = fs::read_link(&host) {
                if is_last && !follow_last {
                    break;
                }
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur.clear();
                }
                let mut tparts: Vec<String> = t
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                tparts.reverse();
                parts.extend(tparts);
            }
        }
        Some(self.root.join(cur.join("/")))
    }
}

impl BaseView for TreeView {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.resolve(path, true)?;
        if p.is_file() { fs::read(p).ok() } else { None }
    }
    fn link_target(&self, path: &str) -> Option<String> {
        let p = self.resolve(path, false)?;
        fs::read_link(p)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }
    fn stat(&self, path: &str) -> Option<(u32, u32, u32, bool)> {
        use std::os::unix::fs::MetadataExt;
        let p = self.resolve(path, false)?;
        let m = fs::symlink_metadata(p).ok()?;
        Some((m.mode() & 0o7777, m.uid(), m.gid(), m.is_dir()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", r.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", r.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("etc/host")).unwrap();
        let v = TreeView { root: r.to_owned() };
        assert_eq!(v.read("/etc/os-release").unwrap(), b"ID=debian\n");
        assert_eq!(v.read("/etc/abs").unwrap(), b"ID=debian\n");
        assert_eq!(
            v.read("/etc/host"),
            None,
            "an absolute link must not reach the build host"
        );
        assert!(v.stat("/etc").unwrap().3);
        assert!(!v.stat("/etc/abs").unwrap().3);
    }
}
