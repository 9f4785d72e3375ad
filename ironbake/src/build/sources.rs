//! Pinning a build's apt sources: each one's signed index fetched (which fails fast on an
//! unreachable source), overlay sources checked against their key with gpgv, and the build's
//! SOURCE_DATE_EPOCH chosen.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::apt::{self, Source};
use crate::base::SourceUse;
use crate::digest::sha256_hex;
use crate::overlay::{AptSource, Overlay};
use crate::project::Paths;
use crate::recipe::Recipe;

/// The sources as pinned, with the key files overlay sources need in the image.
pub struct Pinned {
    /// Every source with the digest of its index.
    pub uses: Vec<SourceUse>,
    /// Signing keys for overlay sources: file name in the image, file on the host.
    pub keys: Vec<(String, PathBuf)>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
}

/// The recipe's Debian sources: its mirror (and security mirror), else the host's.
fn main_sources(paths: &Paths, recipe: &Recipe) -> Result<Vec<Source>> {
    let d = &recipe.debian;
    let mut main = match &d.mirror {
        Some(m) => {
            let mut v = vec![Source {
                origin: "recipe".into(),
                uri: m.trim_end_matches('/').into(),
                suite: d.suite.clone(),
                components: d.components.clone(),
            }];
            if let Some(sec) = &d.security_mirror {
                v.push(Source {
                    origin: "recipe".into(),
                    uri: sec.trim_end_matches('/').into(),
                    suite: format!("{}-security", d.suite),
                    components: d.components.clone(),
                });
            }
            v
        }
        None => apt::host_sources(&paths.etc_apt, &d.suite, &d.components)?,
    };
    main.retain(|s| !s.components.is_empty());
    Ok(main)
}

/// An overlay's declared source as an apt [`Source`].
fn overlay_source(ov: &Overlay, s: &AptSource) -> Source {
    Source {
        origin: ov.name.clone(),
        uri: s.uri.trim_end_matches('/').into(),
        suite: s.suite.clone(),
        components: s.components.clone(),
    }
}

/// Fetches every source's index, checks overlay sources against their keys, and picks
/// SOURCE_DATE_EPOCH: the environment's, else the recipe's, else the `Date:` of the first
/// source's signed index. `name` is the recipe (for the ways past an unreachable source).
pub fn pin(paths: &Paths, name: &str, recipe: &Recipe, overlays: &[Overlay]) -> Result<Pinned> {
    let mut uses = Vec::new();
    let mut keys = Vec::new();
    let mut first_release = None;
    for s in main_sources(paths, recipe)? {
        let rel = apt::fetch_release(&s, name)?;
        uses.push(used(s, &rel, None));
        first_release.get_or_insert(rel);
    }
    for ov in overlays {
        for declared in &ov.spec.apt_sources {
            let s = overlay_source(ov, declared);
            let rel = apt::fetch_release(&s, name)?;
            let key_path = apt::resolve_key(name, &ov.name, &ov.dir, declared, &paths.cache)?;
            apt::verify_release(&s, &rel, &key_path)?;
            let key_name = format!("{}-{}.{}", ov.name, declared.name, declared.key_extension());
            let key_bytes =
                fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
            let key = (key_name.clone(), sha256_hex(&key_bytes));
            uses.push(used(s, &rel, Some(key)));
            keys.push((key_name, key_path));
        }
    }
    let epoch = source_date_epoch(recipe, first_release.as_deref())?;
    Ok(Pinned { uses, keys, epoch })
}

/// A source as the package layer uses it: pinned by the digest of its index `release`, with
/// its key's file name and digest when it has one.
fn used(s: Source, release: &[u8], key: Option<(String, String)>) -> SourceUse {
    SourceUse {
        origin: s.origin,
        uri: s.uri,
        suite: s.suite,
        components: s.components,
        release_sha256: sha256_hex(release),
        key,
    }
}

/// SOURCE_DATE_EPOCH for a build (see [`pin`]).
fn source_date_epoch(recipe: &Recipe, first_release: Option<&[u8]>) -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse::<u64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    if let Some(e) = recipe.debian.source_date_epoch {
        return Ok(e);
    }
    first_release.and_then(apt::release_date).context(
        "the suite's Release file has no readable Date:, so there is no default timestamp; \
         set source-date-epoch under [debian] or SOURCE_DATE_EPOCH",
    )
}
