//! Which node a disk is: its settings archive on the ESP, where systemd-stub hands it to
//! the first stage whichever slot boots.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::esp::edit_esp;
use super::image::read_layout;

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

/// Renders node `name`'s settings archive for `recipe`@`version`, with the boot server's own
/// code: the inventory at `inventory`, the published root `out`, the machine-id and SSH host
/// key kept in `state` (made there if the node has none yet).
pub fn render(
    inventory: &Path,
    state: Option<std::path::PathBuf>,
    out: &Path,
    name: &str,
    recipe: &str,
    version: &str,
) -> Result<Vec<u8>> {
    let nodes =
        netboot::nodes::Inventories::load(inventory, state).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = nodes
        .target_named(out, name, recipe, version)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    nodes
        .settings_alone(&t)
        .map_err(|e| anyhow::anyhow!("settings of node {name}: {e}"))
}
