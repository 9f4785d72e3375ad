//! The TFTP server (read-only), for the bootloader. Being written; see the module's final doc.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;

/// TFTP settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest block size granted (RFC 2348); 1468 fits a 1500-byte MTU.
    pub max_blksize: u16,
    /// The largest window granted (RFC 7440).
    pub max_window: u16,
    /// Transfers served at once; further requests get an error packet.
    pub max_transfers: usize,
    /// The first retransmission timeout (a client's `timeout` option overrides it).
    pub initial_timeout: Duration,
    /// Retransmissions of one window before the transfer is abandoned.
    pub max_retries: u32,
    /// The longest a transfer may take in all.
    pub transfer_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_blksize: 1468,
            max_window: 16,
            max_transfers: 64,
            initial_timeout: Duration::from_secs(1),
            max_retries: 6,
            transfer_deadline: Duration::from_secs(120),
        }
    }
}

/// Serves read requests arriving on `socket` from files under `root` (canonical).
pub async fn serve(
    socket: tokio::net::UdpSocket,
    root: PathBuf,
    cfg: Config,
    hub: Arc<Hub>,
) -> std::io::Result<()> {
    let _ = (socket, root, cfg, hub);
    Err(std::io::Error::other("TFTP is not implemented yet"))
}
