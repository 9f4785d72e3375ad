//! ironbake's VM harness: network namespaces, a QEMU runner whose serial console is saved and
//! waited on, and an HTTP test server that lives inside a namespace; the VM tests use it, and
//! so do `cargo xtask boot` ([`boot`]) and the benchmarks ([`bench`]), which call it directly.
//!
//! Every VM runs inside a network namespace the test makes (never on the machine's own
//! interfaces); guards remove VMs and namespaces even when a test panics.

pub mod bench;
pub mod boot;
pub mod browser;
pub mod console;
pub mod fixture;
pub mod httpd;
pub mod install;
pub mod lan;
pub mod mesh;
pub mod netns;
pub mod nginx;
pub mod prometheus;
pub mod qemu;
pub mod redfish;
pub mod registry;
pub mod report;
pub mod require;
pub mod server;
pub mod usage;
pub mod wol;

/// The repository's project folder, found from the current folder (tests run in their
/// package's folder, `cargo xtask` in the repository).
pub fn project() -> std::path::PathBuf {
    ironbake::project::discover_here(None).expect("the VM harness runs inside the repository")
}

/// Named deadlines for waits, under TCG on two cores.
pub mod deadline {
    use std::time::Duration;
    /// From QEMU start to the first line of the initramfs.
    pub const FIRST_STAGE: Duration = Duration::from_secs(60);
    /// From QEMU start to the ready line (kernel, fetch of ~150 MB, systemd).
    pub const READY: Duration = Duration::from_secs(240);
    /// From one failed fetch to the next attempt's message.
    pub const RETRY: Duration = Duration::from_secs(90);
    /// From QEMU start to the ready line through firmware PXE (OVMF, iPXE over TFTP, HTTP).
    pub const PXE_READY: Duration = Duration::from_secs(360);
    /// One pass of a retrying firmware over its boot options with no boot server (OVMF: IPv4
    /// PXE, IPv4 HTTP boot, its shell's countdown, a reset).
    pub const FIRMWARE_PASS: Duration = Duration::from_secs(240);
    /// From QEMU start to the ready line for three VMs PXE-booting at once on two cores.
    pub const MESH_READY: Duration = Duration::from_secs(720);
    /// From the ready line to a node's report of its mesh (each peer is tried for 120 s).
    pub const MESH_REPORT: Duration = Duration::from_secs(300);
    /// From the ready line to the ready report reaching the server.
    pub const REPORT: Duration = Duration::from_secs(30);
}
