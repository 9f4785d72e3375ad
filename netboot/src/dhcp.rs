//! The proxyDHCP responder (ports 67 and 4011). Being written; see the module's final doc.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::hub::{Directory, Hub};

/// Boot files, relative to the TFTP root, by client kind.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// BIOS PXE (option 93 = 0).
    pub bios: String,
    /// x64 UEFI PXE (option 93 = 7 or 9).
    pub efi_x64: String,
    /// arm64 UEFI PXE (option 93 = 11), when an arm64 iPXE is published.
    pub efi_arm64: Option<String>,
}

/// proxyDHCP settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The boot server's address on the LAN (option 54, `siaddr`).
    pub server_ip: Ipv4Addr,
    /// Base URL of the HTTP server, e.g. `http://10.33.0.1:8080` (no trailing slash).
    pub http_base: String,
    /// What firmware gets over TFTP.
    pub boot_files: BootFiles,
}

/// Answers PXE clients arriving on `port67` (when given) and `port4011`.
pub async fn serve(
    port67: Option<tokio::net::UdpSocket>,
    port4011: tokio::net::UdpSocket,
    cfg: Config,
    directory: Directory,
    hub: Arc<Hub>,
) -> std::io::Result<()> {
    let _ = (port67, port4011, cfg, directory, hub);
    Err(std::io::Error::other("proxyDHCP is not implemented yet"))
}
