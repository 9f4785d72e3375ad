//! `cargo xtask bench build`: for each recipe, (1) a cold `build` (empty cache and out/);
//! (2) the anchor: the very mmdebstrap command the build ran and the same mksquashfs
//! command, by hand; (3) rebuilds after editing one overlay file (three edits, the median,
//! with its stage times). The ratios are the figures to trust; seconds vary with the mirror
//! and the machine.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ironbake::base::{self, BaseSpec};
use ironbake::progress::Progress;
use ironbake::{BuildOptions, Built, Paths, recipe};
use qemu_tests::report::{Figure, Report, machine};

/// The goal for a cold build against the anchor.
const COLD_GOAL: f64 = 1.15;
/// The goal for a rebuild after an overlay edit, as a share of the cold build.
const REBUILD_GOAL: f64 = 0.02;
/// Rebuilds measured per recipe (each after its own edit); the median is the figure.
const REBUILDS: usize = 3;

/// One recipe's figures.
struct Row {
    recipe: String,
    anchor_s: f64,
    cold_s: f64,
    rebuild_s: f64,
    /// The median rebuild's stages and their seconds.
    rebuild_stages: Vec<(String, f64)>,
    base_mb: f64,
    overlay_kb: f64,
    anchor_mb: f64,
}

/// Measures `recipes` (default: ci-node and core-node) of the repository at `root`, each in
/// a private copy of the project with empty caches.
pub fn run(
    root: &Path,
    recipes: &[String],
    without: &[String],
    progress: &Progress,
) -> Result<Report> {
    let recipes: Vec<String> = if recipes.is_empty() {
        vec!["ci-node".into(), "core-node".into()]
    } else {
        recipes.to_vec()
    };
    for r in &recipes {
        recipe::load(root, r)?;
    }
    let work: PathBuf = root.join("target").join("bench-build");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let mut rows = Vec::new();
    for r in &recipes {
        rows.push(bench_recipe(root, &work, r, without, progress)?);
    }
    let _ = fs::remove_dir_all(&work);
    Ok(report(&rows, without))
}

fn bench_recipe(
    root: &Path,
    work: &Path,
    name: &str,
    without: &[String],
    progress: &Progress,
) -> Result<Row> {
    let project = work.join(format!("{name}-project"));
    ironbake::project::copy_inputs(root, &project)?;
    let mut paths = Paths::in_project(&project);
    paths.out = work.join(format!("{name}-out"));
    paths.cache = work.join(format!("{name}-cache"));
    // An overlay left out of every build is left out only where the recipe has it.
    let (r, _) = recipe::load(&project, name)?;
    let options = BuildOptions {
        without: without
            .iter()
            .filter(|w| r.overlays.iter().any(|o| o.as_str() == w.as_str()))
            .cloned()
            .collect(),
    };
    // Cold build first: it resolves the same BaseSpec the anchor then runs by hand.
    let t = Instant::now();
    let built = ironbake::build(&paths, name, &options, progress)?;
    let cold_s = t.elapsed().as_secs_f64();
    if built.base_cached {
        bail!("the cold build found a cached base: the cache was not empty");
    }
    let spec = cached_spec(&paths.cache)?;
    let (anchor_s, anchor_mb) =
        anchor(&spec, &work.join(format!("{name}-anchor")), name, progress)?;
    let (rebuild_s, rebuild_stages) = rebuilds(&paths, &project, &built, name, &options)?;
    let size = |p: &str| {
        built
            .manifest
            .outputs
            .iter()
            .find(|o| o.path == p)
            .map_or(0, |o| o.size) as f64
    };
    Ok(Row {
        recipe: name.into(),
        anchor_s,
        cold_s,
        rebuild_s,
        rebuild_stages,
        base_mb: size(ironbake::BASE_LAYER) / 1e6,
        overlay_kb: size(ironbake::OVERLAY_LAYER) / 1e3,
        anchor_mb,
    })
}

/// The inputs of the one base the cold build cached, as it recorded them.
fn cached_spec(cache: &Path) -> Result<BaseSpec> {
    let dir = fs::read_dir(base::cache_root(cache))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("info.json").is_file())
        .context("the cold build left no base")?;
    let key = dir
        .file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned();
    let path = dir.join("spec.json");
    let spec: BaseSpec = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    if spec.key() != key {
        bail!("{} does not match its cache key", path.display());
    }
    Ok(spec)
}

/// The anchor: the very same mmdebstrap command, then mksquashfs with the same flags; its
/// seconds and the squashfs's MB.
fn anchor(spec: &BaseSpec, dir: &Path, name: &str, progress: &Progress) -> Result<(f64, f64)> {
    fs::create_dir_all(dir)?;
    let rootfs = dir.join("rootfs");
    let t = Instant::now();
    let stage = progress.stage(&format!("anchor: mmdebstrap + mksquashfs by hand ({name})"));
    let sink = |l: &str| stage.line(l);
    base::mmdebstrap_command(spec, &[], dir, &rootfs)?.run(Some(&sink))?;
    let sq = dir.join("rootfs.squashfs");
    base::mksquashfs(&rootfs, &sq, &spec.squashfs, spec.epoch, &[], &stage)?;
    stage.done("");
    let secs = t.elapsed().as_secs_f64();
    let mb = fs::metadata(&sq)?.len() as f64 / 1e6;
    base::remove_tree(&rootfs)?;
    Ok((secs, mb))
}

/// [`REBUILDS`] rebuilds, each after editing one file of the recipe's last overlay again;
/// the median's seconds and its stages (each rebuild runs with a quiet display of its own, so
/// that its stage times are its alone).
fn rebuilds(
    paths: &Paths,
    project: &Path,
    built: &Built,
    name: &str,
    options: &BuildOptions,
) -> Result<(f64, Vec<(String, f64)>)> {
    let ov = &built
        .manifest
        .overlays
        .last()
        .context("the recipe has no overlay to edit")?
        .name;
    let victim = walkdir::WalkDir::new(project.join("overlays").join(ov))
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_type().is_file() && e.path().components().any(|c| c.as_os_str() == "files")
        })
        .with_context(|| format!("overlay {ov} has no file under files/ to edit"))?;
    let mut runs = Vec::new();
    for i in 0..REBUILDS {
        let mut text = fs::read_to_string(victim.path())?;
        text.push_str(&format!(
            "\n# edited by cargo xtask bench build ({})\n",
            i + 1
        ));
        fs::write(victim.path(), text)?;
        let quiet = Progress::new(true);
        let t = Instant::now();
        let rebuilt = ironbake::build(paths, name, options, &quiet)?;
        let secs = t.elapsed().as_secs_f64();
        if !rebuilt.base_cached || rebuilt.already_published {
            bail!("the rebuild did not reuse the package layer, or built nothing");
        }
        let stages: Vec<(String, f64)> = quiet
            .times()
            .into_iter()
            .map(|(n, d)| (n, d.as_secs_f64()))
            .collect();
        eprintln!("{name}: rebuild {} of {REBUILDS}: {secs:.2} s", i + 1);
        runs.push((secs, stages));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs.swap_remove(REBUILDS / 2))
}

fn report(rows: &[Row], without: &[String]) -> Report {
    let mut md = String::new();
    let how = if without.is_empty() {
        String::new()
    } else {
        format!(" --without {}", without.join(" --without "))
    };
    let _ = writeln!(
        md,
        "### build, {} (`cargo xtask bench build{how}`)\n",
        qemu_tests::report::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. Anchor: the same mmdebstrap command + mksquashfs with the same flags, by \
         hand, in the same run, after the cold build (so the anchor, not ironbake, gets any warm \
         mirror cache). The anchor's squashfs keeps the kernel inside; ironbake publishes it \
         beside.\n",
        machine()
    );
    let _ = writeln!(
        md,
        "| recipe | anchor (s) | cold build (s) | cold / anchor | rebuild after overlay edit (s, \
         median of {REBUILDS}) | rebuild / cold | base.squashfs (MB) | overlay.squashfs (kB) | anchor squashfs (MB) |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut figures = Vec::new();
    for r in rows {
        let (cold, rebuild) = (r.cold_s / r.anchor_s, r.rebuild_s / r.cold_s);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {cold:.2} | {:.2} | {:.1}% | {:.1} | {:.1} | {:.1} |",
            r.recipe,
            r.anchor_s,
            r.cold_s,
            r.rebuild_s,
            100.0 * rebuild,
            r.base_mb,
            r.overlay_kb,
            r.anchor_mb
        );
        figures.push(Figure::goal(
            format!("{}: cold build / anchor", r.recipe),
            "at most 1.15x",
            format!("{cold:.2}x"),
            cold <= COLD_GOAL,
        ));
        figures.push(Figure::goal(
            format!("{}: rebuild after an overlay edit / cold build", r.recipe),
            &format!("under {:.0}%", 100.0 * REBUILD_GOAL),
            format!("{:.1}%", 100.0 * rebuild),
            rebuild < REBUILD_GOAL,
        ));
    }
    for r in rows {
        let _ = writeln!(
            md,
            "\n{}: the median rebuild's stages, as its progress display timed them:\n",
            r.recipe
        );
        let _ = writeln!(md, "| stage | s |\n| --- | ---: |");
        for (stage, secs) in &r.rebuild_stages {
            let _ = writeln!(md, "| {stage} | {secs:.2} |");
        }
        let listed: f64 = r.rebuild_stages.iter().map(|s| s.1).sum();
        let _ = writeln!(md, "| (not in a stage) | {:.2} |", r.rebuild_s - listed);
    }
    Report::new("build", md, figures)
}
