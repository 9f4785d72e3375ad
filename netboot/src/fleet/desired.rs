//! Each node's desired version, held by the boot server in `desired.json` in its state folder
//! (written whole to a temporary file, synced, then renamed over the old one), so nodes can run
//! different versions during a rollout and a rollback does not move the recipe's `current`.
//!
//! What a node boots: the inventory's `version` if it pins one, else its desired version (when
//! it is of the node's recipe), else the recipe's `current`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file in the state folder.
pub const FILE: &str = "desired.json";

/// One node's desired version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    /// The recipe (a desired version of another recipe than the node's is ignored).
    pub recipe: String,
    /// The published version.
    pub version: String,
    /// Who set it (a rollout's id, or `api`).
    pub by: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: serde::de::DeserializeOwned"))]
struct File<T> {
    nodes: BTreeMap<String, T>,
}

/// A value per node, kept in a JSON file of the state folder that is written whole (synced,
/// then renamed over the old one) before a change counts: the desired versions, the installs.
#[derive(Debug)]
pub struct PerNode<T> {
    path: PathBuf,
    nodes: Mutex<BTreeMap<String, T>>,
}

/// The desired versions; see the module doc.
pub type Desired = PerNode<Wanted>;

impl Desired {
    /// Loads `state_dir/desired.json` (none yet: no node has one).
    pub fn load(state_dir: &Path) -> std::io::Result<Desired> {
        PerNode::load_file(state_dir.join(FILE))
    }
}

impl<T: Clone + Serialize + serde::de::DeserializeOwned> PerNode<T> {
    /// Loads `path` (none yet: no node has a value).
    pub fn load_file(path: PathBuf) -> std::io::Result<PerNode<T>> {
        let nodes = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<File<T>>(&bytes)
                    .map_err(|e| {
                        std::io::Error::other(format!(
                            "{} is not valid ({e}); fix or remove it",
                            path.display()
                        ))
                    })?
                    .nodes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(PerNode {
            path,
            nodes: Mutex::new(nodes),
        })
    }

    /// The value of `node`, if any.
    pub fn get(&self, node: &str) -> Option<T> {
        self.lock().get(node).cloned()
    }

    /// Every node's.
    pub fn all(&self) -> BTreeMap<String, T> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, T>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every node's value the one in `all` (written before it returns); true if that
    /// changed anything.
    pub fn replace_all(&self, all: &BTreeMap<String, T>) -> std::io::Result<bool>
    where
        T: PartialEq,
    {
        let mut nodes = self.lock();
        if *nodes == *all {
            return Ok(false);
        }
        let text = serde_json::to_string_pretty(&File { nodes: all.clone() }).expect("serialises");
        write_atomic(&self.path, text.as_bytes())?;
        *nodes = all.clone();
        Ok(true)
    }

    /// Sets (or with `None` clears) `node`'s value; written before it returns. On a write
    /// error nothing changes.
    pub fn set(&self, node: &str, value: Option<T>) -> std::io::Result<()> {
        let mut nodes = self.lock();
        let mut next = nodes.clone();
        match value {
            Some(w) => next.insert(node.to_string(), w),
            None => next.remove(node),
        };
        let text = serde_json::to_string_pretty(&File {
            nodes: next.clone(),
        })
        .expect("serialises");
        write_atomic(&self.path, text.as_bytes())?;
        *nodes = next;
        Ok(())
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &str) -> Wanted {
        Wanted {
            recipe: "r".into(),
            version: v.into(),
            by: "api".into(),
        }
    }

    #[test]
    fn desired_versions_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let a = Desired::load(d.path()).unwrap();
        a.set("n1", Some(w("1"))).unwrap();
        a.set("n2", Some(w("2"))).unwrap();
        a.set("n2", None).unwrap();
        let b = Desired::load(d.path()).unwrap();
        assert_eq!(b.get("n1"), Some(w("1")));
        assert_eq!(b.get("n2"), None);
        assert!(!d.path().join("desired.tmp").exists());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = Desired::load(d.path()).unwrap();
        a.set("n1", Some(w("1"))).unwrap();
        // A folder where the temporary file would go: the write fails.
        std::fs::create_dir(d.path().join("desired.tmp")).unwrap();
        assert!(a.set("n1", Some(w("2"))).is_err());
        assert_eq!(a.get("n1"), Some(w("1")));
        assert_eq!(Desired::load(d.path()).unwrap().get("n1"), Some(w("1")));
    }

    #[test]
    fn a_broken_file_is_refused_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "{").unwrap();
        let e = Desired::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("desired.json") && e.contains("fix or remove"),
            "{e}"
        );
    }
}
