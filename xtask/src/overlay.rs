//! Overlays: folders under `overlays/` that add packages, files, templates and settings to a
//! recipe's Debian base.
//!
//! ```text
//! overlays/NAME/
//!   overlay.toml            settings (below); required, may be empty
//!   files/...               copied into the image as they are: files, folders, symlinks,
//!                           with their modes (git keeps only the executable bit, so use
//!                           [permissions] for anything else)
//!   templates/...*.j2       rendered with the recipe's variables at build time; the `.j2`
//!                           suffix is dropped: templates/etc/motd.j2 -> /etc/motd
//!   node-templates/...*.j2  rendered per node by the boot server, not at build time; published
//!                           with the image under node-templates/ (hostname, addresses)
//! ```
//!
//! `overlay.toml` (every key optional, unknown keys refused):
//!
//! ```toml
//! description = "InfiniBand drivers"
//! packages = ["rdma-core"]          # installed into the package layer with the recipe's
//! units = ["opensm.service"]        # systemd units to enable (wanted by their [Install])
//! mask = ["apt-daily.timer"]        # units that must never run (linked to /dev/null)
//! modules = ["mlx4_ib"]             # kernel modules loaded at boot (modules-load.d)
//! cmdline = ["rdblacklist=x"]       # appended to the recipe's kernel command line
//! kernel = "proxmox-default-kernel" # installed instead of the recipe's [kernel] package
//!                                   # (one overlay at most)
//!
//! [[apt-sources]]                   # extra repositories for `packages`
//! name = "pve"
//! uri = "http://repo.example/pve"
//! suite = "bookworm"
//! components = ["pve-no-subscription"]
//! key = "keys/pve.gpg"              # signing key, a path inside the overlay folder, or:
//! # key-url = "https://example.org/release.gpg"   # fetched at build time, and pinned by
//! # key-sha512 = "..."                            # its digest (or key-sha256)
//!
//! [[artifacts]]                     # pinned downloads, cached by digest
//! name = "k3s"
//! url = "https://example.org/k3s"
//! sha256 = "..."                    # or: sha256-url = "https://example.org/sha256sum.txt"
//! dest = "/usr/local/bin/k3s"
//! mode = "0755"                     # default 0644
//!
//! [[users]]                         # added to the base's passwd, group, shadow (locked)
//! name = "admin"
//! uid = 1000                        # gid defaults to uid: a user's own group
//! groups = ["sudo"]                 # supplementary groups that exist in the base
//! shell = "/bin/bash"               # the default
//!
//! [permissions]                     # mode and owner of paths this overlay provides
//! "/home/admin/.ssh" = { mode = "0700", owner = "admin", group = "admin" }
//! "/etc/app/token" = { mode = "0600" }  # a node template: its mode in each node's settings
//!                                   # (required for templates that use node.secrets)
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diag::{self, Located};
use crate::recipe::{valid_name, valid_package};

/// An overlay's settings file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spec {
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Debian packages to add to the package layer.
    #[serde(default)]
    pub packages: Vec<String>,
    /// systemd units to enable.
    #[serde(default)]
    pub units: Vec<String>,
    /// systemd units to mask.
    #[serde(default)]
    pub mask: Vec<String>,
    /// Kernel modules to load at boot.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Kernel command-line additions.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// A kernel package that replaces the recipe's.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Extra apt sources.
    #[serde(default)]
    pub apt_sources: Vec<AptSource>,
    /// Pinned downloads.
    #[serde(default)]
    pub artifacts: Vec<ArtifactSpec>,
    /// Users to add.
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// Modes and owners of paths, keyed by absolute image path.
    #[serde(default)]
    pub permissions: BTreeMap<String, Permission>,
}

/// An extra apt repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AptSource {
    /// A short name, used for the key file in the image.
    pub name: String,
    /// Repository URI.
    pub uri: String,
    /// Suite.
    pub suite: String,
    /// Components.
    pub components: Vec<String>,
    /// The signing key (armored `.asc` or binary `.gpg`), relative to the overlay folder.
    #[serde(default)]
    pub key: Option<String>,
    /// Or: where to fetch the signing key from at build time.
    #[serde(default)]
    pub key_url: Option<String>,
    /// The fetched key's sha512 (lowercase hex), as its publisher gives it.
    #[serde(default)]
    pub key_sha512: Option<String>,
    /// Or its sha256.
    #[serde(default)]
    pub key_sha256: Option<String>,
}

/// Where an apt source's signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file in the overlay folder (relative path).
    File(String),
    /// A download pinned by a digest: (url, algorithm, hex digest).
    Url {
        /// The URL.
        url: String,
        /// `sha512` or `sha256`.
        algorithm: &'static str,
        /// Lowercase hex.
        digest: String,
    },
}

impl AptSource {
    /// Where the key comes from (valid after [`parse_spec`]).
    pub fn key_source(&self) -> KeySource {
        match (&self.key, &self.key_url) {
            (Some(k), _) => KeySource::File(k.clone()),
            (None, Some(url)) => {
                let (algorithm, digest) = match (&self.key_sha512, &self.key_sha256) {
                    (Some(d), _) => ("sha512", d.clone()),
                    (None, Some(d)) => ("sha256", d.clone()),
                    (None, None) => unreachable!("validated when parsed"),
                };
                KeySource::Url {
                    url: url.clone(),
                    algorithm,
                    digest,
                }
            }
            (None, None) => unreachable!("validated when parsed"),
        }
    }

    /// The key's file extension: `asc` for armored keys, `gpg` for binary ones.
    pub fn key_extension(&self) -> &'static str {
        let name = self
            .key
            .as_deref()
            .or(self.key_url.as_deref())
            .unwrap_or("");
        if name.ends_with(".asc") { "asc" } else { "gpg" }
    }
}

/// A pinned download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactSpec {
    /// Name, unique in the overlay.
    pub name: String,
    /// `http://`, `https://` or `file://` URL.
    pub url: String,
    /// The expected sha256, lowercase hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A published checksum file (`sha256sum` format) to take the digest from.
    #[serde(default)]
    pub sha256_url: Option<String>,
    /// Absolute path in the image.
    pub dest: String,
    /// Octal mode.
    #[serde(default = "default_file_mode")]
    pub mode: String,
}

fn default_file_mode() -> String {
    "0644".into()
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserSpec {
    /// Login name.
    pub name: String,
    /// Numeric user id (fixed, so files can be owned by it in every image).
    pub uid: u32,
    /// Primary group id; by default a group of the user's name with gid = uid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Login shell.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Home folder; by default `/home/NAME`, created with mode 0700.
    #[serde(default)]
    pub home: Option<String>,
    /// The GECOS field.
    #[serde(default)]
    pub comment: String,
}

fn default_shell() -> String {
    "/bin/bash".into()
}

/// A mode and owner for one path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Permission {
    /// Octal mode, e.g. "0600".
    #[serde(default)]
    pub mode: Option<String>,
    /// User name or numeric id.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name or numeric id.
    #[serde(default)]
    pub group: Option<String>,
}

/// Parses an octal mode string ("0755", "644") into permission bits.
pub fn parse_mode(s: &str) -> Option<u32> {
    let m = u32::from_str_radix(s, 8).ok()?;
    (s.len() >= 3 && s.len() <= 4 && m <= 0o7777).then_some(m)
}

/// Is `p` an absolute, normalised image path (no `.`, `..`, empty parts, or NUL)?
pub fn valid_image_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && !p.contains('\0')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// One entry of an overlay's `files/` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEntry {
    /// A folder.
    Dir {
        /// Mode bits from the source tree.
        mode: u32,
    },
    /// A regular file, read from `source` when emitted.
    File {
        /// Where it is in the overlay.
        source: PathBuf,
        /// Mode bits from the source tree.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as is.
        target: String,
    },
}

pub use netboot::template::TemplateSource;

/// A loaded overlay.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// The folder name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// Its settings.
    pub spec: Spec,
    /// The `files/` tree by image path.
    pub files: BTreeMap<String, FileEntry>,
    /// Build-time templates.
    pub templates: Vec<TemplateSource>,
    /// Per-node templates, published for the boot server.
    pub node_templates: Vec<TemplateSource>,
    /// sha256 over the whole folder (paths, modes, contents).
    pub sha256: String,
}

/// Parses and validates `overlay.toml` text (no IO).
pub fn parse_spec(file: &str, text: &str) -> Result<Spec, Located> {
    let spec: Spec = diag::parse_toml(file, text)?;
    let at = |needle: &str, message: String| diag::locate(file, text, needle, message);
    for p in &spec.packages {
        if !valid_package(p) {
            return Err(at(p, format!("{p:?} is not a valid Debian package name")));
        }
    }
    for u in spec.units.iter().chain(&spec.mask) {
        let ok = u.contains('.') && !u.contains('/') && !u.starts_with('.');
        if !ok {
            return Err(at(
                u,
                format!("{u:?} is not a systemd unit name (e.g. \"ssh.service\")"),
            ));
        }
    }
    for m in &spec.modules {
        if m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(at(m, format!("{m:?} is not a kernel module name")));
        }
    }
    for c in &spec.cmdline {
        if c.is_empty() || c.contains(char::is_whitespace) {
            return Err(at(
                c,
                format!("cmdline entry {c:?} must be one non-empty word"),
            ));
        }
    }
    for s in &spec.apt_sources {
        if !valid_name(&s.name) {
            return Err(at(
                &s.name,
                format!(
                    "apt source name {:?} must be lowercase letters, digits, '-' or '_'",
                    s.name
                ),
            ));
        }
        let hex_ok = |d: &str, len: usize| {
            d.len() == len
                && d.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        };
        match (&s.key, &s.key_url, &s.key_sha512, &s.key_sha256) {
            (Some(key), None, None, None) => {
                if !(key.ends_with(".asc") || key.ends_with(".gpg"))
                    || key.starts_with('/')
                    || key.split('/').any(|c| c == "..")
                {
                    return Err(at(
                        key,
                        format!(
                            "key {key:?} must be a .asc or .gpg file inside the overlay folder"
                        ),
                    ));
                }
            }
            (None, Some(url), sha512, sha256) => {
                if !(url.starts_with("http://")
                    || url.starts_with("https://")
                    || url.starts_with("file://"))
                {
                    return Err(at(
                        url,
                        format!("key-url {url:?} must be an http://, https:// or file:// URL"),
                    ));
                }
                match (sha512, sha256) {
                    (Some(d), None) if hex_ok(d, 128) => {}
                    (None, Some(d)) if hex_ok(d, 64) => {}
                    (Some(d), None) | (None, Some(d)) => {
                        return Err(at(
                            d,
                            format!(
                                "apt source {:?}: the key digest must be lowercase hex \
                                 (128 digits for key-sha512, 64 for key-sha256)",
                                s.name
                            ),
                        ));
                    }
                    _ => {
                        return Err(at(
                            url,
                            format!(
                                "apt source {:?}: key-url needs exactly one of key-sha512 or \
                                 key-sha256, so the key is pinned",
                                s.name
                            ),
                        ));
                    }
                }
            }
            _ => {
                return Err(at(
                    &s.name,
                    format!(
                        "apt source {:?}: give its signing key as `key` (a file in the overlay) \
                         or as `key-url` with `key-sha512` or `key-sha256`",
                        s.name
                    ),
                ));
            }
        }
    }
    if let Some(k) = &spec.kernel
        && !valid_package(k)
    {
        return Err(at(
            k,
            format!("kernel {k:?} is not a valid Debian package name"),
        ));
    }
    let mut names = Vec::new();
    for a in &spec.artifacts {
        if names.contains(&&a.name) {
            return Err(at(
                &a.name,
                format!("artifact {:?} is declared twice", a.name),
            ));
        }
        names.push(&a.name);
        match (&a.sha256, &a.sha256_url) {
            (Some(d), None)
                if d.len() == 64
                    && d.chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) => {}
            (Some(d), None) => {
                return Err(at(
                    d,
                    format!(
                        "artifact {:?}: sha256 must be 64 lowercase hex digits",
                        a.name
                    ),
                ));
            }
            (None, Some(_)) => {}
            _ => {
                return Err(at(
                    &a.name,
                    format!(
                        "artifact {:?}: give exactly one of sha256 or sha256-url",
                        a.name
                    ),
                ));
            }
        }
        if !valid_image_path(&a.dest) {
            return Err(at(
                &a.dest,
                format!(
                    "artifact {:?}: dest {:?} must be an absolute path",
                    a.name, a.dest
                ),
            ));
        }
        if parse_mode(&a.mode).is_none() {
            return Err(at(
                &a.mode,
                format!(
                    "artifact {:?}: mode {:?} is not an octal mode",
                    a.name, a.mode
                ),
            ));
        }
    }
    for u in &spec.users {
        let ok = !u.name.is_empty()
            && u.name.len() <= 32
            && u.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !u.name.starts_with('-');
        if !ok {
            return Err(at(
                &u.name,
                format!(
                    "user name {:?} must be lowercase letters, digits, '-' or '_'",
                    u.name
                ),
            ));
        }
        if u.uid == 0 || u.uid >= 60000 {
            return Err(at(
                &u.name,
                format!("user {:?}: uid {} must be from 1 to 59999", u.name, u.uid),
            ));
        }
    }
    for (path, perm) in &spec.permissions {
        if !valid_image_path(path) {
            return Err(at(
                path,
                format!("permissions: {path:?} must be an absolute image path"),
            ));
        }
        if let Some(m) = &perm.mode
            && parse_mode(m).is_none()
        {
            return Err(at(
                m,
                format!("permissions for {path}: mode {m:?} is not an octal mode"),
            ));
        }
    }
    Ok(spec)
}

/// Loads `overlays/NAME` under `project`.
pub fn load(project: &Path, name: &str) -> Result<Overlay> {
    let rel = format!("overlays/{name}");
    let dir = project.join(&rel);
    if !valid_name(name) || !dir.is_dir() {
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
        if let Some(key) = &s.key
            && !dir.join(key).is_file()
        {
            bail!(
                "{spec_rel}: apt source {:?}: key {rel}/{key} does not exist",
                s.name
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
        if let Some(perm) = spec.permissions.get(&t.dest) {
            if perm.owner.is_some() || perm.group.is_some() {
                bail!(
                    "{spec_rel}: [permissions] {}: a node template's file belongs to root; \
                     only its mode can be set",
                    t.dest
                );
            }
            if let Some(m) = &perm.mode {
                t.mode = parse_mode(m).expect("validated when parsed");
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
            FileEntry::File {
                source: entry.path().to_owned(),
                mode,
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

    #[test]
    fn an_empty_overlay_toml_is_valid() {
        assert_eq!(parse_spec("o.toml", "").unwrap(), Spec::default());
    }

    #[test]
    fn bad_specs_are_refused_with_a_position() {
        let cases: &[(&str, &str, usize)] = &[
            (
                "packages = [\"ok\"]\nunits = [\"ssh\"]\n",
                "not a systemd unit name",
                2,
            ),
            (
                "[[artifacts]]\nname = \"k\"\nurl = \"file:///k\"\ndest = \"/usr/bin/k\"\n",
                "exactly one of sha256",
                2,
            ),
            (
                "[[artifacts]]\nname = \"k\"\nurl = \"file:///k\"\nsha256 = \"abc\"\ndest = \"/k\"\n",
                "64 lowercase hex",
                4,
            ),
            (
                "[permissions]\n\"/etc/../x\" = { mode = \"0600\" }\n",
                "absolute image path",
                2,
            ),
            (
                "[permissions]\n\"/etc/x\" = { mode = \"9\" }\n",
                "not an octal mode",
                2,
            ),
            ("[[users]]\nname = \"root\"\nuid = 0\n", "uid 0", 2),
            ("colour = 1\n", "unknown field `colour`", 1),
            (
                "[[apt-sources]]\nname = \"pve\"\nuri = \"http://r.example/pve\"\nsuite = \"bookworm\"\ncomponents = [\"c\"]\nkey-url = \"https://r.example/k.gpg\"\n",
                "needs exactly one of key-sha512 or key-sha256",
                6,
            ),
            (
                "[[apt-sources]]\nname = \"pve\"\nuri = \"http://r.example/pve\"\nsuite = \"bookworm\"\ncomponents = [\"c\"]\nkey-url = \"https://r.example/k.gpg\"\nkey-sha512 = \"abc\"\n",
                "128 digits for key-sha512",
                7,
            ),
            (
                "[[apt-sources]]\nname = \"pve\"\nuri = \"http://r.example/pve\"\nsuite = \"bookworm\"\ncomponents = [\"c\"]\n",
                "give its signing key",
                2,
            ),
            (
                "kernel = \"Bad Name\"\n",
                "not a valid Debian package name",
                1,
            ),
        ];
        for (text, needle, line) in cases {
            let err = parse_spec("o.toml", text).unwrap_err();
            assert!(err.message.contains(needle), "{text:?}: {}", err.message);
            assert_eq!(err.line, *line, "{text:?}: {err}");
        }
    }

    #[test]
    fn modes_and_paths_are_checked() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0800"), None);
        assert!(valid_image_path("/etc/hostname"));
        for bad in ["etc/x", "/", "/etc/", "/a//b", "/a/./b", "/a/../b"] {
            assert!(!valid_image_path(bad), "{bad}");
        }
    }

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
