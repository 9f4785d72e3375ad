//! Fuzz target: what an HTTP client controls before any IO: the request path through
//! `http::percent_decode` and `fsroot::check_name`, and a Range header through
//! `http_range_header::parse_range_header` and `validate`. The input is read as text (bytes
//! that are not UTF-8 are replaced, as no `&str` can hold them) and fed to all of them.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use netboot::fsroot::{self, MAX_NAME};
use netboot::http::percent_decode;

/// File sizes each parsed Range header is validated against: the edges of `u64` and of small
/// files. Size 0 is left out: the server answers 416 for any range of an empty file before it
/// looks at what `validate` returns (`validate(0)` gives `0..=0` for `bytes=0-`).
const FILE_SIZES: [u64; 8] = [1, 2, 100, 512, 65_536, 1 << 32, u64::MAX - 1, u64::MAX];

/// The invariants of a name `check_name` accepted.
fn check_accepted(requested: &str) {
    let Ok(rel) = fsroot::check_name(requested) else {
        return;
    };
    assert!(
        requested.ends_with(rel),
        "{rel:?} is not part of {requested:?}"
    );
    assert!(!rel.is_empty() && rel.len() <= MAX_NAME);
    assert!(!rel.starts_with('/'), "leading slash in {rel:?}");
    assert!(!rel.contains('\\'), "backslash in {rel:?}");
    assert!(!rel.contains('\0'), "NUL in {rel:?}");
    assert!(
        !rel.chars().any(char::is_control),
        "control character in {rel:?}"
    );
    for part in rel.split('/') {
        assert!(part != ".." && part != ".", "component {part:?} in {rel:?}");
        assert!(!part.is_empty() && part.len() <= 255 && !part.starts_with('.'));
    }
    assert!(
        Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{rel:?} has a component that is not a plain name"
    );
}

/// Every byte as `%XX`.
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();

    // The request path, as the server sees it: decoded, then checked.
    check_accepted(s);
    match percent_decode(s) {
        Some(decoded) => {
            if !s.contains('%') {
                assert_eq!(decoded, s, "decoding changed a path without escapes");
            }
            assert_eq!(
                percent_decode(&encode_all(&decoded)).as_deref(),
                Some(&*decoded)
            );
            check_accepted(&decoded);
        }
        None => assert!(s.contains('%'), "a path without escapes was refused"),
    }

    // The Range header.
    let Ok(parsed) = http_range_header::parse_range_header(s) else {
        return;
    };
    assert!(!parsed.ranges.is_empty());
    for size in FILE_SIZES {
        let Ok(ranges) = parsed.validate(size) else {
            continue;
        };
        assert_eq!(ranges.len(), parsed.ranges.len());
        for r in &ranges {
            assert!(
                r.start() <= r.end() && *r.end() < size,
                "{s:?} validated to {r:?} for a file of {size} bytes"
            );
        }
        // Disjoint, as the multipart answer needs.
        let mut sorted = ranges.clone();
        sorted.sort_by_key(|r| *r.start());
        for w in sorted.windows(2) {
            assert!(w[0].end() < w[1].start(), "{s:?}: {w:?} overlap");
        }
    }
});
