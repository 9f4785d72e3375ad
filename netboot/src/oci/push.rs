//! `push`: one published version, and the iPXE binaries beside it, to a registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    ARTIFACT_TYPE, CONFIG_TYPE, Descriptor, FILE_TYPE, IPXE, ImageManifest, MANIFEST_TYPE,
    OciError, Registry, TITLE, rfc3339, version_tag,
};
use crate::layout::{self, CURRENT, MANIFEST, SHA256SUMS};

/// The published folder of the iPXE binaries, under `out/`.
const IPXE_DIR: &str = "ipxe";

/// What a push did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Blobs sent, and their bytes.
    pub uploaded: (usize, u64),
    /// Blobs the registry had already.
    pub present: usize,
    /// The manifest's digest.
    pub digest: String,
    /// The tags that point at it.
    pub tags: Vec<String>,
}

/// What is pushed for one version: the image manifest's bytes, and each blob (config first)
/// with the local file that holds it.
#[derive(Debug)]
pub struct LocalArtifact {
    /// The image manifest, serialized.
    pub manifest: Vec<u8>,
    /// The config, then the layers.
    pub blobs: Vec<(Descriptor, PathBuf)>,
}

/// The artifact of `out/RECIPE/VERSION`. The version is checked first: a damaged one is
/// never pushed.
pub fn artifact_of(out: &Path, recipe: &str, version: &str) -> Result<LocalArtifact, OciError> {
    let dir = out.join(recipe).join(version);
    let (m, problems) = layout::verify(&dir)?;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(OciError::Version(format!(
            "{recipe}@{version} is damaged ({}); rebuild it rather than push it",
            list.join("; ")
        )));
    }
    let mut blobs = Vec::new();
    let (config_sha, config_size) = layout::sha256_file(&dir.join(MANIFEST))?;
    let config = Descriptor {
        media_type: CONFIG_TYPE.into(),
        digest: format!("sha256:{config_sha}"),
        size: config_size,
        annotations: BTreeMap::new(),
    };
    blobs.push((config.clone(), dir.join(MANIFEST)));
    let file = |path: &Path, title: &str, sha: &str, size: u64, ipxe: Option<&str>| {
        let mut annotations = BTreeMap::from([(TITLE.to_string(), title.to_string())]);
        if let Some(v) = ipxe {
            annotations.insert(IPXE.into(), v.into());
        }
        (
            Descriptor {
                media_type: FILE_TYPE.into(),
                digest: format!("sha256:{sha}"),
                size,
                annotations,
            },
            path.to_path_buf(),
        )
    };
    for o in &m.outputs {
        blobs.push(file(&dir.join(&o.path), &o.path, &o.sha256, o.size, None));
    }
    let (sums_sha, sums_size) = layout::sha256_file(&dir.join(SHA256SUMS))?;
    blobs.push(file(
        &dir.join(SHA256SUMS),
        SHA256SUMS,
        &sums_sha,
        sums_size,
        None,
    ));
    blobs[1..].sort_by(|a, b| a.0.title().cmp(&b.0.title()));
    // The iPXE binaries the build published, so that a server filled by `sync` boots nodes
    // from its `out/` alone; checked against their own SHA256SUMS.
    let ipxe = out.join(IPXE_DIR);
    if let Some(v) = layout::read_current(&ipxe)? {
        let vdir = ipxe.join(&v);
        let sums = std::fs::read_to_string(vdir.join(SHA256SUMS)).map_err(OciError::io(
            format!("reading {}/{SHA256SUMS}", vdir.display()),
        ))?;
        for line in sums.lines() {
            let (want, name) = line.split_once("  ").ok_or_else(|| {
                OciError::Version(format!(
                    "{}/{SHA256SUMS}: {line:?} is not `DIGEST  NAME`",
                    vdir.display()
                ))
            })?;
            let (sha, size) = layout::sha256_file(&vdir.join(name))?;
            if sha != want {
                return Err(OciError::Version(format!(
                    "{}/{name} does not match its SHA256SUMS: publish iPXE again with a build",
                    vdir.display()
                )));
            }
            blobs.push(file(&vdir.join(name), name, &sha, size, Some(&v)));
        }
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE.into(),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config,
        layers: blobs[1..].iter().map(|(d, _)| d.clone()).collect(),
        annotations: BTreeMap::from([
            ("org.opencontainers.image.version".into(), version.into()),
            (
                "org.opencontainers.image.created".into(),
                rfc3339(m.source_date_epoch),
            ),
            ("dev.ironbake.recipe".into(), recipe.into()),
        ]),
    };
    Ok(LocalArtifact {
        manifest: serde_json::to_vec(&manifest).expect("a manifest serializes"),
        blobs,
    })
}

/// Pushes `out/RECIPE/VERSION` under its version's tag and each of `tags`; blobs the
/// registry holds already are not sent again. `progress` hears each step in words.
pub fn push(
    registry: &Registry,
    out: &Path,
    recipe: &str,
    version: &str,
    tags: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<PushReport, OciError> {
    if !layout::valid_name(recipe) || !layout::valid_version(version) || version == CURRENT {
        return Err(OciError::Version(format!(
            "{recipe}@{version} is not RECIPE@VERSION"
        )));
    }
    let LocalArtifact { manifest, blobs } = artifact_of(out, recipe, version)?;
    let mut report = PushReport::default();
    let mut seen = std::collections::BTreeSet::new();
    for (d, path) in &blobs {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        let name = d.title().unwrap_or(MANIFEST);
        if registry.has_blob(&d.digest)? {
            report.present += 1;
            continue;
        }
        if d.size >= 64 << 20 {
            progress(&format!("sending {name} ({})...", human(d.size)));
        }
        let started = std::time::Instant::now();
        let f = std::fs::File::open(path)
            .map_err(OciError::io(format!("opening {}", path.display())))?;
        registry.put_blob(&d.digest, &f)?;
        report.uploaded.0 += 1;
        report.uploaded.1 += d.size;
        progress(&format!(
            "  sent {name} ({}, {:.1} s)",
            human(d.size),
            started.elapsed().as_secs_f64()
        ));
    }
    let mut all_tags = vec![version_tag(version)];
    all_tags.extend(tags.iter().filter(|t| **t != version_tag(version)).cloned());
    let digest = format!(
        "sha256:{}",
        layout::sha256_reader(&manifest[..]).expect("in memory").0
    );
    for tag in &all_tags {
        if registry.tag_digest(tag)?.as_deref() != Some(digest.as_str()) {
            registry.put_manifest(tag, &manifest)?;
            progress(&format!("tagged {tag}"));
        }
    }
    report.digest = digest;
    report.tags = all_tags;
    Ok(report)
}

/// A size in words: `812 B`, `4.0 MiB`.
pub(crate) fn human(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}
