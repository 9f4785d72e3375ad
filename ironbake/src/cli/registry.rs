//! `push`: a published version to an OCI registry, for boot servers to `sync` from.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::Global;
use crate::publish;

/// `push RECIPE[@VERSION] REGISTRY/REPO[:TAG]`.
#[derive(Debug, Args)]
pub struct Push {
    /// RECIPE (its current version) or RECIPE@VERSION.
    #[arg(value_name = "recipe[@version]")]
    version: String,
    /// The repository, REGISTRY/REPO[:TAG]. The version is tagged with its own name, and
    /// with TAG too (default latest: what `sync` points `current` at).
    #[arg(value_name = "registry/repo[:tag]")]
    to: String,
    /// Tag only the version's own name (leave TAG, and latest, where they point).
    #[arg(long)]
    no_tag: bool,
    /// How to reach the registry.
    #[command(flatten)]
    registry: netboot::cli::RegistryArgs,
}

impl Push {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        let paths = global.paths()?;
        let p = publish::find(&paths.out, &self.version)?;
        let source = self.registry.source(&self.to, std::time::Duration::ZERO)?;
        let registry = netboot::oci::Registry::connect(
            &source.reference,
            &source.auth,
            source.insecure,
            netboot::oci::Access::Push,
        )?;
        let tags: Vec<String> = if self.no_tag {
            Vec::new()
        } else {
            vec![
                source
                    .reference
                    .tag
                    .clone()
                    .unwrap_or_else(|| netboot::oci::DEFAULT_TAG.into()),
            ]
        };
        let started = std::time::Instant::now();
        let report = netboot::oci::push(
            &registry,
            &paths.out,
            &p.recipe,
            &p.version,
            &tags,
            &mut |line| println!("{line}"),
        )
        .with_context(|| format!("pushing {p} to {}", source.reference))?;
        println!(
            "pushed {p} to {}/{} in {:.1} s: {} blobs sent ({:.1} MB), {} already there",
            source.reference.registry,
            source.reference.repository,
            started.elapsed().as_secs_f64(),
            report.uploaded.0,
            report.uploaded.1 as f64 / 1e6,
            report.present
        );
        println!("  {}", report.digest);
        println!("  tags: {}", report.tags.join(", "));
        Ok(ExitCode::SUCCESS)
    }
}
