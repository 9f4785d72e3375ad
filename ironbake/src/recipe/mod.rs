//! Recipes: what one image is made of. This module's documentation is the format's manual.
//!
//! A recipe is `recipes/NAME.toml`; `NAME` is the image's name everywhere after (in `out/`, in
//! the inventory, on the node's ready line). Unknown keys are errors, with file, line and
//! column, so a typo never silently changes an image.
//!
//! ```toml
//! # recipes/core-node.toml
//! version = "0.3.0"                 # required; the published version is "0.3.0-<digest>"
//! description = "Proxmox core node" # optional, shown by `cargo xtask list`
//! overlays = ["base", "infiniband"] # applied in this order; later ones win on conflicts
//! outputs = ["kernel", "initramfs", "rootfs"]  # the default; add "disk" for a GPT disk image
//!                                   # (with the "disk-boot" overlay)
//!
//! [debian]
//! suite = "bookworm"                # required
//! variant = "minbase"               # essential | apt | minbase | required | important | standard
//! components = ["main"]             # default: ["main"]
//! packages = ["systemd-sysv", "udev"]
//! # mirror = "http://mirror.example/debian"  # default: the build host's apt sources
//! # security-mirror = "http://mirror.example/debian-security"
//! slim = true                       # default true: no man pages, docs (copyright kept), info
//! # source-date-epoch = 1700000000  # default: the Date of the suite's signed Release file
//!
//! [kernel]
//! package = "linux-image-amd64"     # required
//! cmdline = "console=ttyS0,115200"  # overlays may append
//!
//! [initramfs]
//! modules = ["mlx4_ib"]             # drivers beyond the default set (see initramfs/mod.rs)
//!
//! [squashfs]
//! compression = "zstd"              # zstd | xz | gzip | lz4
//! level = 9                         # zstd 1-22, xz and lz4 ignore it, gzip 1-9
//! block-size-kib = 1024             # 4 to 1024, a power of two
//!
//! [disk]                            # with "disk" in outputs (see disk/mod.rs for the layout)
//! esp-mib = 256                     # the EFI system partition, at least 64
//! # base-mib = 512                  # each slot's base partition; default: the base layer
//! #                                 # plus half again, rounded up to 64 MiB
//! overlay-mib = 64                  # each slot's overlay partition
//! data-mib = 0                      # a data partition for state (0: none)
//! slot-b = "empty"                  # "empty" or "copy" (of slot A)
//!
//! [variables]                       # seen by every overlay template, as top-level names
//! admin_user = "admin"
//! ssh_authorized_keys = ["ssh-ed25519 AAAA... admin@laptop"]
//! ```
//!
//! Defaults and why:
//! - `variant = "minbase"`: the smallest set that still has apt, which images keep for
//!   inspection; `essential` drops apt and is rarely what a node wants.
//! - `compression = "zstd"`, `level = 9`: measured on a 625 MB Debian tree on 2 cores, level 9
//!   took 6.3 s for 166 MB, level 15 took 41.8 s for 156 MB, level 3 took 2.4 s for 181 MB.
//! - `block-size-kib = 1024`: nodes read the image from RAM, where larger blocks cost nothing
//!   and compress better.
//! - `slim = true`: a node booted into RAM pays for every byte; licences stay.
//!
//! Parsing ([`parse`]) does no IO; `load.rs` reads the file and calls it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::checked::{Name, PackageName, RecipeVersion, VarName};
use netboot::diag::{self, Located};

mod load;
pub use load::{list, load};

/// A parsed, validated recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Recipe {
    /// The recipe's own version; the published version adds a digest of all inputs.
    pub version: RecipeVersion,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Overlay folder names under `overlays/`, applied in order.
    #[serde(default)]
    pub overlays: Vec<Name>,
    /// What to publish.
    #[serde(default = "default_outputs")]
    pub outputs: Vec<Output>,
    /// The Debian base.
    pub debian: Debian,
    /// The kernel.
    pub kernel: Kernel,
    /// ironbake's netboot initramfs.
    #[serde(default)]
    pub initramfs: Initramfs,
    /// How the root filesystem layers are compressed.
    #[serde(default)]
    pub squashfs: Squashfs,
    /// The disk image, when `outputs` has `disk`.
    #[serde(default)]
    pub disk: Disk,
    /// Values for the overlays' templates.
    #[serde(default)]
    pub variables: BTreeMap<VarName, toml::Value>,
    /// Folders kept on the node's data partition across reboots and versions, besides the
    /// overlays' own `persist`.
    #[serde(default)]
    pub persist: Vec<crate::checked::ImagePath>,
}

/// A published artifact kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// `vmlinuz` and `cmdline`.
    Kernel,
    /// `initrd.img`: ironbake's first stage.
    Initramfs,
    /// `base.squashfs` and `overlay.squashfs`, plus the node templates.
    Rootfs,
    /// `disk.img`: a GPT disk that boots the image with no network (needs the other three).
    Disk,
}

fn default_outputs() -> Vec<Output> {
    vec![Output::Kernel, Output::Initramfs, Output::Rootfs]
}

/// The disk image settings of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    /// The EFI system partition, MiB.
    #[serde(default = "default_esp_mib")]
    pub esp_mib: u64,
    /// Each slot's base partition, MiB; by default sized from the base layer.
    #[serde(default)]
    pub base_mib: Option<u64>,
    /// Each slot's overlay partition, MiB.
    #[serde(default = "default_overlay_mib")]
    pub overlay_mib: u64,
    /// The data partition, MiB (0: none).
    #[serde(default)]
    pub data_mib: u64,
    /// What slot B holds in a new image.
    #[serde(default)]
    pub slot_b: SlotB,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            esp_mib: default_esp_mib(),
            base_mib: None,
            overlay_mib: default_overlay_mib(),
            data_mib: 0,
            slot_b: SlotB::default(),
        }
    }
}

fn default_esp_mib() -> u64 {
    256
}

fn default_overlay_mib() -> u64 {
    64
}

/// What slot B of a new disk image holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotB {
    /// Nothing until the first update.
    #[default]
    Empty,
    /// A copy of slot A.
    Copy,
}

/// The initramfs settings of a recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Initramfs {
    /// Kernel modules beyond the default driver set; each must exist in the kernel.
    #[serde(default)]
    pub modules: Vec<crate::checked::ModuleName>,
}

/// The Debian base of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Debian {
    /// Suite (codename), e.g. `bookworm`.
    pub suite: String,
    /// mmdebstrap's package selection.
    #[serde(default)]
    pub variant: Variant,
    /// Archive components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Extra packages.
    #[serde(default)]
    pub packages: Vec<PackageName>,
    /// The Debian mirror; when absent, the build host's apt sources are used.
    #[serde(default)]
    pub mirror: Option<String>,
    /// The security mirror; only used with `mirror`.
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// Leave out man pages, docs (copyright files kept) and info pages.
    #[serde(default = "yes")]
    pub slim: bool,
    /// Every timestamp in the image; by default the Date of the suite's Release file.
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

fn yes() -> bool {
    true
}

/// mmdebstrap's variants that make sense for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Essential packages only (no apt).
    Essential,
    /// Essential plus apt.
    Apt,
    /// Essential, apt and required packages minus a few (debootstrap's minbase).
    #[default]
    Minbase,
    /// Priority required.
    Required,
    /// Priority important.
    Important,
    /// Priority standard.
    Standard,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::Essential => "essential",
            Variant::Apt => "apt",
            Variant::Minbase => "minbase",
            Variant::Required => "required",
            Variant::Important => "important",
            Variant::Standard => "standard",
        })
    }
}

/// The kernel of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kernel {
    /// The Debian package that installs it (`linux-image-amd64`, a Proxmox kernel, ...).
    pub package: PackageName,
    /// The base command line; overlays append to it.
    #[serde(default)]
    pub cmdline: String,
}

/// squashfs settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Squashfs {
    /// Compressor.
    #[serde(default)]
    pub compression: Compression,
    /// Compression level, where the compressor has one.
    #[serde(default = "default_level")]
    pub level: u32,
    /// Block size in KiB.
    #[serde(default = "default_block")]
    pub block_size_kib: u32,
}

impl Default for Squashfs {
    fn default() -> Self {
        Squashfs {
            compression: Compression::default(),
            level: default_level(),
            block_size_kib: default_block(),
        }
    }
}

fn default_level() -> u32 {
    9
}

fn default_block() -> u32 {
    1024
}

/// squashfs compressors the Debian kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// zstd (the default).
    #[default]
    Zstd,
    /// xz: smallest, slowest.
    Xz,
    /// gzip.
    Gzip,
    /// lz4: fastest, largest.
    Lz4,
}

impl Compression {
    /// The compressor's name as mksquashfs spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
        }
    }
}

/// Parses and checks a recipe's text. `file` names it in errors. Each value is checked as it
/// is read (see [`crate::checked`]); what remains are the rules between values.
pub fn parse(file: &str, text: &str) -> Result<Recipe, Located> {
    let recipe: Recipe = diag::parse_toml(file, text)?;
    let at = |needle: &str, message: String| diag::locate(file, text, needle, message);
    check_outputs(&recipe).map_err(|(n, m)| at(n, m))?;
    check_disk(&recipe.disk).map_err(|(n, m)| at(n, m))?;
    check_squashfs(&recipe.squashfs).map_err(|(n, m)| at(n, m))?;
    if let Some(dup) = recipe
        .overlays
        .iter()
        .enumerate()
        .find(|(i, n)| recipe.overlays[..*i].contains(n))
    {
        return Err(at(
            dup.1,
            format!("overlay {:?} is listed twice", dup.1.as_str()),
        ));
    }
    if recipe.kernel.cmdline.contains(['\n', '\r']) {
        return Err(at(
            "cmdline",
            "the kernel command line must be one line".into(),
        ));
    }
    Ok(recipe)
}

/// A broken rule: the text to point at, and what is wrong.
type Broken = (&'static str, String);

fn check_outputs(recipe: &Recipe) -> Result<(), Broken> {
    if recipe.outputs.is_empty() {
        return Err((
            "outputs",
            "outputs is empty: name at least one of \"kernel\", \"rootfs\"".into(),
        ));
    }
    let parts = [Output::Kernel, Output::Initramfs, Output::Rootfs];
    if recipe.outputs.contains(&Output::Disk) && !parts.iter().all(|o| recipe.outputs.contains(o)) {
        return Err((
            "outputs",
            "the \"disk\" output is made from the others: list \"kernel\", \"initramfs\" \
             and \"rootfs\" too"
                .into(),
        ));
    }
    Ok(())
}

fn check_disk(disk: &Disk) -> Result<(), Broken> {
    if disk.esp_mib < 64 {
        return Err((
            "esp-mib",
            format!(
                "esp-mib = {} is too small: at least 64 (FAT32 needs 65525 clusters, and \
                 firmware reads a smaller ESP as FAT16)",
                disk.esp_mib
            ),
        ));
    }
    if disk.overlay_mib == 0 || disk.base_mib == Some(0) {
        return Err(("[disk]", "slot partitions need at least 1 MiB".into()));
    }
    Ok(())
}

fn check_squashfs(sq: &Squashfs) -> Result<(), Broken> {
    let b = sq.block_size_kib;
    if !(4..=1024).contains(&b) || !b.is_power_of_two() {
        return Err((
            "block-size-kib",
            format!("block-size-kib = {b}: must be a power of two from 4 to 1024"),
        ));
    }
    let level_ok = match sq.compression {
        Compression::Zstd => (1..=22).contains(&sq.level),
        Compression::Gzip => (1..=9).contains(&sq.level),
        Compression::Xz | Compression::Lz4 => true,
    };
    if !level_ok {
        return Err((
            "level",
            format!(
                "level = {} is out of range for {}",
                sq.level,
                sq.compression.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
version = "1.0"
[debian]
suite = "bookworm"
[kernel]
package = "linux-image-amd64"
"#;

    #[test]
    fn a_minimal_recipe_gets_its_documented_defaults() {
        let r = parse("r.toml", MINIMAL).unwrap();
        assert_eq!(r.debian.variant, Variant::Minbase);
        assert_eq!(r.debian.components, ["main"]);
        assert!(r.debian.slim);
        assert_eq!(
            r.outputs,
            [Output::Kernel, Output::Initramfs, Output::Rootfs]
        );
        assert_eq!(
            r.squashfs,
            Squashfs {
                compression: Compression::Zstd,
                level: 9,
                block_size_kib: 1024
            }
        );
        assert!(r.overlays.is_empty() && r.variables.is_empty());
    }

    #[test]
    fn bad_recipes_are_refused_with_a_position() {
        let cases: &[(&str, &str, usize)] = &[
            (
                "version = \"1.0\"\ncolour = 1\n[debian]\nsuite = \"b\"\n[kernel]\npackage = \"linux\"\n",
                "unknown field `colour`",
                2,
            ),
            (
                "version = \"1.0\"\n[debian]\nsuite = \"b\"\nvariant = \"huge\"\n[kernel]\npackage = \"linux\"\n",
                "unknown variant `huge`",
                4,
            ),
            (
                "version = \"1-0\"\n[debian]\nsuite = \"b\"\n[kernel]\npackage = \"linux\"\n",
                "version \"1-0\"",
                1,
            ),
            (
                "version = \"1.0\"\n[debian]\nsuite = \"b\"\npackages = [\"Bad_Name\"]\n[kernel]\npackage = \"linux\"\n",
                "not a valid Debian package name",
                4,
            ),
            (
                "version = \"1.0\"\noverlays = [\"a\", \"a\"]\n[debian]\nsuite = \"b\"\n[kernel]\npackage = \"linux\"\n",
                "listed twice",
                2,
            ),
            (
                "version = \"1.0\"\n[debian]\nsuite = \"b\"\n[kernel]\npackage = \"linux\"\n[squashfs]\nblock-size-kib = 100\n",
                "power of two",
                7,
            ),
            (
                "version = \"1.0\"\n[debian]\nsuite = \"b\"\n[kernel]\npackage = \"linux\"\n[variables]\nnode = 1\n",
                "reserved",
                7,
            ),
            ("version = \"1.0\"\n[debian\nsuite = \"b\"\n", "", 2),
        ];
        for (text, needle, line) in cases {
            let err = parse("r.toml", text).unwrap_err();
            assert!(err.message.contains(needle), "{text:?}: {}", err.message);
            assert_eq!(err.line, *line, "{text:?}: {err}");
        }
    }
}
