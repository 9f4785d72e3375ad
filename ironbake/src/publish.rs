//! Published versions: finding one by `RECIPE[@VERSION]`, and the boot server's publishing
//! ([`netboot::publish`]: staged beside `out/`, one rename), which builds and syncs share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use netboot::publish::{Staging, clean_stale, set_current, staging_root};

/// A published version of a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The recipe.
    pub recipe: String,
    /// The version.
    pub version: String,
    /// Its folder, `out/RECIPE/VERSION`.
    pub dir: PathBuf,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.recipe, self.version)
    }
}

/// `RECIPE` (its current version) or `RECIPE@VERSION`, as a version published under `out`.
pub fn find(out: &Path, spec: &str) -> Result<Published> {
    let (recipe, version) = match spec.split_once('@') {
        Some((r, v)) => (r.to_string(), v.to_string()),
        None => {
            let v = netboot::layout::read_current(&out.join(spec))?.with_context(|| {
                format!(
                    "{spec} has no published current version under {} (build it first)",
                    out.display()
                )
            })?;
            (spec.to_string(), v)
        }
    };
    if !netboot::layout::valid_name(&recipe) || version.contains('/') || version.starts_with('.') {
        bail!("{spec:?} is not RECIPE or RECIPE@VERSION");
    }
    let dir = out.join(&recipe).join(&version);
    if !dir.is_dir() {
        bail!(
            "{recipe}@{version} is not published under {}",
            out.display()
        );
    }
    Ok(Published {
        recipe,
        version,
        dir,
    })
}
