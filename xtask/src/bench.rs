//! `cargo xtask bench`: figures measured against the anchor tools in the same run, printed and
//! appended to BENCHMARKS.md.
//!
//! `build`: for each recipe, (1) the anchor: the same mmdebstrap command the pipeline runs and
//! the same mksquashfs command, by hand; (2) a cold `build` (empty cache and out/); (3) a
//! rebuild after editing one overlay file. The ratios are the figures to trust; seconds vary
//! with the mirror and the machine.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::base::{self, BaseSpec};
use crate::cli::project_root;
use crate::pipeline::{self, Paths};
use crate::progress::Progress;
use crate::{host, recipe};

/// What a benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Cold build vs mmdebstrap + mksquashfs by hand; rebuild after an overlay edit; sizes.
    Build,
    /// initrd.img size vs Debian's mkinitramfs; kernel start to ready under QEMU, by stage.
    Initramfs,
    /// The boot server: TFTP vs tftpd-hpa and dnsmasq, HTTP vs nginx, a 100-node boot storm.
    Serve,
    /// Power-on to ready for ci-node through the whole PXE chain under QEMU, by stage.
    Boot,
    /// A disk image: write time vs sgdisk + mkfs.fat + mtools + dd, sizes, and power-on to
    /// ready from disk vs PXE.
    Disk,
}

struct Row {
    recipe: String,
    anchor_s: f64,
    cold_s: f64,
    rebuild_s: f64,
    base_mb: f64,
    overlay_kb: f64,
    anchor_mb: f64,
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(from) {
        let e = e?;
        let rel = e.path().strip_prefix(from).expect("under from");
        let dest = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dest)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path())?, &dest)?;
        } else {
            fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// A private copy of the project's recipes, overlays and inventory, so edits stay there.
pub fn copy_project(to: &Path) -> Result<()> {
    let root = project_root();
    for d in ["recipes", "overlays"] {
        copy_tree(&root.join(d), &to.join(d))?;
    }
    fs::copy(root.join("inventory.toml"), to.join("inventory.toml"))?;
    Ok(())
}

fn bench_recipe(work: &Path, name: &str, without: &[String], progress: &Progress) -> Result<Row> {
    let project = work.join(format!("{name}-project"));
    copy_project(&project)?;
    let paths = Paths {
        project: project.clone(),
        out: work.join(format!("{name}-out")),
        cache: work.join(format!("{name}-cache")),
        etc_apt: "/etc/apt".into(),
    };

    // Cold build first: it resolves the same BaseSpec the anchor then runs by hand.
    let t = Instant::now();
    // An overlay left out of every build is left out only where the recipe has it.
    let (recipe, _) = recipe::load(&project, name)?;
    let options = pipeline::BuildOptions {
        without: without
            .iter()
            .filter(|w| recipe.overlays.contains(w))
            .cloned()
            .collect(),
    };
    let built = pipeline::build_with(&paths, name, &options, progress)?;
    let cold_s = t.elapsed().as_secs_f64();
    if built.base_cached {
        bail!("the cold build found a cached base: the cache was not empty");
    }
    let info_dir = fs::read_dir(base::cache_root(&paths.cache))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("info.json").is_file())
        .context("the cold build left no base")?;
    let key = info_dir
        .file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned();
    let spec = cached_spec(&info_dir, &key)?;

    // The anchor: the very same mmdebstrap command, then mksquashfs with the same flags.
    let anchor = work.join(format!("{name}-anchor"));
    fs::create_dir_all(&anchor)?;
    let rootfs = anchor.join("rootfs");
    let t = Instant::now();
    let stage = progress.stage(&format!("anchor: mmdebstrap + mksquashfs by hand ({name})"));
    let sink = |l: &str| stage.line(l);
    base::mmdebstrap_command(&spec, &[], &anchor, &rootfs)?.run(Some(&sink))?;
    let sq = anchor.join("rootfs.squashfs");
    base::mksquashfs(&rootfs, &sq, &spec.squashfs, spec.epoch, &[], &stage)?;
    stage.done("");
    let anchor_s = t.elapsed().as_secs_f64();
    let anchor_mb = fs::metadata(&sq)?.len() as f64 / 1e6;
    let _ = fs::remove_dir_all(&rootfs);

    // Rebuild after editing one overlay file.
    let ov = built
        .manifest
        .overlays
        .last()
        .context("the recipe has no overlay to edit")?
        .name
        .clone();
    let victim = walkdir::WalkDir::new(project.join("overlays").join(&ov))
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_type().is_file() && e.path().components().any(|c| c.as_os_str() == "files")
        })
        .with_context(|| format!("overlay {ov} has no file under files/ to edit"))?;
    let mut text = fs::read_to_string(victim.path())?;
    text.push_str("\n# edited by cargo xtask bench build\n");
    fs::write(victim.path(), text)?;
    let t = Instant::now();
    let rebuilt = pipeline::build_with(&paths, name, &options, progress)?;
    let rebuild_s = t.elapsed().as_secs_f64();
    if !rebuilt.base_cached || rebuilt.already_published {
        bail!("the rebuild did not reuse the package layer, or built nothing");
    }
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
        base_mb: size(pipeline::BASE_LAYER) / 1e6,
        overlay_kb: size(pipeline::OVERLAY_LAYER) / 1e3,
        anchor_mb,
    })
}

/// The inputs of a cached base, as the build recorded them.
fn cached_spec(base_dir: &Path, key: &str) -> Result<BaseSpec> {
    let path = base_dir.join("spec.json");
    let spec: BaseSpec = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    if spec.key() != key {
        bail!("{} does not match its cache key", path.display());
    }
    Ok(spec)
}

/// The machine, for benchmark records: cores, CPU model, memory.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {mem} GiB")
}

/// Runs a benchmark binary of qemu-tests (the VM harness depends on this crate, so it cannot
/// be called directly), with `--no-record` unless `record`.
fn run_harness(bin: &str, args: &[&str], record: bool) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(project_root())
        .args(["run", "--quiet", "-p", "qemu-tests", "--bin", bin, "--"])
        .args(args);
    if !record {
        cmd.arg("--no-record");
    }
    let status = cmd.status().with_context(|| format!("running {bin}"))?;
    if !status.success() {
        bail!("{bin} failed");
    }
    Ok(())
}

/// Runs a benchmark, prints it, and appends it to BENCHMARKS.md if `record`.
pub fn run(what: What, recipes: &[String], without: &[String], record: bool) -> Result<()> {
    if what == What::Serve {
        let progress = Progress::new(false);
        host::ensure(
            &[host::BUILD, host::TEST, host::BENCH_SERVE].concat(),
            &progress,
        )?;
        // The server is measured as users run it: a release build.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(&cargo)
            .current_dir(project_root())
            .args(["build", "--release", "--quiet", "-p", "netboot"])
            .status()
            .context("building netboot (release)")?;
        if !status.success() {
            bail!("building netboot (release) failed");
        }
        return run_harness("serve-bench", &[], record);
    }
    if what == What::Disk {
        let progress = Progress::new(false);
        host::ensure(
            &[host::BUILD, host::TEST, host::BENCH_DISK].concat(),
            &progress,
        )?;
        return run_harness("vm-bench", &["disk"], record);
    }
    if what == What::Initramfs || what == What::Boot {
        let mode = if what == What::Boot {
            "boot"
        } else {
            "initramfs"
        };
        return run_harness("vm-bench", &[mode], record);
    }
    let progress = Progress::new(false);
    host::ensure(host::BUILD, &progress)?;
    pipeline::require_root()?;
    let recipes: Vec<String> = if recipes.is_empty() {
        vec!["ci-node".into(), "core-node".into()]
    } else {
        recipes.to_vec()
    };
    for r in &recipes {
        recipe::load(&project_root(), r)?;
    }
    let work: PathBuf = project_root().join("target").join("bench-build");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let mut rows = Vec::new();
    for r in &recipes {
        rows.push(bench_recipe(&work, r, without, &progress)?);
    }
    let _ = fs::remove_dir_all(&work);
    let mut md = String::new();
    let _ = writeln!(md, "\n### build, {} (`cargo xtask bench build`)\n", today());
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
        "| recipe | anchor (s) | cold build (s) | cold / anchor | rebuild after overlay edit (s) | rebuild / cold | base.squashfs (MB) | overlay.squashfs (kB) | anchor squashfs (MB) |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1}% | {:.1} | {:.1} | {:.1} |",
            r.recipe,
            r.anchor_s,
            r.cold_s,
            r.cold_s / r.anchor_s,
            r.rebuild_s,
            100.0 * r.rebuild_s / r.cold_s,
            r.base_mb,
            r.overlay_kb,
            r.anchor_mb
        );
    }
    print!("{md}");
    if record {
        append_record(&md)?;
    }
    Ok(())
}

/// Appends a section to BENCHMARKS.md.
pub fn append_record(md: &str) -> Result<()> {
    let path = project_root().join("BENCHMARKS.md");
    let mut text = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    text.push_str(md);
    fs::write(&path, text)?;
    println!("appended to {}", path.display());
    Ok(())
}

/// Today's date (UTC), for benchmark records.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = crate::apt::civil_from_days((secs / 86400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}
