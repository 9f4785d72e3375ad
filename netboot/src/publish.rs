//! Publishing: a version is assembled in a staging folder beside `out/` (same filesystem, not
//! inside it) and appears under `out/RECIPE/VERSION` by one rename; `out/RECIPE/current` is
//! then replaced by one rename of a new symlink. Whatever writes a version (a build, or a
//! sync from a registry) goes through here, so one that fails or is killed at any moment
//! leaves `out/` exactly as it was, and a published version is never written again.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::layout::CURRENT;

/// An io error that says what was being done, and to which file.
fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A version being assembled.
#[derive(Debug)]
pub struct Staging {
    root: PathBuf,
    out: PathBuf,
    recipe: String,
    version: String,
    published: bool,
}

/// The staging folder used for `out`: `.NAME-staging` beside it.
pub fn staging_root(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    out.parent()
        .unwrap_or(Path::new("."))
        .join(format!(".{name}-staging"))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes staging folders left by writers that are no longer running.
pub fn clean_stale(out: &Path) -> io::Result<()> {
    let root = staging_root(out);
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(|p| !pid_alive(p)) {
            let path = e.path();
            fs::remove_dir_all(&path)
                .map_err(context(format!("removing stale {}", path.display())))?;
        }
    }
    Ok(())
}

impl Staging {
    /// Starts assembling `RECIPE/VERSION`.
    pub fn new(out: &Path, recipe: &str, version: &str) -> io::Result<Self> {
        let root = staging_root(out).join(format!("{recipe}-{version}-{}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        let s = Staging {
            root,
            out: out.to_owned(),
            recipe: recipe.into(),
            version: version.into(),
            published: false,
        };
        fs::create_dir_all(s.version_dir())
            .map_err(context(format!("creating {}", s.version_dir().display())))?;
        Ok(s)
    }

    /// The folder to write the version's files into.
    pub fn version_dir(&self) -> PathBuf {
        self.root.join(&self.recipe).join(&self.version)
    }

    /// A scratch folder on the same filesystem, removed with the staging.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.join(format!("scratch-{name}"))
    }

    /// Moves the version into `out/` and points `current` at it.
    pub fn publish(self) -> io::Result<PathBuf> {
        self.publish_as(true)
    }

    /// Moves the version into `out/`; points `current` at it when `make_current` is true or
    /// the recipe has no `current` yet.
    pub fn publish_as(mut self, make_current: bool) -> io::Result<PathBuf> {
        let recipe_out = self.out.join(&self.recipe);
        let dest = recipe_out.join(&self.version);
        if dest.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is already published; published versions are never overwritten",
                    dest.display()
                ),
            ));
        }
        for e in fs::read_dir(&self.root)? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("scratch-"))
            {
                fs::remove_dir_all(&p)?;
            }
        }
        let staged_recipe = self.root.join(&self.recipe);
        symlink(&self.version, staged_recipe.join(CURRENT))?;
        sync_dir(&staged_recipe)?;
        if recipe_out.is_dir() {
            fs::rename(self.version_dir(), &dest).map_err(context(format!(
                "moving the new version to {}",
                dest.display()
            )))?;
            sync_dir(&recipe_out)?;
            let has_current = fs::symlink_metadata(recipe_out.join(CURRENT)).is_ok();
            if make_current || !has_current {
                fs::rename(staged_recipe.join(CURRENT), recipe_out.join(CURRENT))
                    .map_err(context("switching `current`"))?;
                sync_dir(&recipe_out)?;
            }
        } else if self.out.is_dir() {
            fs::rename(&staged_recipe, &recipe_out).map_err(context(format!(
                "moving the new recipe folder to {}",
                recipe_out.display()
            )))?;
            sync_dir(&self.out)?;
        } else {
            // No out/ yet: stage it whole so it appears complete or not at all.
            let staged_out = self.root.join("out");
            fs::create_dir(&staged_out)?;
            fs::rename(&staged_recipe, staged_out.join(&self.recipe))?;
            fs::rename(&staged_out, &self.out)
                .map_err(context(format!("creating {}", self.out.display())))?;
            if let Some(parent) = self.out.parent() {
                sync_dir(parent)?;
            }
        }
        self.published = true;
        let _ = fs::remove_dir_all(&self.root);
        Ok(dest)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Makes a folder's entries (renames into it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Points `out/RECIPE/current` at an already published version, atomically.
pub fn set_current(out: &Path, recipe: &str, version: &str) -> io::Result<()> {
    let recipe_out = out.join(recipe);
    if !recipe_out.join(version).is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{recipe}@{version} is not published under {}",
                out.display()
            ),
        ));
    }
    let tmp = staging_root(out).join(format!("current-{recipe}-{}", std::process::id()));
    fs::create_dir_all(tmp.parent().expect("has parent"))?;
    let _ = fs::remove_file(&tmp);
    symlink(version, &tmp)?;
    fs::rename(&tmp, recipe_out.join(CURRENT)).map_err(context("switching `current`"))?;
    sync_dir(&recipe_out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(out: &Path, v: &str) -> PathBuf {
        let s = Staging::new(out, "r", v).unwrap();
        fs::write(s.version_dir().join("f"), v).unwrap();
        s.publish().unwrap()
    }

    #[test]
    fn publishing_creates_out_then_adds_versions_and_switches_current() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        stage(&out, "1");
        assert_eq!(
            fs::read_link(out.join("r/current")).unwrap(),
            Path::new("1")
        );
        stage(&out, "2");
        assert_eq!(
            fs::read_link(out.join("r/current")).unwrap(),
            Path::new("2")
        );
        assert_eq!(fs::read_to_string(out.join("r/1/f")).unwrap(), "1");
        set_current(&out, "r", "1").unwrap();
        assert_eq!(
            fs::read_link(out.join("r/current")).unwrap(),
            Path::new("1")
        );
        assert!(set_current(&out, "r", "9").is_err());
        // A version published without becoming current leaves `current` alone.
        let s = Staging::new(&out, "r", "3").unwrap();
        fs::write(s.version_dir().join("f"), "3").unwrap();
        s.publish_as(false).unwrap();
        assert_eq!(
            fs::read_link(out.join("r/current")).unwrap(),
            Path::new("1")
        );
        // Nothing is left in staging, and nothing else appeared beside out/.
        assert_eq!(fs::read_dir(staging_root(&out)).unwrap().count(), 0);
    }

    #[test]
    fn a_published_version_is_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        stage(&out, "1");
        let s = Staging::new(&out, "r", "1").unwrap();
        fs::write(s.version_dir().join("f"), "other").unwrap();
        assert!(
            s.publish()
                .unwrap_err()
                .to_string()
                .contains("never overwritten")
        );
        assert_eq!(fs::read_to_string(out.join("r/1/f")).unwrap(), "1");
    }

    #[test]
    fn an_abandoned_staging_leaves_out_untouched() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        {
            let s = Staging::new(&out, "r", "1").unwrap();
            fs::write(s.version_dir().join("f"), "x").unwrap();
        }
        assert!(!out.exists());
        assert_eq!(fs::read_dir(staging_root(&out)).unwrap().count(), 0);
    }
}
