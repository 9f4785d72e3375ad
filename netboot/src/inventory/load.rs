//! Reading an inventory file (the one part of the inventory that does IO).

use std::path::Path;

use super::{Inventory, parse};
use crate::diag::Located;

/// Why an inventory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid inventory.
    #[error(transparent)]
    Invalid(#[from] Located),
    /// The secrets file beside it cannot be used.
    #[error(transparent)]
    Secrets(crate::secrets::SecretsError),
    /// The server's state folder (keys, desired versions) cannot be used.
    #[error("state folder {path}: {source}")]
    State {
        /// The folder.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads `inventory.toml` under `project`; a missing file is an empty inventory.
pub fn load(project: &Path) -> Result<Inventory, LoadError> {
    load_file(&project.join("inventory.toml"), "inventory.toml")
}

/// Reads an inventory file, named `shown` in errors; a missing file is an empty inventory.
pub fn load_file(path: &Path, shown: &str) -> Result<Inventory, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(shown, &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Inventory::default()),
        Err(source) => Err(LoadError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Adds node `name` for `mac` to the inventory file at `path` (see [`super::with_node`]:
/// comments and layout kept, the result checked): the new text is written beside it,
/// synced, and renamed over it, so a reader sees the old file or the new one, never a part.
/// Returns the MAC as the inventory now has it. Nothing is changed when any step fails.
pub fn add_node(
    path: &Path,
    mac: &str,
    name: &str,
    recipe: Option<&str>,
) -> Result<String, String> {
    use std::io::Write as _;
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {shown}: {e}")),
    };
    let new = super::with_node(&text, mac, name, recipe)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "inventory.toml".into());
    let tmp = path.with_file_name(format!(".{file_name}.new"));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        let folder = path
            .parent()
            .map_or_else(|| ".".into(), |d| d.display().to_string());
        return Err(format!(
            "writing {shown}: {e} (the file was not changed; the writer needs write access to \
             {folder}, where the new file is made and renamed over the old one)"
        ));
    }
    Ok(crate::hub::normalize_mac(mac).unwrap_or_else(|| mac.to_string()))
}
