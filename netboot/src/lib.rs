//! ironbake's boot server library.
//!
//! Its only input is the layout the pipeline publishes under `out/` ([`layout`]); it never
//! depends on the pipeline's code. The protocol servers (proxyDHCP, TFTP, HTTP) build on it.

pub mod layout;
