//! `serve`: the boot server (`netboot serve`) on the project's `out/` and inventory.

use std::process::ExitCode;

use anyhow::Result;

use super::Global;

/// Runs `netboot serve` with relative `--root` and `--inventory` taken inside the project
/// (when there is one: outside a project they stay relative to the current folder).
pub(super) fn run(mut args: netboot::cli::ServeArgs, global: &Global) -> Result<ExitCode> {
    if let Ok(paths) = global.paths() {
        args.root = match &global.out {
            Some(_) if args.root == std::path::Path::new("out") => paths.out.clone(),
            _ => paths.in_project_dir(&args.root),
        };
        args.inventory = paths.in_project_dir(&args.inventory);
    }
    args.run().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}
