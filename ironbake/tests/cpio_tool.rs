//! Tier (b): the cpio archives ironbake writes, read back by GNU cpio.

use netboot::cpio;

#[test]
fn the_cpio_tool_reads_it_back() {
    if !ironbake::exec::have_tool("cpio") {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and cpio is missing (apt-get install cpio)");
        }
        eprintln!("SKIPPED: cpio is not installed");
        return;
    }
    let entries = vec![
        cpio::Entry {
            path: "dev".into(),
            mode: 0o755,
            body: cpio::Body::Dir,
        },
        cpio::Entry {
            path: "dev/console".into(),
            mode: 0o600,
            body: cpio::Body::CharDev(5, 1),
        },
        cpio::Entry {
            path: "init".into(),
            mode: 0o755,
            body: cpio::Body::File(b"#!/bin/sh\n".to_vec()),
        },
        cpio::Entry {
            path: "odd".into(),
            mode: 0o640,
            body: cpio::Body::File(vec![7; 5]),
        },
    ];
    let mut out = Vec::new();
    cpio::write(&mut out, &entries, 1_700_000_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.cpio");
    std::fs::write(&archive, &out).unwrap();
    let listing = ironbake::exec::Tool::new("cpio")
        .args(["-itv", "--quiet", "-F"])
        .arg(&archive)
        .run_capture(None)
        .unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 4, "{listing}");
    assert!(
        lines[1].starts_with("crw-------")
            && lines[1].contains("5,")
            && lines[1].ends_with("dev/console"),
        "{listing}"
    );
    assert!(
        lines[2].starts_with("-rwxr-xr-x")
            && lines[2].contains(" 10 ")
            && lines[2].ends_with("init"),
        "{listing}"
    );
    assert!(
        lines[3].starts_with("-rw-r-----") && lines[3].contains("Nov 14  2023"),
        "{listing}"
    );
}
