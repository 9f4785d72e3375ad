//! Which nodes are installed on their own disk, held by the boot server in `installed.json` in
//! its state folder (written whole, then renamed, as the desired versions are).
//!
//! A node whose inventory entry has an `install` is installed once its first stage, having
//! streamed and verified the disk image, says so in a signed message (`kind=installed`). From
//! then on the server answers its network boots with "boot from your disk", until `ironbake
//! install NODE` (`POST /api/v1/install/NODE`) clears the record and the next network boot
//! installs afresh.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::desired::PerNode;

/// The file in the state folder.
pub const FILE: &str = "installed.json";

/// One node's install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The recipe whose disk image went onto the disk.
    pub recipe: String,
    /// Its version.
    pub version: String,
    /// The disk, as the node's first stage found it (`/dev/vda (virtio-SERIAL, 8 GiB)`).
    pub disk: String,
    /// When (seconds since 1970).
    pub at_unix: u64,
}

/// The installs; see the module doc.
pub type Installs = PerNode<Installed>;

/// Loads `state_dir/installed.json` (none yet: no node is installed).
pub fn load(state_dir: &Path) -> std::io::Result<Installs> {
    PerNode::load_file(state_dir.join(FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_survives_a_restart_until_it_is_cleared() {
        let d = tempfile::tempdir().unwrap();
        let a = load(d.path()).unwrap();
        let i = Installed {
            recipe: "r".into(),
            version: "1".into(),
            disk: "/dev/vda".into(),
            at_unix: 5,
        };
        a.set("n1", Some(i.clone())).unwrap();
        assert_eq!(load(d.path()).unwrap().get("n1"), Some(i));
        a.set("n1", None).unwrap();
        assert_eq!(load(d.path()).unwrap().get("n1"), None);
    }
}
