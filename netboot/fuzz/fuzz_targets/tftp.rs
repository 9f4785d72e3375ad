//! Fuzz target: a datagram on the TFTP server's port, through `tftp::parse_request`, and the
//! file name it yields through `fsroot::check_name`, as the server does before any IO.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netboot::fsroot;
use netboot::tftp::{self, PacketError};

fuzz_target!(|data: &[u8]| {
    let req = match tftp::parse_request(data) {
        Ok(req) => req,
        Err(e) => {
            // A write request is refused as such, whatever follows the opcode.
            if data.starts_with(&[0, 2]) {
                assert_eq!(e, PacketError::WriteRequest);
            }
            let _ = (e.reply(), e.to_string());
            return;
        }
    };
    assert!(data.starts_with(&[0, 1]), "only an RRQ parses");
    assert!(!req.filename.contains('\0'), "a NUL inside the file name");
    let o = &req.options;
    if let Some(b) = o.blksize {
        assert!(
            (tftp::MIN_BLKSIZE..=tftp::MAX_BLKSIZE).contains(&b),
            "blksize {b}"
        );
    }
    if let Some(t) = o.timeout {
        assert!(t >= 1, "timeout {t}");
    }
    if let Some(w) = o.windowsize {
        assert!(w >= 1, "windowsize {w}");
    }
    let accepted = [
        o.blksize.is_some(),
        o.tsize.is_some(),
        o.timeout.is_some(),
        o.windowsize.is_some(),
    ];
    let count = accepted.iter().filter(|&&a| a).count() + o.ignored.len();
    assert!(count <= tftp::MAX_OPTIONS, "{count} options kept");
    if let Ok(rel) = fsroot::check_name(&req.filename) {
        assert!(!rel.starts_with('/') && !rel.contains('\\') && !rel.contains('\0'));
        assert!(rel.split('/').all(|part| part != ".." && part != "."));
    }
});
