//! The project folder: `recipes/`, `overlays/` and `inventory.toml`, with `out/` and `.cache/`
//! beside them unless moved. Found from where a command runs, never from where the binary
//! was built: `--project DIR` (or `IRONBAKE_PROJECT`), else the current folder or the nearest
//! parent that holds both `recipes/` and `inventory.toml`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where a build reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The project: `recipes/`, `overlays/`, `inventory.toml`.
    pub project: PathBuf,
    /// The published root.
    pub out: PathBuf,
    /// Caches: package layers, artifacts.
    pub cache: PathBuf,
    /// The host's apt configuration folder (for its sources).
    pub etc_apt: PathBuf,
}

impl Paths {
    /// The usual places for a project: `out/` and `.cache/` inside it, the host's `/etc/apt`.
    pub fn in_project(project: &Path) -> Paths {
        Paths {
            project: project.to_owned(),
            out: project.join("out"),
            cache: project.join(".cache"),
            etc_apt: PathBuf::from("/etc/apt"),
        }
    }

    /// `p` as is if absolute, else relative to the project folder.
    pub fn in_project_dir(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.project.join(p)
        }
    }
}

/// Does `dir` look like a project (both `recipes/` and `inventory.toml`)?
fn is_project(dir: &Path) -> bool {
    dir.join("recipes").is_dir() && dir.join("inventory.toml").is_file()
}

/// The project folder: `explicit` if given (it must hold `recipes/` or `inventory.toml`),
/// else `start` or its nearest parent that holds both.
pub fn discover(explicit: Option<&Path>, start: &Path) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        let dir = if dir.is_absolute() {
            dir.to_owned()
        } else {
            start.join(dir)
        };
        if !dir.is_dir() {
            bail!("--project {}: no such folder", dir.display());
        }
        if !dir.join("recipes").is_dir() && !dir.join("inventory.toml").is_file() {
            bail!(
                "--project {}: not an ironbake project (it has neither recipes/ nor \
                 inventory.toml)",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let mut cur = Some(start);
    while let Some(dir) = cur {
        if is_project(dir) {
            return Ok(dir.to_owned());
        }
        cur = dir.parent();
    }
    bail!(
        "no ironbake project here: neither {} nor any folder above it holds recipes/ and \
         inventory.toml; run the command inside a project or give --project DIR",
        start.display()
    )
}

/// [`discover`] from the current folder.
pub fn discover_here(explicit: Option<&Path>) -> Result<PathBuf> {
    let here = std::env::current_dir().context("reading the current folder")?;
    discover(explicit, &here)
}

/// Copies a project's inputs (`recipes/`, `overlays/`, `inventory.toml`) into `to`, with
/// modes and symlinks as they are, for a private copy that edits do not reach.
pub fn copy_inputs(from: &Path, to: &Path) -> Result<()> {
    for d in ["recipes", "overlays"] {
        copy_tree(&from.join(d), &to.join(d))?;
    }
    fs::copy(from.join("inventory.toml"), to.join("inventory.toml"))
        .with_context(|| format!("copying {}/inventory.toml", from.display()))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(from) {
        let e = e.with_context(|| format!("reading {}", from.display()))?;
        let rel = e.path().strip_prefix(from).expect("walked under from");
        let dest = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path())?, &dest)
                .with_context(|| format!("linking {}", dest.display()))?;
        } else {
            fs::copy(e.path(), &dest)
                .with_context(|| format!("copying {} to {}", e.path().display(), dest.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_is_found_upwards_and_never_from_the_build() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("lab");
        fs::create_dir_all(root.join("recipes")).unwrap();
        fs::write(root.join("inventory.toml"), "").unwrap();
        let deep = root.join("overlays/base/files");
        fs::create_dir_all(&deep).unwrap();
        assert_eq!(discover(None, &deep).unwrap(), root);
        assert_eq!(discover(None, &root).unwrap(), root);
        assert_eq!(discover(Some(Path::new("lab")), d.path()).unwrap(), root);
        let err = format!("{:#}", discover(None, d.path()).unwrap_err());
        assert!(
            err.contains("no ironbake project here") && err.contains("--project"),
            "{err}"
        );
        let err = format!("{:#}", discover(Some(&deep), d.path()).unwrap_err());
        assert!(err.contains("not an ironbake project"), "{err}");
        let err = format!(
            "{:#}",
            discover(Some(Path::new("nope")), d.path()).unwrap_err()
        );
        assert!(err.contains("no such folder"), "{err}");
    }
}
