//! Computes the builder's digest (see `src/build/source_digest.rs`) into
//! `IRONBAKE_BUILDER_SHA256`, so a change to the code that shapes an image is a new version.

#[path = "src/build/source_digest.rs"]
mod source_digest;

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    for input in source_digest::INPUTS {
        println!("cargo::rerun-if-changed={input}");
    }
    let files = source_digest::files(&dir).expect("reading the builder's sources");
    println!(
        "cargo::rustc-env=IRONBAKE_BUILDER_SHA256={}",
        source_digest::digest(&files)
    );
}
