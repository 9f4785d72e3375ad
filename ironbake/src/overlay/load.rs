//! Loading an overlay folder: its settings, its `files/` tree (each file's digest taken as it
//! is walked), its templates, and a digest of the whole folder.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{FileEntry, KeySource, Overlay, TemplateSource, parse_spec};

/// Loads `overlays/NAME` under `project`.
pub fn load(project: &Path, name: &str) -> Result<Overlay> {
    let rel = format!("overlays/{name}");
    let dir = project.join(&rel);
    if !netboot::layout::valid_name(name) || !dir.is_dir() {
        let known = list(project).unwrap_or_default();
        bail!(
            "no overlay {name:?}: {rel}/ does not exist (overlays here: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    let spec_rel = format!("{rel}/overlay.toml");
    let text = std::fs::read_to_string(dir.join("overlay.toml"))
        .with_context(|| format!("reading {spec_rel} (every overlay needs one, even if empty)"))?;
    let spec = parse_spec(&spec_rel, &text)?;
    for s in &spec.apt_sources {
        if let KeySource::File(key) = &s.key
            && !dir.join(key.as_str()).is_file()
        {
            bail!(
                "{spec_rel}: apt source {:?}: key {rel}/{key} does not exist",
                s.name.as_str()
            );
        }
    }
    let files = walk_files(&dir.join("files"), &format!("{rel}/files"))?;
    let templates = walk_templates(&dir.join("templates"), &format!("{rel}/templates"))?;
    let mut node_templates = walk_templates(
        &dir.join("node-templates"),
        &format!("{rel}/node-templates"),
    )?;
    // [permissions] of a node template: its mode in every node's settings. The boot server
    // writes settings as root, so a node template has no other owner.
    for t in &mut node_templates {
        if let Some(perm) = spec
            .permissions
            .iter()
            .find(|(p, _)| p.as_str() == t.dest)
            .map(|(_, p)| p)
        {
            if perm.owner.is_some() || perm.group.is_some() {
                bail!(
                    "{spec_rel}: [permissions] {}: a node template's file belongs to root; \
                     only its mode can be set",
                    t.dest
                );
            }
            if let Some(m) = perm.mode {
                t.mode = m.bits();
            }
        }
    }
    let sha256 = tree_digest(&dir)?;
    Ok(Overlay {
        name: name.to_string(),
        dir,
        spec,
        files,
        templates,
        node_templates,
        sha256,
    })
}

/// The overlay names under `project/overlays`, sorted.
pub fn list(project: &Path) -> Result<Vec<String>> {
    let dir = project.join("overlays");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn image_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).expect("walked under root");
    let parts: Vec<_> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    format!("/{}", parts.join("/"))
}

fn walk_files(root: &Path, shown: &str) -> Result<BTreeMap<String, FileEntry>> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {shown}"))?;
        let meta = entry
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        let dest = image_path(root, entry.path());
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let e = if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            FileEntry::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else if ft.is_dir() {
            FileEntry::Dir { mode }
        } else if ft.is_file() {
            let digest = netboot::layout::sha256_file(entry.path())
                .with_context(|| format!("reading {shown}{dest}"))?;
            FileEntry::File {
                source: entry.path().to_owned(),
                mode,
                digest,
            }
        } else {
            bail!("{shown}{dest}: only files, folders and symlinks can be copied into an image");
        };
        out.insert(dest, e);
    }
    Ok(out)
}

fn walk_templates(root: &Path, shown: &str) -> Result<Vec<TemplateSource>> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {shown}"))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let dest = image_path(root, entry.path());
        let file = format!("{shown}{dest}");
        let Some(dest) = dest.strip_suffix(".j2") else {
            bail!("{file}: files under templates/ must end in .j2 (plain files belong in files/)");
        };
        let text = std::fs::read_to_string(entry.path())
            .with_context(|| format!("reading {file} (templates must be UTF-8 text)"))?;
        let mode = entry.metadata()?.permissions().mode() & 0o7777;
        out.push(TemplateSource {
            file,
            dest: dest.to_string(),
            text,
            mode,
        });
    }
    Ok(out)
}

/// sha256 over a folder: for each entry in sorted order, its relative path, type, mode and
/// content digest (or link target). Owners and times are not part of it: git keeps neither.
pub fn tree_digest(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let meta = entry.path().symlink_metadata()?;
        let rel = image_path(dir, entry.path());
        let mode = meta.mode() & 0o7777;
        let line = if meta.file_type().is_symlink() {
            format!("L {rel} {}\n", std::fs::read_link(entry.path())?.display())
        } else if meta.is_dir() {
            format!("D {rel} {mode:o}\n")
        } else {
            let (digest, _) = netboot::layout::sha256_file(entry.path())?;
            format!("F {rel} {mode:o} {digest}\n")
        };
        h.update(line.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_folder_loads_with_files_templates_and_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let o = dir.path().join("overlays/demo");
        std::fs::create_dir_all(o.join("files/etc/x.d")).unwrap();
        std::fs::create_dir_all(o.join("templates/etc")).unwrap();
        std::fs::create_dir_all(o.join("node-templates/etc")).unwrap();
        std::fs::write(o.join("overlay.toml"), "units = [\"a.service\"]\n").unwrap();
        std::fs::write(o.join("files/etc/x.d/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            o.join("files/etc/x.d/run"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("run", o.join("files/etc/x.d/link")).unwrap();
        std::fs::write(o.join("templates/etc/motd.j2"), "hi {{ who }}\n").unwrap();
        std::fs::write(
            o.join("node-templates/etc/hostname.j2"),
            "{{ node.name }}\n",
        )
        .unwrap();
        let ov = load(dir.path(), "demo").unwrap();
        assert_eq!(
            ov.files.keys().collect::<Vec<_>>(),
            ["/etc", "/etc/x.d", "/etc/x.d/link", "/etc/x.d/run"]
        );
        assert!(matches!(
            ov.files["/etc/x.d/run"],
            FileEntry::File { mode: 0o755, .. }
        ));
        assert_eq!(
            ov.files["/etc/x.d/link"],
            FileEntry::Symlink {
                target: "run".into()
            }
        );
        assert_eq!(ov.templates[0].dest, "/etc/motd");
        assert_eq!(ov.templates[0].file, "overlays/demo/templates/etc/motd.j2");
        assert_eq!(ov.node_templates[0].dest, "/etc/hostname");
        let before = ov.sha256.clone();
        std::fs::write(o.join("templates/etc/motd.j2"), "hello {{ who }}\n").unwrap();
        assert_ne!(
            load(dir.path(), "demo").unwrap().sha256,
            before,
            "an edit changes the digest"
        );
        std::fs::write(o.join("templates/etc/plain"), "x").unwrap();
        assert!(format!("{:#}", load(dir.path(), "demo").unwrap_err()).contains("must end in .j2"));
        assert!(
            format!("{:#}", load(dir.path(), "nope").unwrap_err()).contains("overlays here: demo")
        );
    }
}
