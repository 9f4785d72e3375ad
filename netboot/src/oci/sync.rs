//! `sync`: versions from a registry into `out/`, each checked blob by blob against its digest
//! and the version's manifest, and published the way a build publishes (staged beside `out/`,
//! one rename), so that a broken or partial download never appears there.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::push::human;
use super::{CONFIG_TYPE, Descriptor, IPXE, ImageManifest, MANIFEST_TYPE, OciError, Registry};
use crate::layout::{self, CURRENT, MANIFEST, Manifest, SHA256SUMS};
use crate::publish::{self, Staging};

/// The published folder of the iPXE binaries, under `out/`.
const IPXE_DIR: &str = "ipxe";

/// What a sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Versions pulled and published now, as `RECIPE@VERSION`.
    pub pulled: Vec<String>,
    /// Versions `out/` held already.
    pub present: Vec<String>,
    /// Where `current` points now (when the followed tag exists), as `RECIPE@VERSION`.
    pub current: Option<String>,
    /// Does the repository have the followed tag (even if its artifact was refused)?
    pub followed_found: bool,
    /// Tags refused, with why; nothing of theirs was published.
    pub refused: Vec<(String, String)>,
}

/// One tag's artifact, read and checked as far as its manifest and config.
struct Artifact {
    digest: String,
    manifest: ImageManifest,
    config: Vec<u8>,
    version: Manifest,
}

/// Pulls every version the repository's tags hold that `out/` lacks, and points the recipe's
/// `current` at the version `follow` tags. A tag whose artifact fails a check is refused
/// (reported, nothing of it published); the others still sync.
pub fn sync(
    registry: &Registry,
    out: &Path,
    follow: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<SyncReport, OciError> {
    publish::clean_stale(out).map_err(OciError::io("cleaning up after an earlier sync"))?;
    let tags = registry.tags()?;
    let mut report = SyncReport::default();
    // Each artifact once, however many tags name it; the followed one last, so that it is
    // the one that becomes current.
    let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut followed = None;
    for tag in &tags {
        match registry.tag_digest(tag)? {
            Some(d) => {
                if tag == follow {
                    followed = Some(d.clone());
                }
                by_digest.entry(d).or_default().push(tag.clone());
            }
            None => continue,
        }
    }
    report.followed_found = followed.is_some();
    let mut order: Vec<(String, Vec<String>)> = by_digest.into_iter().collect();
    order.sort_by_key(|(d, _)| Some(d) == followed.as_ref());
    let mut recipe_seen: Option<String> = None;
    for (digest, names) in order {
        let is_followed = Some(&digest) == followed.as_ref();
        let shown = names.join(", ");
        let artifact = match read_artifact(registry, &digest) {
            Ok(a) => a,
            Err(e) => {
                report.refused.push((shown, e.to_string()));
                continue;
            }
        };
        let (recipe, version) = (
            artifact.version.recipe.clone(),
            artifact.version.version.clone(),
        );
        if let Some(r) = &recipe_seen
            && *r != recipe
        {
            report.refused.push((
                shown,
                format!("holds recipe {recipe}, but the repository holds {r} too: one recipe a repository"),
            ));
            continue;
        }
        recipe_seen = Some(recipe.clone());
        let name = format!("{recipe}@{version}");
        let local = out.join(&recipe).join(&version);
        if local.exists() {
            let (have, _) = layout::sha256_file(&local.join(MANIFEST))?;
            if format!("sha256:{have}") != artifact.manifest.config.digest {
                report.refused.push((
                    shown,
                    format!(
                        "{name} is published here already with another manifest.json; \
                         published versions are never overwritten"
                    ),
                ));
                continue;
            }
            report.present.push(name.clone());
        } else {
            progress(&format!("pulling {name} ({})", tags_word(&names)));
            match pull(registry, out, &artifact, is_followed, progress) {
                Ok(()) => report.pulled.push(name.clone()),
                Err(e) => {
                    report.refused.push((shown, e.to_string()));
                    continue;
                }
            }
        }
        if let Err(e) = pull_ipxe(registry, out, &artifact.manifest) {
            report.refused.push((shown, e.to_string()));
            continue;
        }
        if is_followed {
            if layout::read_current(&out.join(&recipe))?.as_deref() != Some(version.as_str()) {
                publish::set_current(out, &recipe, &version).map_err(OciError::io(format!(
                    "pointing {recipe}/current at {version}"
                )))?;
            }
            report.current = Some(name);
        }
    }
    Ok(report)
}

fn tags_word(names: &[String]) -> String {
    if names.len() == 1 {
        format!("tag {}", names[0])
    } else {
        format!("tags {}", names.join(", "))
    }
}

/// Reads a tag's manifest and config and checks that they are a version of ours.
fn read_artifact(registry: &Registry, digest: &str) -> Result<Artifact, OciError> {
    let (bytes, digest) = registry.manifest(digest)?;
    let what = format!("manifest {digest}");
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| OciError::Content {
            what: what.clone(),
            why: format!("not an OCI image manifest: {e}"),
        })?;
    let not_ours = |why: &str| OciError::Content {
        what: what.clone(),
        why: format!("not an ironbake version: {why}"),
    };
    if manifest.schema_version != 2 || manifest.media_type != MANIFEST_TYPE {
        return Err(not_ours("not an OCI image manifest, schema 2"));
    }
    if manifest.config.media_type != CONFIG_TYPE {
        return Err(not_ours(&format!(
            "its config is {}",
            manifest.config.media_type
        )));
    }
    if manifest.config.size > 16 << 20 {
        return Err(not_ours("its config is larger than 16 MiB"));
    }
    let mut config = Vec::new();
    read_checked(
        registry.blob(&manifest.config)?,
        &manifest.config,
        &mut config,
    )?;
    let version = layout::parse_manifest(&String::from_utf8_lossy(&config)).map_err(|e| {
        OciError::Content {
            what: format!("the config of {digest}"),
            why: format!("not a manifest.json this server reads: {e}"),
        }
    })?;
    if !layout::valid_name(&version.recipe)
        || !layout::valid_version(&version.version)
        || version.version == CURRENT
    {
        return Err(not_ours(
            "its recipe or version is not a name a folder can have",
        ));
    }
    Ok(Artifact {
        digest,
        manifest,
        config,
        version,
    })
}

/// Copies a blob into `sink`, refusing more or fewer bytes than it should have, or other ones.
fn read_checked(mut from: impl Read, d: &Descriptor, mut sink: impl Write) -> Result<(), OciError> {
    let want = d.sha256().ok_or_else(|| OciError::Content {
        what: format!("blob {}", d.digest),
        why: "only sha256 digests are accepted".into(),
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(|e| OciError::Transport {
            what: format!("reading blob {}", d.digest),
            url: String::new(),
            why: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > d.size {
            return Err(OciError::Content {
                what: format!("blob {}", d.digest),
                why: format!("the registry sent more than its {} bytes", d.size),
            });
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])
            .map_err(OciError::io("writing a pulled blob"))?;
    }
    if total != d.size {
        return Err(OciError::Content {
            what: format!("blob {}", d.digest),
            why: format!("the registry sent {total} of its {} bytes", d.size),
        });
    }
    let got = hex::encode(hasher.finalize());
    if got != want {
        return Err(OciError::Content {
            what: format!(
                "blob {}{}",
                d.digest,
                d.title().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
            why: format!("its bytes hash to sha256:{got}: the registry's copy is damaged"),
        });
    }
    Ok(())
}

/// Downloads a version's files into a staging folder, checks them, and publishes it.
fn pull(
    registry: &Registry,
    out: &Path,
    a: &Artifact,
    make_current: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(), OciError> {
    let m = &a.version;
    // What the manifest says the version holds: every output, and SHA256SUMS.
    let mut expected: BTreeMap<&str, (&str, u64)> = m
        .outputs
        .iter()
        .map(|o| (o.path.as_str(), (o.sha256.as_str(), o.size)))
        .collect();
    let sums = layout::sha256sums_text(&m.outputs, a.manifest.config.sha256().unwrap_or_default());
    let sums_sha = layout::sha256_reader(sums.as_bytes()).expect("in memory").0;
    expected.insert(SHA256SUMS, (sums_sha.as_str(), sums.len() as u64));
    let files: Vec<&Descriptor> = a
        .manifest
        .layers
        .iter()
        .filter(|d| !d.annotations.contains_key(IPXE))
        .collect();
    let mut seen = BTreeSet::new();
    for d in &files {
        let title = d.title().ok_or_else(|| OciError::Content {
            what: format!("layer {}", d.digest),
            why: "it has no file name (org.opencontainers.image.title)".into(),
        })?;
        let Some((sha, size)) = expected.get(title) else {
            return Err(OciError::Content {
                what: format!("layer {title}"),
                why: "the version's manifest.json lists no such file".into(),
            });
        };
        if d.sha256() != Some(*sha) || d.size != *size {
            return Err(OciError::Content {
                what: format!("layer {title}"),
                why: "its digest or size is not the one manifest.json gives the file".into(),
            });
        }
        if !seen.insert(title) {
            return Err(OciError::Content {
                what: format!("layer {title}"),
                why: "two layers name this file".into(),
            });
        }
    }
    if let Some(missing) = expected.keys().find(|p| !seen.contains(*p)) {
        return Err(OciError::Content {
            what: format!("the artifact {}", a.digest),
            why: format!("it lacks {missing}, which manifest.json lists"),
        });
    }
    let staging = Staging::new(out, &m.recipe, &m.version).map_err(OciError::io(
        "starting a staging folder beside the published root",
    ))?;
    let dir = staging.version_dir();
    std::fs::write(dir.join(MANIFEST), &a.config).map_err(OciError::io("writing manifest.json"))?;
    for d in files {
        let title = d.title().expect("checked above");
        // Titles are manifest.json's own paths (checked above), which a build wrote.
        let path = dir.join(title);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(OciError::io(format!("creating {}", parent.display())))?;
        }
        progress(&format!("  {title} ({})", human(d.size)));
        let mut f = std::fs::File::create(&path)
            .map_err(OciError::io(format!("creating {}", path.display())))?;
        read_checked(registry.blob(d)?, d, &mut f)?;
        f.sync_all()
            .map_err(OciError::io(format!("writing {}", path.display())))?;
    }
    let (_, problems) = layout::verify(&dir)?;
    if let Some(p) = problems.first() {
        return Err(OciError::Content {
            what: format!("{}@{}", m.recipe, m.version),
            why: format!("the pulled version does not verify: {p}"),
        });
    }
    staging
        .publish_as(make_current)
        .map_err(OciError::io(format!(
            "publishing {}@{}",
            m.recipe, m.version
        )))?;
    Ok(())
}

/// Publishes the iPXE binaries an artifact carries, if `out/` lacks their version.
fn pull_ipxe(registry: &Registry, out: &Path, m: &ImageManifest) -> Result<(), OciError> {
    let layers: Vec<&Descriptor> = m
        .layers
        .iter()
        .filter(|d| d.annotations.contains_key(IPXE))
        .collect();
    let Some(version) = layers.first().map(|d| d.annotations[IPXE].clone()) else {
        return Ok(());
    };
    if !layout::valid_version(&version) || layers.iter().any(|d| d.annotations[IPXE] != version) {
        return Err(OciError::Content {
            what: "the artifact's iPXE binaries".into(),
            why: "their version is not one name a folder can have".into(),
        });
    }
    if out.join(IPXE_DIR).join(&version).is_dir() {
        return Ok(());
    }
    let staging = Staging::new(out, IPXE_DIR, &version).map_err(OciError::io(
        "starting a staging folder beside the published root",
    ))?;
    let dir = staging.version_dir();
    let mut sums = String::new();
    for d in layers {
        let name = d.title().unwrap_or_default();
        if !layout::valid_version(name)
            || !matches!(name.rsplit_once('.'), Some((_, "efi" | "kpxe")))
        {
            return Err(OciError::Content {
                what: format!("iPXE layer {}", d.digest),
                why: format!("{name:?} is not an iPXE binary's file name"),
            });
        }
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path)
            .map_err(OciError::io(format!("creating {}", path.display())))?;
        read_checked(registry.blob(d)?, d, &mut f)?;
        f.sync_all()
            .map_err(OciError::io(format!("writing {}", path.display())))?;
        sums.push_str(&format!("{}  {name}\n", d.sha256().unwrap_or_default()));
    }
    std::fs::write(dir.join(SHA256SUMS), sums).map_err(OciError::io("writing SHA256SUMS"))?;
    staging
        .publish_as(false)
        .map_err(OciError::io(format!("publishing iPXE {version}")))?;
    Ok(())
}
