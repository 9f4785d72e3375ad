//! `build`, `list` and `verify`: making versions and looking at what is published.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use netboot::layout::{self, Manifest};

use super::{Global, mb};
use crate::build::{self, BuildOptions};
use crate::progress::Progress;
use crate::{host, overlay, publish, recipe};

/// `build RECIPE`.
#[derive(Debug, Args)]
pub struct Build {
    /// The recipe (recipes/NAME.toml).
    #[arg(value_name = "recipe")]
    recipe: String,
    /// Leave one of the recipe's overlays out of this build (repeatable), for example one
    /// whose repository cannot be reached from here. The version and manifest record it.
    #[arg(long, value_name = "overlay")]
    without: Vec<String>,
    /// Print no progress, only the result.
    #[arg(long, short)]
    quiet: bool,
}

impl Build {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        let progress = Progress::new(self.quiet);
        let paths = global.paths()?;
        host::ensure(host::BUILD, &progress)?;
        build::require_root()?;
        let options = BuildOptions {
            without: self.without,
        };
        let built = build::build(&paths, &self.recipe, &options, &progress)?;
        let m = &built.manifest;
        if built.already_published {
            println!(
                "{}@{} is already published (same inputs); current -> {}",
                m.recipe, m.version, m.version
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "published {}@{} in {:.1} s",
            m.recipe,
            m.version,
            progress.elapsed().as_secs_f64()
        );
        println!("  {}", built.dir.display());
        print_summary(m);
        println!("  time per stage:");
        for (stage, t) in progress.times() {
            println!("    {:>6.1} s  {stage}", t.as_secs_f64());
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The outputs of a new version, its node templates, packages and kernel, and what was left
/// out.
fn print_summary(m: &Manifest) {
    let is_template = |p: &str| p.starts_with(overlay::NODE_TEMPLATES_DIR);
    for o in m.outputs.iter().filter(|o| !is_template(&o.path)) {
        println!(
            "  {:<18} {:>10}  sha256:{}",
            o.path,
            mb(o.size),
            &o.sha256[..16]
        );
    }
    let templates = m.outputs.iter().filter(|o| is_template(&o.path)).count();
    println!(
        "  {templates} node templates, {} packages, kernel {} ({})",
        m.packages.len(),
        m.kernel.release,
        m.kernel.package
    );
    if !m.left_out.is_empty() {
        println!(
            "  left out, as asked: {} (the recipe's other overlays are in)",
            m.left_out.join(", ")
        );
    }
}

/// `list`.
#[derive(Debug, Args)]
pub struct List {}

impl List {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        let paths = global.paths()?;
        let published = layout::list_published(&paths.out)?;
        for name in recipe::list(&paths.project)? {
            let desc = recipe::load(&paths.project, &name)
                .map(|(r, _)| r.description)
                .unwrap_or_else(|e| format!("(invalid: {e:#})"));
            println!("{name}  {desc}");
            let Some(p) = published
                .iter()
                .find(|p| p.recipe == name && !p.versions.is_empty())
            else {
                println!("    (not published)");
                continue;
            };
            for v in &p.versions {
                let cur = if p.current.as_deref() == Some(v) {
                    "  <- current"
                } else {
                    ""
                };
                let size = layout::load_manifest(&paths.out.join(&name).join(v))
                    .map(|m| mb(m.outputs.iter().map(|o| o.size).sum()))
                    .unwrap_or_else(|e| format!("unreadable manifest: {e}"));
                println!("    {v}  {size}{cur}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `verify RECIPE[@VERSION]`.
#[derive(Debug, Args)]
pub struct Verify {
    /// RECIPE (its current version) or RECIPE@VERSION.
    #[arg(value_name = "recipe[@version]")]
    target: String,
}

impl Verify {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        let paths = global.paths()?;
        let p = publish::find(&paths.out, &self.target)?;
        let (m, problems) = layout::verify(&p.dir)?;
        if problems.is_empty() {
            println!(
                "{p}: intact ({} files, {})",
                m.outputs.len() + 2,
                mb(m.outputs.iter().map(|o| o.size).sum())
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!("{p}: {} problem(s)", problems.len());
        for problem in &problems {
            println!("  {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}
