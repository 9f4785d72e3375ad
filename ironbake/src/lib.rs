//! ironbake: recipes and overlays in, versioned, reproducible images out; and the commands
//! that put them on disks. The `ironbake` binary (and `cargo xtask` in its repository) is a
//! shim over [`cli`].
//!
//! Modules are private unless another crate (the repository's chores, the VM harness, the
//! tests) needs them; what they need is re-exported here or made public on purpose, so the
//! compiler reports code nothing uses. Pure modules (no IO, held by a test): [`recipe`]'s
//! parsing, `overlay`'s, `plan`, `checked`, `build::digest`, `disk::layout`, `date`.
//! Only `exec` starts processes.

mod apt;
mod artifact;
pub mod base;
mod build;
mod checked;
pub mod cli;
pub mod date;
mod digest;
pub mod disk;
pub mod exec;
pub mod fleet;
pub mod host;
mod initramfs;
mod ipxe;
mod overlay;
mod plan;
pub mod progress;
pub mod project;
pub mod publish;
pub mod recipe;

pub use build::{
    BASE_LAYER, BuildOptions, Built, INITRAMFS, OVERLAY_LAYER, build, require_root, write_tree,
};
pub use project::Paths;
