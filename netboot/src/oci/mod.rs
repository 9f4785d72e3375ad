//! Published versions as OCI artifacts: `push` uploads one to any registry that speaks the OCI
//! distribution API, `sync` pulls them into `out/` and publishes each the way a build does.
//!
//! One version is one image manifest (OCI image spec 1.1, artifact guidance):
//!
//! ```text
//! mediaType     application/vnd.oci.image.manifest.v1+json
//! artifactType  application/vnd.ironbake.version.v1
//! config        manifest.json            (application/vnd.ironbake.manifest.v1+json)
//! layers        every other file of the version, sorted by path, raw bytes
//!               (application/vnd.ironbake.file.v1), its path as org.opencontainers.image.title;
//!               then the iPXE binaries the build published beside it, titled by file name and
//!               annotated dev.ironbake.ipxe = their version
//! annotations   org.opencontainers.image.version, .created (SOURCE_DATE_EPOCH), dev.ironbake.recipe
//! ```
//!
//! A registry that predates `artifactType` still sees the config's media type, which is what
//! the guidance says such clients use instead. Every blob's digest is its file's sha256, so a
//! second push finds them all there and sends none, and the manifest's bytes depend only on the
//! version: pushing the same version twice makes the same digest. The version's tag is the
//! version (`+` becomes `_`, which tags cannot hold).

mod client;
mod push;
mod sync;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{Access, Auth, Registry, load_auth};
pub use push::{LocalArtifact, PushReport, artifact_of, push};
pub use sync::{SyncReport, sync};

/// The image manifest's media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The artifact type of a published version.
pub const ARTIFACT_TYPE: &str = "application/vnd.ironbake.version.v1";
/// The config's media type: the version's `manifest.json`.
pub const CONFIG_TYPE: &str = "application/vnd.ironbake.manifest.v1+json";
/// A layer's media type: one file's bytes, as published.
pub const FILE_TYPE: &str = "application/vnd.ironbake.file.v1";
/// The annotation that names a layer's file.
pub const TITLE: &str = "org.opencontainers.image.title";
/// The annotation that marks an iPXE binary's layer, with iPXE's published version.
pub const IPXE: &str = "dev.ironbake.ipxe";
/// The tag `sync` follows for `current` unless the reference names one.
pub const DEFAULT_TAG: &str = "latest";

/// Why a push or a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is not `REGISTRY/REPOSITORY[:TAG]`.
    #[error("{given:?} is not REGISTRY/REPOSITORY[:TAG]: {why}")]
    Reference {
        /// What was given.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// The registry could not be reached, or the connection broke.
    #[error("{what} ({url}): {why}")]
    Transport {
        /// What was being done.
        what: String,
        /// The URL.
        url: String,
        /// The transport's error.
        why: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{what} ({url}): the registry answered {status}{hint}: {body}")]
    Status {
        /// What was being done.
        what: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What to do about it.
        hint: String,
        /// The start of the registry's answer.
        body: String,
    },
    /// The credentials file cannot be used.
    #[error("{0}")]
    Credentials(String),
    /// What the registry sent is not what it said it was.
    #[error("{what}: {why}")]
    Content {
        /// Which blob or manifest.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The published version cannot be pushed.
    #[error("{0}")]
    Version(String),
    /// Reading or writing local files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl OciError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
        let what = what.into();
        move |source| OciError::Io { what, source }
    }
}

impl From<crate::layout::LayoutError> for OciError {
    fn from(e: crate::layout::LayoutError) -> Self {
        OciError::Version(e.to_string())
    }
}

/// Where a version lives: a registry, a repository in it, and a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository, `a/b/c`.
    pub repository: String,
    /// The tag, if one was named.
    pub tag: Option<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

/// Is `tag` a valid OCI tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`)?
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The tag a published version is pushed under: the version, `+` written as `_`.
pub fn version_tag(version: &str) -> String {
    version.replace('+', "_")
}

fn valid_repository(repo: &str) -> bool {
    // The distribution spec's path components: [a-z0-9]+([._-][a-z0-9]+)* joined by '/'.
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part.split(['.', '_', '-']).all(|w| {
                    !w.is_empty()
                        && w.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                })
        })
}

impl Reference {
    /// Parses `REGISTRY/REPOSITORY[:TAG]`. The registry must be named (a host with a dot or
    /// a port, or `localhost`): nothing is sent to a registry the user did not write.
    pub fn parse(given: &str) -> Result<Reference, OciError> {
        let bad = |why: &str| OciError::Reference {
            given: given.into(),
            why: why.into(),
        };
        if given.contains('@') {
            return Err(bad("digests are not accepted; name a tag"));
        }
        if given.contains("://") {
            return Err(bad(
                "leave out the scheme (https is used, http only for loopback or --insecure)",
            ));
        }
        let (registry, rest) = given
            .split_once('/')
            .ok_or_else(|| bad("name the registry and the repository, as HOST[:PORT]/REPO"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "the first part must be the registry's host (with a dot or a port, or localhost)",
            ));
        }
        if !registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(bad("the registry's host has characters a host cannot have"));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (rest, None),
        };
        if !valid_repository(repository) {
            return Err(bad(
                "a repository is lowercase letters and digits, parts joined by . _ - and /",
            ));
        }
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(bad(
                "a tag is up to 128 letters, digits, _ . - (not first . or -)",
            ));
        }
        Ok(Reference {
            registry: registry.into(),
            repository: repository.into(),
            tag,
        })
    }

    /// Is the registry on this machine (where plain HTTP cannot be overheard)?
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// A registry repository a boot server pulls versions from, and how.
#[derive(Debug, Clone)]
pub struct Source {
    /// `REGISTRY/REPOSITORY[:TAG]`; `current` follows TAG ([`DEFAULT_TAG`] if none).
    pub reference: Reference,
    /// The credentials.
    pub auth: Auth,
    /// Plain HTTP to a registry that is not on loopback.
    pub insecure: bool,
    /// Time between syncs (for `serve --sync-from`).
    pub every: Duration,
}

impl Source {
    /// Parses the reference and reads the credentials file, so that a mistake in either
    /// stops the command at once.
    pub fn new(
        reference: &str,
        auth_file: Option<&Path>,
        insecure: bool,
        every: Duration,
    ) -> Result<Source, OciError> {
        Ok(Source {
            reference: Reference::parse(reference)?,
            auth: match auth_file {
                Some(f) => load_auth(f)?,
                None => Auth::Anonymous,
            },
            insecure,
            every,
        })
    }

    /// Connects and syncs once into `out`.
    pub fn sync_once(
        &self,
        out: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<SyncReport, OciError> {
        let registry = Registry::connect(&self.reference, &self.auth, self.insecure, Access::Pull)?;
        let follow = self.reference.tag.as_deref().unwrap_or(DEFAULT_TAG);
        sync(&registry, out, follow, progress)
    }
}

/// A content descriptor (OCI image spec `descriptor.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
    /// Annotations (the layer's file name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The hex sha256 of a `sha256:` digest, or None for another algorithm or a malformed one.
    pub fn sha256(&self) -> Option<&str> {
        self.digest.strip_prefix("sha256:").filter(|h| {
            h.len() == 64
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
    }

    /// The layer's file name, if it has one.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str)
    }
}

/// An image manifest (OCI image spec `manifest.md`), its fields in the spec's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_TYPE`].
    #[serde(default)]
    pub media_type: String,
    /// [`ARTIFACT_TYPE`] for a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The version's `manifest.json`.
    pub config: Descriptor,
    /// Its files.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// What the version is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// RFC 3339 (UTC) for a Unix time, as the `created` annotation wants it.
pub fn rfc3339(unix: u64) -> String {
    let (date, time) = crate::date::utc(unix);
    format!("{date}T{time}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_maybe_a_tag() {
        let r = Reference::parse("127.0.0.1:5000/lab/core-node:1.0-abc").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "lab/core-node");
        assert_eq!(r.tag.as_deref(), Some("1.0-abc"));
        assert!(r.is_loopback());
        let r = Reference::parse("registry.example.org/core-node").unwrap();
        assert_eq!(r.tag, None);
        assert!(!r.is_loopback());
        assert!(Reference::parse("localhost/x").unwrap().is_loopback());
        assert!(Reference::parse("[::1]:5000/x").unwrap().is_loopback());
        for bad in [
            "core-node",
            "library/core-node",
            "https://r.example.org/x",
            "r.example.org/X",
            "r.example.org/a//b",
            "r.example.org/a:-t",
            "r.example.org/a@sha256:00",
            "r.example.org/",
            "r.exa mple.org/a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn version_tags_hold_only_tag_characters() {
        assert_eq!(version_tag("1.2+deb12-abcd"), "1.2_deb12-abcd");
        assert!(valid_tag(&version_tag("1.2+deb12-abcd")));
        assert!(!valid_tag(""));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn created_is_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
