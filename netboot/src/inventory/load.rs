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
