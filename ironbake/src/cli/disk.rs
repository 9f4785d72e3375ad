//! `disk flash` and `disk update`: a published version onto a disk, or into its other slot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::Global;
use crate::disk::{self, flash};
use crate::progress::Progress;
use crate::project::Paths;
use crate::publish::{self, Published};

/// Disk images and disks (a recipe with the "disk" output).
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Write a published version into the inactive slot of a disk image or disk and make it
    /// the next boot; systemd-boot falls back to the other slot if it does not come up.
    Update(Update),
    /// Write a published version's whole disk image onto a disk (everything on it is lost);
    /// refuses a partition, a mounted or system disk, swap, a disk held by LVM or RAID.
    Flash(Flash),
}

impl DiskCommand {
    pub(super) fn run(self, global: &Global) -> Result<ExitCode> {
        match self {
            DiskCommand::Update(c) => c.run(global),
            DiskCommand::Flash(c) => c.run(global),
        }
    }
}

/// `disk flash RECIPE[@VERSION] DEVICE`.
#[derive(Debug, Args)]
pub struct Flash {
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
}

/// `disk update TARGET RECIPE[@VERSION]`.
#[derive(Debug, Args)]
pub struct Update {
    /// The disk image file, or the disk's block device.
    #[arg(value_name = "image-or-device")]
    target: PathBuf,
    /// The version to write: RECIPE (its current version) or RECIPE@VERSION.
    #[arg(value_name = "recipe[@version]")]
    version: String,
    #[command(flatten)]
    node: NodeChoice,
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
    /// The node's settings archive for a version, when a node is named.
    fn settings(&self, paths: &Paths, p: &Published) -> Result<Option<Vec<u8>>> {
        let Some(name) = &self.node else {
            return Ok(None);
        };
        let state = self.state.as_deref().map(|s| paths.in_project_dir(s));
        disk::render_node_settings(
            &paths.in_project_dir(&self.inventory),
            state,
            &paths.out,
            name,
            &p.recipe,
            &p.version,
        )
        .map(Some)
    }

    /// How the summary line names what went onto the ESP.
    fn said(&self, none: &str) -> String {
        match &self.node {
            Some(n) => format!(", settings of node {n} on the ESP"),
            None => none.to_string(),
        }
    }
}

/// Refuses a block device that is in use (a disk image file passes).
fn refuse_disk_in_use(target: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(target).with_context(|| format!("{}", target.display()))?;
    if meta.file_type().is_block_device() {
        flash::check_target(target, 0)?;
    }
    Ok(())
}

/// Asks on a terminal to type `yes`; without one, refuses (`--yes` skips this).
fn confirm(what: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        bail!("writing {what} erases it: add --yes to go ahead");
    }
    eprint!("writing {what} erases everything on it; type yes: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing written");
    }
    Ok(())
}

impl Flash {
    fn run(self, global: &Global) -> Result<ExitCode> {
        let paths = global.paths()?;
        let p = publish::find(&paths.out, &self.version)?;
        let image = disk::Image::of(&p)?;
        let target = flash::check_target(&self.device, image.len)?;
        // Render the node's settings before anything is written: a template error or a
        // missing secret stops here, with the disk untouched.
        let settings = self.node.settings(&paths, &p)?;
        if !self.yes {
            confirm(&format!("{p} to {target}"))?;
        }
        let progress = Progress::new(false);
        let stage = progress.stage(&format!("flash {p} to {target}"));
        let f = flash::write(&image.path, &image.sha256, &self.device, &stage)?;
        stage.done(&format!(
            "{} MiB written in {:.1} s, read back and verified in {:.1} s",
            f.bytes >> 20,
            f.write_s,
            f.verify_s
        ));
        if let Some(archive) = &settings {
            disk::set_node_settings(&self.device, Some(archive), image.epoch)?;
        }
        if let Err(e) = flash::reread(&self.device) {
            eprintln!("warning: {e}");
        }
        let room = match target.size.checked_sub(image.len) {
            Some(free) if free > 0 => format!(
                "; {} MiB past the image left free for the data partition",
                free >> 20
            ),
            _ => String::new(),
        };
        println!(
            "{}: {p} in slot a{}{room}",
            self.device.display(),
            self.node.said(", no node settings (boots as localhost)"),
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl Update {
    fn run(self, global: &Global) -> Result<ExitCode> {
        let paths = global.paths()?;
        let p = publish::find(&paths.out, &self.version)?;
        let image = disk::Image::of(&p)?;
        refuse_disk_in_use(&self.target)?;
        let settings = self.node.settings(&paths, &p)?;
        let u = disk::update(&self.target, &p.dir, &image.manifest)?;
        if let Some(archive) = &settings {
            disk::set_node_settings(&self.target, Some(archive), image.epoch)?;
        }
        let replaced = if u.removed.is_empty() {
            String::new()
        } else {
            format!("; replaced {}", u.removed.join(", "))
        };
        let rendered = match &self.node.node {
            Some(n) => format!("; settings of node {n} rendered from this version"),
            None => String::new(),
        };
        println!(
            "{}: {p} written to slot {}; next boot: EFI/Linux/{} ({} tries to come up, else \
             the other slot){replaced}{rendered}",
            self.target.display(),
            u.slot,
            u.entry,
            disk::TRIES,
        );
        Ok(ExitCode::SUCCESS)
    }
}
