//! The builder's own digest: sha256 over every source file that shapes what a build writes.
//!
//! This file is compiled twice: into the build script (`build.rs`), which puts the digest of
//! this crate's tree into `IRONBAKE_BUILDER_SHA256` for [`super::digest`], and into the
//! library's tests, which compute it again from the tree and compare.
//!
//! What counts: the whole of this crate's `src/` (code, the first stage's scripts, the base's
//! hooks) with `Cargo.toml` and `build.rs`; the boot server's modules whose code writes part
//! of an image (`cpio.rs`, `template.rs`, `layout.rs`); and `Cargo.lock`, since a dependency
//! (zstd, fatfs, gptman) shapes bytes too. Over-counting costs a rebuild of the small layers
//! (the package layer is cached by its own inputs); under-counting would serve old bytes
//! under a version that claims new code.

use std::path::Path;

/// The inputs, relative to the `ironbake` crate's folder. A folder counts with every file
/// under it.
pub(crate) const INPUTS: &[&str] = &[
    "Cargo.toml",
    "build.rs",
    "src",
    "../netboot/src/cpio.rs",
    "../netboot/src/layout.rs",
    "../netboot/src/template.rs",
    "../Cargo.lock",
];

/// One input file: its path (as in [`INPUTS`], `/`-separated) and its bytes, or `None` when it
/// is absent (the crate built outside its workspace has no `../Cargo.lock`).
pub(crate) type File = (String, Option<Vec<u8>>);

/// Reads every input under `crate_dir`, in sorted order.
pub(crate) fn files(crate_dir: &Path) -> std::io::Result<Vec<File>> {
    let mut out = Vec::new();
    for input in INPUTS {
        collect(crate_dir, input, &mut out)?;
    }
    Ok(out)
}

fn collect(crate_dir: &Path, rel: &str, out: &mut Vec<File>) -> std::io::Result<()> {
    let path = crate_dir.join(rel);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push((rel.to_string(), None));
            Ok(())
        }
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => {
            let mut names: Vec<String> = std::fs::read_dir(&path)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for n in names {
                collect(crate_dir, &format!("{rel}/{n}"), out)?;
            }
            Ok(())
        }
        Ok(_) => {
            out.push((rel.to_string(), Some(std::fs::read(&path)?)));
            Ok(())
        }
    }
}

/// sha256 over the files, lowercase hex: each path, then its length and bytes (or a marker
/// for an absent file), so moving bytes between files changes it too.
pub(crate) fn digest(files: &[File]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (path, bytes) in files {
        h.update(path.as_bytes());
        h.update([0]);
        match bytes {
            Some(b) => {
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            None => h.update(b"absent"),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
