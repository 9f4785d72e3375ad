//! ironbake's boot server library.
//!
//! Its only input is the layout the pipeline publishes under `out/` ([`layout`]); it never
//! depends on the pipeline's code. The protocol servers (proxyDHCP, TFTP, HTTP) build on it.

pub mod boot;
pub mod cli;
pub mod cpio;
pub mod date;
pub mod dhcp;
pub mod diag;
pub mod fleet;
pub mod fsroot;
pub mod http;
pub mod hub;
pub mod inventory;
pub mod layout;
pub mod logs;
pub mod mesh;
pub mod nodes;
pub mod oci;
#[cfg(feature = "page")]
pub mod page;
pub mod publish;
pub mod secrets;
pub mod serve;
pub mod telemetry;
pub mod template;
pub mod tftp;
