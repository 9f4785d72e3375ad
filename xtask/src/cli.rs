//! The `cargo xtask` command line: one subcommand per job, each a struct with `run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::pipeline::{self, Paths};
use crate::progress::Progress;
use crate::{bench, host, inventory, recipe};
use netboot::layout;

/// ironbake: golden images for immutable bare-metal nodes.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    version,
    help_expected = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Show debug logs (every command run, every tool line).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Build(Build),
    List(List),
    Verify(Verify),
    Setup(Setup),
    Test(Test),
    Bench(Bench),
    Boot(BootVms),
    /// Run the boot server on what is published (the same as `netboot serve`; relative
    /// --root and --inventory are taken from the project folder).
    Serve(Box<netboot::cli::ServeArgs>),
    #[command(subcommand)]
    Inventory(InventoryCommand),
    #[command(subcommand)]
    Disk(DiskCommand),
}

/// Disk images and disks (a recipe with the "disk" output).
#[derive(Debug, Subcommand)]
enum DiskCommand {
    /// Write a published version into the inactive slot of a disk image or disk and make it
    /// the next boot; systemd-boot falls back to the other slot if it does not come up.
    Update(DiskUpdate),
    /// Write a published version's whole disk image onto a disk (everything on it is lost);
    /// refuses a partition, a mounted or system disk, swap, a disk held by LVM or RAID.
    Flash(DiskFlash),
}

/// `disk flash RECIPE[@VERSION] DEVICE`.
#[derive(Debug, Args)]
struct DiskFlash {
    /// The version to write: RECIPE (its current version) or RECIPE@VERSION.
    #[arg(value_name = "recipe[@version]")]
    version: String,
    /// The whole disk's block device (`/dev/sdb`, `/dev/disk/by-id/...`).
    #[arg(value_name = "device")]
    device: PathBuf,
    /// Do not ask: the disk's contents are lost.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    node: NodeChoice,
    #[command(flatten)]
    at: Locations,
}

/// Which node a disk belongs to: its settings (hostname, templates, SSH host key) go onto
/// the ESP, as the boot server would send them.
#[derive(Debug, Args)]
struct NodeChoice {
    /// The inventory node this disk is for (its settings are written onto the disk).
    #[arg(long, value_name = "name")]
    node: Option<String>,
    /// The inventory (relative to the project folder).
    #[arg(long, value_name = "file", default_value = "inventory.toml")]
    inventory: PathBuf,
    /// The boot server's state folder: the node keeps the machine-id and SSH host key it has
    /// there (and gets new ones kept there).
    #[arg(long, value_name = "dir")]
    state: Option<PathBuf>,
}

impl NodeChoice {
    /// The node's settings archive for `recipe`@`version`, when a node is named.
    fn settings(&self, paths: &Paths, recipe: &str, version: &str) -> Result<Option<Vec<u8>>> {
        let Some(name) = &self.node else {
            return Ok(None);
        };
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                paths.project.join(p)
            }
        };
        let nodes = netboot::nodes::Inventories::load(
            &abs(&self.inventory),
            self.state.as_deref().map(abs),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = nodes
            .target_named(&paths.out, name, recipe, version)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let archive = nodes
            .settings_alone(&t)
            .map_err(|e| anyhow::anyhow!("settings of node {name}: {e}"))?;
        Ok(Some(archive))
    }
}

/// A published version that can go onto a disk: its files present and matching the manifest.
fn disk_version(paths: &Paths, spec: &str) -> Result<(String, String, PathBuf, layout::Manifest)> {
    let (name, version, dir) = published(paths, spec)?;
    let m = layout::load_manifest(&dir)?;
    for f in ["vmlinuz", "initrd.img", "base.squashfs", "overlay.squashfs"] {
        if !dir.join(f).is_file() {
            bail!(
                "{name}@{version} has no {f}: a disk slot needs the kernel, initramfs and rootfs outputs"
            );
        }
    }
    let (_, problems) = layout::verify(&dir)?;
    if !problems.is_empty() {
        bail!(
            "{name}@{version} does not match its manifest ({}); not writing it to a disk",
            problems.len()
        );
    }
    Ok((name, version, dir, m))
}

/// Refuses a block device that is in use (a disk image file passes).
fn refuse_disk_in_use(target: &Path, image_len: u64) -> Result<Option<crate::flash::Disk>> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(target).with_context(|| format!("{}", target.display()))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let k = crate::flash::Kernel::live();
    let name = crate::flash::device_name(&k, target)?;
    let disk = crate::flash::in_use(&k, &name, image_len)
        .map_err(|why| anyhow::anyhow!("not writing to {}: {why}", target.display()))?;
    Ok(Some(disk))
}

impl DiskFlash {
    fn run(self) -> Result<ExitCode> {
        let paths = self.at.paths();
        let (name, version, dir, m) = disk_version(&paths, &self.version)?;
        let image = dir.join(crate::pipeline::disk_image::FILE);
        let digest = m
            .outputs
            .iter()
            .find(|o| o.path == crate::pipeline::disk_image::FILE)
            .map(|o| o.sha256.clone())
            .with_context(|| {
                format!("{name}@{version} has no disk image: add \"disk\" to the recipe's outputs")
            })?;
        let len = std::fs::metadata(&image)
            .with_context(|| format!("{}", image.display()))?
            .len();
        let k = crate::flash::Kernel::live();
        let dev_name = crate::flash::device_name(&k, &self.device)?;
        let disk = crate::flash::in_use(&k, &dev_name, len)
            .map_err(|why| anyhow::anyhow!("not writing to {}: {why}", self.device.display()))?;
        // Render the node's settings before anything is written: a template error or a
        // missing secret stops here, with the disk untouched.
        let settings = self.node.settings(&paths, &name, &version)?;
        let what = format!(
            "/dev/{} ({}{} MiB)",
            disk.name,
            if disk.model.is_empty() {
                String::new()
            } else {
                format!("{}, ", disk.model)
            },
            disk.size >> 20
        );
        if !self.yes {
            use std::io::{BufRead, IsTerminal};
            if !std::io::stdin().is_terminal() {
                bail!("writing {name}@{version} to {what} erases it: add --yes to go ahead");
            }
            eprint!("writing {name}@{version} to {what} erases everything on it; type yes: ");
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if answer.trim() != "yes" {
                bail!("not confirmed; nothing written");
            }
        }
        let progress = Progress::new(false);
        let stage = progress.stage(&format!("flash {name}@{version} to {what}"));
        let f = crate::flash::write(&image, &digest, &self.device, &stage)?;
        stage.done(&format!(
            "{} MiB written in {:.1} s, read back and verified in {:.1} s",
            f.bytes >> 20,
            f.write_s,
            f.verify_s
        ));
        if let Some(archive) = &settings {
            crate::disk::set_node_settings(&self.device, Some(archive), m.source_date_epoch)?;
        }
        if let Err(e) = crate::flash::reread(&self.device) {
            eprintln!("warning: {e}");
        }
        println!(
            "{}: {name}@{version} in slot a{}{}",
            self.device.display(),
            match &self.node.node {
                Some(n) => format!(", settings of node {n} on the ESP"),
                None => ", no node settings (boots as localhost)".into(),
            },
            if disk.size > len {
                format!(
                    "; {} MiB past the image left free for the data partition",
                    (disk.size - len) >> 20
                )
            } else {
                String::new()
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `disk update TARGET RECIPE[@VERSION]`.
#[derive(Debug, Args)]
struct DiskUpdate {
    /// The disk image file, or the disk's block device.
    #[arg(value_name = "image-or-device")]
    target: PathBuf,
    /// The version to write: RECIPE (its current version) or RECIPE@VERSION.
    #[arg(value_name = "recipe[@version]")]
    version: String,
    #[command(flatten)]
    node: NodeChoice,
    #[command(flatten)]
    at: Locations,
}

/// RECIPE or RECIPE@VERSION as a published version folder.
fn published(paths: &pipeline::Paths, spec: &str) -> Result<(String, String, PathBuf)> {
    let (name, version) = match spec.split_once('@') {
        Some((r, v)) => (r.to_string(), v.to_string()),
        None => {
            let v = layout::read_current(&paths.out.join(spec))?.with_context(|| {
                format!(
                    "{spec} has no published current version under {}",
                    paths.out.display()
                )
            })?;
            (spec.to_string(), v)
        }
    };
    let dir = paths.out.join(&name).join(&version);
    if !dir.is_dir() {
        anyhow::bail!(
            "{name}@{version} is not published under {}",
            paths.out.display()
        );
    }
    Ok((name, version, dir))
}

impl DiskUpdate {
    fn run(self) -> Result<ExitCode> {
        let paths = self.at.paths();
        let (name, version, dir, m) = disk_version(&paths, &self.version)?;
        refuse_disk_in_use(&self.target, 0)?;
        let settings = self.node.settings(&paths, &name, &version)?;
        let u = crate::disk::update(&self.target, &dir, &m)?;
        if let Some(archive) = &settings {
            crate::disk::set_node_settings(&self.target, Some(archive), m.source_date_epoch)?;
        }
        println!(
            "{}: {name}@{version} written to slot {}; next boot: EFI/Linux/{} ({} tries to come up, else the other slot){}{}",
            self.target.display(),
            u.slot,
            u.entry,
            crate::disk::TRIES,
            if u.removed.is_empty() {
                String::new()
            } else {
                format!("; replaced {}", u.removed.join(", "))
            },
            match &self.node.node {
                Some(n) => format!("; settings of node {n} rendered from this version"),
                None => String::new(),
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Build a recipe if needed and PXE-boot its inventory nodes in QEMU VMs on a virtual LAN
/// (a router with plain DHCP, the boot server, a bridge), streaming their consoles.
#[derive(Debug, Args)]
struct BootVms {
    /// The recipe (its nodes in inventory.toml are booted).
    #[arg(value_name = "recipe")]
    recipe: String,
    /// How many of the recipe's inventory nodes to boot at once.
    #[arg(long, value_name = "n", default_value_t = 1)]
    nodes: usize,
    /// Exit 0 once every node is ready, non-zero with its last console lines on timeout.
    #[arg(long)]
    check: bool,
    /// With --check: how long to wait for every ready line.
    #[arg(long, value_name = "seconds", default_value_t = 600)]
    timeout: u64,
    /// Boot the recipe's disk image instead of PXE.
    #[arg(long)]
    disk: bool,
    /// Leave one of the recipe's overlays out of the build (as `build --without`).
    #[arg(long, value_name = "overlay")]
    without: Vec<String>,
}

impl BootVms {
    fn run(self) -> Result<ExitCode> {
        host::ensure(&[host::BUILD, host::TEST].concat(), &Progress::new(false))?;
        // The VM harness lives in qemu-tests, which depends on this crate: run its binary.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(project_root())
            .args([
                "run",
                "--quiet",
                "-p",
                "qemu-tests",
                "--bin",
                "vm-boot",
                "--",
            ])
            .arg(&self.recipe)
            .args(["--nodes", &self.nodes.to_string()])
            .args(["--timeout", &self.timeout.to_string()]);
        if self.check {
            cmd.arg("--check");
        }
        if self.disk {
            cmd.arg("--disk");
        }
        for w in &self.without {
            cmd.args(["--without", w]);
        }
        let status = cmd.status().context("running the VM harness")?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => ExitCode::FAILURE,
        })
    }
}

/// Edit the inventory (inventory.toml).
#[derive(Debug, Subcommand)]
enum InventoryCommand {
    /// Make a machine a node: the boot server then boots it as NAME.
    Add(InventoryAdd),
}

/// Add a node to inventory.toml (comments and layout are kept; the result is checked before
/// it is written, and written by rename).
#[derive(Debug, Args)]
struct InventoryAdd {
    /// Its MAC address (as the boot server's /api/v1/discovered lists it).
    #[arg(value_name = "mac")]
    mac: String,
    /// Its name, which is also its hostname.
    #[arg(value_name = "name")]
    name: String,
    /// The recipe it boots (default: the inventory's [defaults] recipe).
    #[arg(long, value_name = "recipe")]
    recipe: Option<String>,
    /// The project folder (inventory.toml).
    #[arg(long, value_name = "dir", env = "IRONBAKE_PROJECT", default_value_os_t = project_root())]
    project: PathBuf,
}

/// Where the project, the published root and the caches are.
#[derive(Debug, Clone, Args)]
pub struct Locations {
    /// The project folder (recipes/, overlays/, inventory.toml).
    #[arg(long, value_name = "dir", env = "IRONBAKE_PROJECT", default_value_os_t = project_root())]
    pub project: PathBuf,
    /// The published root.
    #[arg(long, value_name = "dir", env = "IRONBAKE_OUT", default_value = "out")]
    pub out: PathBuf,
    /// The cache folder (package layers, artifacts).
    #[arg(
        long,
        value_name = "dir",
        env = "IRONBAKE_CACHE",
        default_value = ".cache"
    )]
    pub cache: PathBuf,
}

impl Locations {
    /// Resolves relative paths against the project folder.
    pub fn paths(&self) -> Paths {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                self.project.join(p)
            }
        };
        Paths {
            project: self.project.clone(),
            out: abs(&self.out),
            cache: abs(&self.cache),
            etc_apt: PathBuf::from("/etc/apt"),
        }
    }
}

/// The workspace root, from where this binary was built.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Build a recipe and publish it under out/RECIPE/VERSION.
#[derive(Debug, Args)]
struct Build {
    /// The recipe (recipes/NAME.toml).
    #[arg(value_name = "recipe")]
    recipe: String,
    #[command(flatten)]
    at: Locations,
    /// Leave one of the recipe's overlays out of this build (repeatable), for example one
    /// whose repository cannot be reached from here. The version and manifest record it.
    #[arg(long, value_name = "overlay")]
    without: Vec<String>,
    /// Print no progress, only the result.
    #[arg(long, short)]
    quiet: bool,
}

/// Show recipes and their published versions.
#[derive(Debug, Args)]
struct List {
    #[command(flatten)]
    at: Locations,
}

/// Re-hash a published version and report what differs from its manifest.
#[derive(Debug, Args)]
struct Verify {
    /// RECIPE (its current version) or RECIPE@VERSION.
    #[arg(value_name = "recipe[@version]")]
    target: String,
    #[command(flatten)]
    at: Locations,
}

/// Install the host tools the pipeline and its tests need.
#[derive(Debug, Args)]
struct Setup {}

/// Run every test tier: unit, tool-backed and image builds.
#[derive(Debug, Args)]
struct Test {
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(trailing_var_arg = true, value_name = "args")]
    args: Vec<String>,
}

/// Measure the pipeline against its anchors and append to BENCHMARKS.md.
#[derive(Debug, Args)]
struct Bench {
    /// What to measure.
    #[arg(value_enum, value_name = "what")]
    what: bench::What,
    /// Recipes to measure (default: ci-node and core-node).
    #[arg(long, value_name = "recipe")]
    recipe: Vec<String>,
    /// Leave an overlay out of the measured builds (as `build --without`).
    #[arg(long, value_name = "overlay")]
    without: Vec<String>,
    /// Do not append to BENCHMARKS.md.
    #[arg(long)]
    no_record: bool,
}

/// Sets up logging to stderr: warnings by default, debug with `--verbose`, RUST_LOG wins.
pub fn init_tracing(verbose: bool) {
    let default = if verbose { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

impl Cli {
    /// Does the command set up its own logging (the boot server's event log)?
    pub fn logs_itself(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }

    /// Runs the chosen subcommand.
    pub fn run(self) -> Result<ExitCode> {
        match self.command {
            Command::Build(c) => c.run(),
            Command::List(c) => c.run(),
            Command::Verify(c) => c.run(),
            Command::Setup(_) => {
                let p = Progress::new(false);
                host::ensure(&[host::BUILD, host::TEST].concat(), &p)?;
                println!("host tools: all present");
                Ok(ExitCode::SUCCESS)
            }
            Command::Test(c) => c.run(),
            Command::Serve(mut a) => {
                let project = project_root();
                if a.root.is_relative() {
                    a.root = project.join(&a.root);
                }
                if a.inventory.is_relative() {
                    a.inventory = project.join(&a.inventory);
                }
                a.run().map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Inventory(InventoryCommand::Add(a)) => a.run(),
            Command::Boot(b) => b.run(),
            Command::Disk(DiskCommand::Update(u)) => u.run(),
            Command::Disk(DiskCommand::Flash(f)) => f.run(),
            Command::Bench(c) => {
                bench::run(c.what, &c.recipe, &c.without, !c.no_record).map(|_| ExitCode::SUCCESS)
            }
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl Build {
    fn run(self) -> Result<ExitCode> {
        let progress = Progress::new(self.quiet);
        host::ensure(host::BUILD, &progress)?;
        pipeline::require_root()?;
        let paths = self.at.paths();
        let options = pipeline::BuildOptions {
            without: self.without.clone(),
        };
        let built = pipeline::build_with(&paths, &self.recipe, &options, &progress)?;
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
        for o in &m.outputs {
            if !o.path.starts_with("node-templates/") {
                println!(
                    "  {:<18} {:>10}  sha256:{}",
                    o.path,
                    mb(o.size),
                    &o.sha256[..16]
                );
            }
        }
        let nt = m
            .outputs
            .iter()
            .filter(|o| o.path.starts_with("node-templates/"))
            .count();
        println!(
            "  {} node templates, {} packages, kernel {} ({})",
            nt,
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
        println!("  time per stage:");
        for (stage, t) in progress.times() {
            println!("    {:>6.1} s  {stage}", t.as_secs_f64());
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl List {
    fn run(self) -> Result<ExitCode> {
        let paths = self.at.paths();
        let published = layout::list_published(&paths.out)?;
        for name in recipe::list(&paths.project)? {
            let desc = recipe::load(&paths.project, &name)
                .map(|(r, _)| r.description)
                .unwrap_or_else(|e| format!("(invalid: {e:#})"));
            println!("{name}  {desc}");
            match published.iter().find(|p| p.recipe == name) {
                Some(p) if !p.versions.is_empty() => {
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
                _ => println!("    (not published)"),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Verify {
    fn run(self) -> Result<ExitCode> {
        let paths = self.at.paths();
        let (name, version, dir) = published(&paths, &self.target)?;
        let (m, problems) = layout::verify(&dir)?;
        if problems.is_empty() {
            println!(
                "{name}@{version}: intact ({} files, {})",
                m.outputs.len() + 2,
                mb(m.outputs.iter().map(|o| o.size).sum())
            );
            Ok(ExitCode::SUCCESS)
        } else {
            println!("{name}@{version}: {} problem(s)", problems.len());
            for p in &problems {
                println!("  {p}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

impl Test {
    fn run(self) -> Result<ExitCode> {
        let progress = Progress::new(false);
        host::ensure(&[host::BUILD, host::TEST].concat(), &progress)?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let root = project_root();
        let tiers: [(&str, &[&str]); 3] = [
            (
                "tier a: unit tests (pure, no tools)",
                &["--workspace", "--lib", "--bins"],
            ),
            (
                "tier b: builds and tool checks (mmdebstrap, mksquashfs, unsquashfs, cpio; root)",
                &["-p", "xtask", "-p", "netboot", "--test", "*"],
            ),
            (
                "tier c: QEMU boot tests (qemu-system-x86_64, network namespaces; root)",
                &["-p", "qemu-tests", "--test", "*"],
            ),
        ];
        for (name, args) in tiers {
            progress.println(&format!("==> {name}"));
            let status = std::process::Command::new(&cargo)
                .current_dir(&root)
                .arg("test")
                .args(args)
                .args(["--", "--test-threads=2"])
                .args(&self.args)
                .status()
                .context("running cargo test")?;
            if !status.success() {
                anyhow::bail!("{name}: failed");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl InventoryAdd {
    fn run(self) -> Result<ExitCode> {
        let path = self.project.join("inventory.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let new = inventory_with_node(&text, &self.mac, &self.name, self.recipe.as_deref())?;
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, &new).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        println!(
            "inventory.toml: {} is now node {} (a running boot server picks this up at the machine's next request)",
            self.mac, self.name
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `text` with a `[nodes.NAME]` table appended for `mac`; refused (with the reason) if the
/// result is not a valid inventory: a name or MAC already used, a malformed MAC, no recipe.
pub fn inventory_with_node(
    text: &str,
    mac: &str,
    name: &str,
    recipe: Option<&str>,
) -> Result<String> {
    let current = inventory::parse("inventory.toml", text)?;
    let mac = netboot::hub::normalize_mac(mac)
        .with_context(|| format!("{mac:?} is not a MAC address (like 52:54:00:12:34:56)"))?;
    if current.nodes.contains_key(name) {
        bail!("inventory.toml already has a node named {name}; pick another name");
    }
    if let Some((other, _)) = current.nodes.iter().find(|(_, n)| n.mac == mac) {
        bail!("inventory.toml already has {mac} as node {other}");
    }
    let recipe = match recipe.or(current.defaults.recipe.as_deref()) {
        Some(r) => r.to_string(),
        None => bail!(
            "say which recipe {name} boots: --recipe NAME (the inventory has no [defaults] recipe)"
        ),
    };
    let mut new = text.to_string();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!(
        "\n[nodes.{name}]\nmac = \"{mac}\"\nrecipe = \"{recipe}\"\n"
    ));
    inventory::parse("inventory.toml", &new).context("the new inventory would not be valid")?;
    Ok(new)
}

#[cfg(test)]
mod inventory_add_tests {
    use super::inventory_with_node;

    #[test]
    fn a_node_is_appended_and_mistakes_are_refused() {
        let text = "# the lab\n[defaults]\nrecipe = \"ci-node\"\n\n[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"ci-node\"\n";
        let new = inventory_with_node(text, "52-54-00-00-00-99", "b", None).unwrap();
        assert!(new.starts_with(text), "comments and layout are kept");
        assert!(
            new.ends_with("\n[nodes.b]\nmac = \"52:54:00:00:00:99\"\nrecipe = \"ci-node\"\n"),
            "{new}"
        );
        let err = |mac: &str, name: &str, recipe: Option<&str>, t: &str| {
            format!(
                "{:#}",
                inventory_with_node(t, mac, name, recipe).unwrap_err()
            )
        };
        assert!(err("52:54:00:00:00:02", "a", None, text).contains("already has a node named a"));
        assert!(
            err("52:54:00:00:00:01", "c", None, text)
                .contains("already has 52:54:00:00:00:01 as node a")
        );
        assert!(err("nope", "c", None, text).contains("is not a MAC address"));
        assert!(err("52:54:00:00:00:03", "c", None, "").contains("--recipe"));
        assert!(err("52:54:00:00:00:03", "Bad_Name", Some("r"), "").contains("hostname"));
    }
}
