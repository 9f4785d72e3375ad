//! ironbake's pipeline: recipes and overlays in, versioned, reproducible images out.
//!
//! The `cargo xtask` binary is a shim over [`cli`]. Pure modules (no IO): [`recipe`] parsing,
//! [`plan`], [`users`], [`template`], [`diag`]. Modules that touch the world: [`exec`] (the only
//! one that starts processes), [`base`], [`artifact`], [`apt`], [`publish`], [`pipeline`].

pub use netboot::{cpio, diag, inventory, template};

pub mod apt;
pub mod artifact;
pub mod base;
pub mod bench;
pub mod cli;
pub mod exec;
pub mod host;
pub mod initramfs;
pub mod ipxe;
pub mod overlay;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod recipe;
pub mod users;
