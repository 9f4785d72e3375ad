//! A version's manifest (every input and every output, with digests) and its `SHA256SUMS`.

use std::path::Path;

use anyhow::Result;
use netboot::layout::{self, Manifest};

use super::digest::{BUILDER_SHA256, builder_version};
use super::emit::{Known, write_synced};
use super::prepare::Prepared;
use super::{BASE_LAYER, OVERLAY_LAYER};
use crate::base::Base;
use crate::digest::sha256_hex;
use crate::plan::Plan;
use crate::recipe::Output;

/// Lists and hashes the files in `vdir` (taking digests in `known` as they are) and writes
/// `manifest.json` and `SHA256SUMS` beside them.
pub fn write(
    p: &Prepared,
    plan: &Plan,
    base: &Base,
    vdir: &Path,
    known: &Known,
) -> Result<Manifest> {
    let mut outputs = Vec::new();
    for path in layout::list_files(vdir)? {
        let (sha256, size) = match known.get(&path) {
            Some(d) => d.clone(),
            None => layout::sha256_file(&vdir.join(&path))?,
        };
        outputs.push(layout::OutputRecord { path, size, sha256 });
    }
    let manifest = describe(p, plan, base, outputs)?;
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    write_synced(&vdir.join(layout::MANIFEST), &json)?;
    let sums = layout::sha256sums_text(&manifest.outputs, &sha256_hex(&json));
    write_synced(&vdir.join(layout::SHA256SUMS), sums.as_bytes())?;
    Ok(manifest)
}

/// The manifest of a version with these outputs.
fn describe(
    p: &Prepared,
    plan: &Plan,
    base: &Base,
    outputs: Vec<layout::OutputRecord>,
) -> Result<Manifest> {
    let spec = &p.base_spec;
    Ok(Manifest {
        schema: layout::SCHEMA,
        recipe: p.name.clone(),
        version: p.version.clone(),
        inputs_sha256: p.inputs_sha256.clone(),
        builder: builder_version(),
        builder_sha256: Some(BUILDER_SHA256.to_string()),
        source_date_epoch: p.epoch,
        recipe_file: layout::FileDigest {
            path: format!("recipes/{}.toml", p.name),
            sha256: p.recipe_sha.clone(),
        },
        debian: layout::DebianInputs {
            suite: spec.suite.clone(),
            variant: spec.variant.clone(),
            base_sha256: base.info.key.clone(),
            sources: spec
                .sources
                .iter()
                .map(|s| layout::SourceRecord {
                    origin: s.origin.clone(),
                    uri: s.uri.clone(),
                    suite: s.suite.clone(),
                    components: s.components.clone(),
                    release_sha256: s.release_sha256.clone(),
                    key_sha256: s.key.as_ref().map(|k| k.1.clone()),
                })
                .collect(),
        },
        left_out: p.left_out.clone(),
        overlays: p
            .overlays
            .iter()
            .map(|o| layout::OverlayInput {
                name: o.name.clone(),
                sha256: o.sha256.clone(),
            })
            .collect(),
        artifacts: p.fetched.iter().map(artifact_record).collect(),
        kernel: layout::KernelRecord {
            package: p.kernel_package.clone(),
            release: base.info.kernel_release.clone(),
            cmdline: plan.cmdline.clone(),
        },
        layers: if p.recipe.outputs.contains(&Output::Rootfs) {
            vec![BASE_LAYER.into(), OVERLAY_LAYER.into()]
        } else {
            vec![]
        },
        packages: base.info.packages.clone(),
        outputs,
        node_template_modes: plan
            .node_templates
            .values()
            .filter(|t| t.mode != 0o644)
            .map(|t| (t.dest.clone(), format!("{:04o}", t.mode)))
            .collect(),
        variables: p
            .recipe
            .variables
            .iter()
            .map(|(k, v)| Ok((k.to_string(), serde_json::to_value(v)?)))
            .collect::<Result<_>>()?,
    })
}

fn artifact_record(a: &crate::plan::FetchedArtifact) -> layout::ArtifactRecord {
    use crate::overlay::ArtifactDigest;
    layout::ArtifactRecord {
        overlay: a.overlay.clone(),
        name: a.spec.name.clone(),
        url: a.spec.url.to_string(),
        sha256_url: match &a.spec.digest {
            ArtifactDigest::FromList(u) => Some(u.to_string()),
            ArtifactDigest::Pinned(_) => None,
        },
        sha256: a.sha256.clone(),
        dest: a.spec.dest.to_string(),
    }
}
