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
//! persist = ["/var/lib/pve-cluster"] # folders kept on the node's data partition across
//!                                   # reboots and versions (bind-mounted over the image's)
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
use std::path::PathBuf;

use serde::Deserialize;

use crate::checked::{
    CmdlineWord, FetchUrl, ImagePath, KeyFile, Mode, ModuleName, Name, PackageName, Sha256, Sha512,
    UnitName,
};
use netboot::diag::{self, Located};
pub use netboot::template::TemplateSource;

mod load;
pub use load::load;

/// Where node templates go in an overlay and in a published version.
pub const NODE_TEMPLATES_DIR: &str = "node-templates/";

/// An overlay's settings file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spec {
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Debian packages to add to the package layer.
    #[serde(default)]
    pub packages: Vec<PackageName>,
    /// systemd units to enable.
    #[serde(default)]
    pub units: Vec<UnitName>,
    /// systemd units to mask.
    #[serde(default)]
    pub mask: Vec<UnitName>,
    /// Kernel modules to load at boot.
    #[serde(default)]
    pub modules: Vec<ModuleName>,
    /// Kernel command-line additions.
    #[serde(default)]
    pub cmdline: Vec<CmdlineWord>,
    /// A kernel package that replaces the recipe's.
    #[serde(default)]
    pub kernel: Option<PackageName>,
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
    pub permissions: BTreeMap<ImagePath, Permission>,
    /// Folders whose contents outlive a reboot: kept on the node's data partition and
    /// bind-mounted over the image's before the units that use them start.
    #[serde(default)]
    pub persist: Vec<ImagePath>,
}

/// An extra apt repository.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawAptSource")]
pub struct AptSource {
    /// A short name, used for the key file in the image.
    pub name: Name,
    /// Repository URI.
    pub uri: String,
    /// Suite.
    pub suite: String,
    /// Components.
    pub components: Vec<String>,
    /// Its signing key.
    pub key: KeySource,
}

/// An apt source as written, before its key's form is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAptSource {
    name: Name,
    uri: String,
    suite: String,
    components: Vec<String>,
    #[serde(default)]
    key: Option<KeyFile>,
    #[serde(default)]
    key_url: Option<FetchUrl>,
    #[serde(default)]
    key_sha512: Option<Sha512>,
    #[serde(default)]
    key_sha256: Option<Sha256>,
}

/// Where an apt source's signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file in the overlay folder (relative path).
    File(KeyFile),
    /// A download pinned by its digest.
    Url {
        /// The URL.
        url: FetchUrl,
        /// Its digest, as its publisher gives it.
        digest: KeyDigest,
    },
}

/// The pinned digest of a downloaded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDigest {
    /// `key-sha512`.
    Sha512(Sha512),
    /// `key-sha256`.
    Sha256(Sha256),
}

impl KeyDigest {
    /// The algorithm's name (`sha512`, `sha256`) and the hex digest.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            KeyDigest::Sha512(d) => ("sha512", d.as_str()),
            KeyDigest::Sha256(d) => ("sha256", d.as_str()),
        }
    }
}

impl TryFrom<RawAptSource> for AptSource {
    type Error = String;
    fn try_from(r: RawAptSource) -> Result<AptSource, String> {
        let key = match (r.key, r.key_url, r.key_sha512, r.key_sha256) {
            (Some(file), None, None, None) => KeySource::File(file),
            (None, Some(url), Some(d), None) => KeySource::Url {
                url,
                digest: KeyDigest::Sha512(d),
            },
            (None, Some(url), None, Some(d)) => KeySource::Url {
                url,
                digest: KeyDigest::Sha256(d),
            },
            (None, Some(_), _, _) => {
                return Err(format!(
                    "apt source {:?}: key-url needs exactly one of key-sha512 or key-sha256, so \
                     the key is pinned",
                    r.name.as_str()
                ));
            }
            _ => {
                return Err(format!(
                    "apt source {:?}: give its signing key as `key` (a file in the overlay) or \
                     as `key-url` with `key-sha512` or `key-sha256`",
                    r.name.as_str()
                ));
            }
        };
        Ok(AptSource {
            name: r.name,
            uri: r.uri,
            suite: r.suite,
            components: r.components,
            key,
        })
    }
}

impl AptSource {
    /// The key's file extension: `asc` for armored keys, `gpg` for binary ones.
    pub fn key_extension(&self) -> &'static str {
        let name = match &self.key {
            KeySource::File(f) => f.as_str(),
            KeySource::Url { url, .. } => url.as_str(),
        };
        if name.ends_with(".asc") { "asc" } else { "gpg" }
    }
}

/// A pinned download.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawArtifact")]
pub struct ArtifactSpec {
    /// Name, unique in the overlay.
    pub name: String,
    /// Where it is fetched from.
    pub url: FetchUrl,
    /// How its digest is known.
    pub digest: ArtifactDigest,
    /// Absolute path in the image.
    pub dest: ImagePath,
    /// Its mode in the image.
    pub mode: Mode,
}

/// How an artifact's sha256 is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactDigest {
    /// Given in the overlay (`sha256`).
    Pinned(Sha256),
    /// Taken at build time from a published checksum file in `sha256sum` format
    /// (`sha256-url`).
    FromList(FetchUrl),
}

/// An artifact as written, before its digest's form is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawArtifact {
    name: String,
    url: FetchUrl,
    #[serde(default)]
    sha256: Option<Sha256>,
    #[serde(default)]
    sha256_url: Option<FetchUrl>,
    dest: ImagePath,
    #[serde(default = "file_mode")]
    mode: Mode,
}

fn file_mode() -> Mode {
    Mode::FILE
}

impl TryFrom<RawArtifact> for ArtifactSpec {
    type Error = String;
    fn try_from(r: RawArtifact) -> Result<ArtifactSpec, String> {
        let digest = match (r.sha256, r.sha256_url) {
            (Some(d), None) => ArtifactDigest::Pinned(d),
            (None, Some(u)) => ArtifactDigest::FromList(u),
            _ => {
                return Err(format!(
                    "artifact {:?}: give exactly one of sha256 or sha256-url",
                    r.name
                ));
            }
        };
        Ok(ArtifactSpec {
            name: r.name,
            url: r.url,
            digest,
            dest: r.dest,
            mode: r.mode,
        })
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserSpec {
    /// Login name.
    pub name: UserName,
    /// Numeric user id (fixed, so files can be owned by it in every image).
    pub uid: Uid,
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
    pub home: Option<ImagePath>,
    /// The GECOS field.
    #[serde(default)]
    pub comment: String,
}

fn default_shell() -> String {
    "/bin/bash".into()
}

/// A login name: lowercase letters, digits, `-` and `_`, at most 32, not starting with `-`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UserName(String);

impl std::fmt::Debug for UserName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<String> for UserName {
    type Error = String;
    fn try_from(s: String) -> Result<UserName, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !s.starts_with('-');
        if ok {
            Ok(UserName(s))
        } else {
            Err(format!(
                "user name {s:?} must be lowercase letters, digits, '-' or '_'"
            ))
        }
    }
}

impl std::fmt::Display for UserName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for UserName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A user id an overlay may give: 1 to 59999 (0 is root, 60000 and above are Debian's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u32")]
pub struct Uid(u32);

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Uid {
    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Uid {
    type Error = String;
    fn try_from(n: u32) -> Result<Uid, String> {
        if (1..60000).contains(&n) {
            Ok(Uid(n))
        } else {
            Err(format!("uid {n} must be from 1 to 59999"))
        }
    }
}

/// A mode and owner for one path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Permission {
    /// Its mode.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// User name or numeric id.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name or numeric id.
    #[serde(default)]
    pub group: Option<String>,
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
        /// Its sha256 and size when the overlay was loaded.
        digest: (String, u64),
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as is.
        target: String,
    },
}

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

/// Parses and checks `overlay.toml` text (no IO). Each value is checked as it is read (see
/// [`crate::checked`]); what remains are the rules between values.
pub fn parse_spec(file: &str, text: &str) -> Result<Spec, Located> {
    let spec: Spec = diag::parse_toml(file, text)?;
    let mut names: Vec<&str> = Vec::new();
    for a in &spec.artifacts {
        if names.contains(&a.name.as_str()) {
            // Point at the second declaration.
            let needle = format!("\"{}\"", a.name);
            let at = text.match_indices(&needle).nth(1).map_or(0, |(i, _)| i);
            let (line, column) = diag::line_col(text, at);
            return Err(Located {
                file: file.to_string(),
                line,
                column,
                message: format!("artifact {:?} is declared twice", a.name),
                source_line: text.lines().nth(line - 1).unwrap_or("").to_string(),
            });
        }
        names.push(&a.name);
    }
    Ok(spec)
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
                1,
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
            ("[[users]]\nname = \"root\"\nuid = 0\n", "uid 0", 3),
            ("colour = 1\n", "unknown field `colour`", 1),
            (
                "[[apt-sources]]\nname = \"pve\"\nuri = \"http://r.example/pve\"\nsuite = \"bookworm\"\ncomponents = [\"c\"]\nkey-url = \"https://r.example/k.gpg\"\n",
                "needs exactly one of key-sha512 or key-sha256",
                1,
            ),
            (
                "[[apt-sources]]\nname = \"pve\"\nuri = \"http://r.example/pve\"\nsuite = \"bookworm\"\ncomponents = [\"c\"]\nkey-url = \"https://r.example/k.gpg\"\nkey-sha512 = \"abc\"\n",
                "128 lowercase hex digits",
                7,
            ),
            (
                "[[apt-sources]]\nname = \"pve\"\nuri = \"http://r.example/pve\"\nsuite = \"bookworm\"\ncomponents = [\"c\"]\n",
                "give its signing key",
                1,
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
}
