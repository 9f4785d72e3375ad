//! The published layout under `out/`: the contract between the pipeline and the boot server.
//!
//! ```text
//! out/
//!   RECIPE/
//!     current -> VERSION          symlink, switched atomically by each publish
//!     VERSION/                    immutable once renamed into place
//!       manifest.json             every input and output digest (see [`Manifest`])
//!       SHA256SUMS                sha256sum(1) format, every file but itself
//!       vmlinuz                   the kernel
//!       base.squashfs             the package layer (bottom)
//!       overlay.squashfs          the overlays' layer, stacked above the base
//!       cmdline                   the kernel command line, one line
//!       node-templates/...        templates the boot server renders per node
//! ```
//!
//! Nothing here depends on how the pipeline works: a reader needs only this module.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name inside a version folder.
pub const MANIFEST: &str = "manifest.json";
/// The checksum list's file name inside a version folder.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// The name of the per-recipe pointer to the published version nodes boot by default.
pub const CURRENT: &str = "current";
/// The disk image in a version folder (the recipe's `disk` output).
pub const DISK_IMAGE: &str = "disk.img";
/// Beside the disk image: the sha256 of each [`DISK_CHUNK`]-byte piece of it, one line a
/// piece (`OFFSET LENGTH SHA256`, in order), so that a node installing it over the network
/// checks every piece before writing it (see [`disk_chunks`]).
pub const DISK_CHUNKS: &str = "disk.chunks";
/// The size of a piece in [`DISK_CHUNKS`] (the last one may be shorter).
pub const DISK_CHUNK: u64 = 16 << 20;

/// The chunk list of the disk image `file`, and its whole sha256 and length.
///
/// A disk image is mostly unwritten (slot B, room to grow): the file is sparse, and only its
/// data is read. A piece that holds no data (`SEEK_DATA` finds none in it) is zeros: its
/// digest is that of a zero piece, computed once, and the whole digest takes the zeros from
/// memory. On a filesystem that does not report holes every piece is read, with the same
/// result. The pieces' digests and the whole one are computed on two threads.
pub fn disk_chunks(file: &fs::File) -> io::Result<(String, String, u64)> {
    let done = Written::default();
    done.finish();
    disk_chunks_as_written(file, &done)
}

/// How much of a file being written is final, for [`disk_chunks_as_written`]: the writer
/// says how far it got ([`Written::advance`]), then that it is done or gave up.
#[derive(Debug, Default)]
pub struct Written {
    state: std::sync::Mutex<(u64, WriteEnd)>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum WriteEnd {
    #[default]
    Writing,
    Done,
    Abandoned,
}

impl Written {
    /// Every byte before `offset` is final.
    pub fn advance(&self, offset: u64) {
        let mut s = self.state.lock().expect("written lock");
        s.0 = s.0.max(offset);
        self.changed.notify_all();
    }

    /// Every byte is final.
    pub fn finish(&self) {
        self.end(WriteEnd::Done);
    }

    /// The writer failed: whoever waits gets an error.
    pub fn abandon(&self) {
        self.end(WriteEnd::Abandoned);
    }

    fn end(&self, how: WriteEnd) {
        let mut s = self.state.lock().expect("written lock");
        s.1 = how;
        self.changed.notify_all();
    }

    /// Waits until every byte before `offset` is final.
    fn wait(&self, offset: u64) -> io::Result<()> {
        let mut s = self.state.lock().expect("written lock");
        loop {
            match s.1 {
                WriteEnd::Done => return Ok(()),
                WriteEnd::Abandoned => {
                    return Err(io::Error::other("the disk image was not finished"));
                }
                WriteEnd::Writing if s.0 >= offset => return Ok(()),
                WriteEnd::Writing => s = self.changed.wait(s).expect("written lock"),
            }
        }
    }
}

/// [`disk_chunks`] of a file still being written: each piece is read once `written` says it
/// is final, so that hashing goes along with the writing instead of after it. The file's
/// length must be set before.
pub fn disk_chunks_as_written(
    file: &fs::File,
    written: &Written,
) -> io::Result<(String, String, u64)> {
    let len = file.metadata()?.len();
    std::thread::scope(|s| {
        let pieces = s.spawn(|| {
            let mut text = String::new();
            let mut zero_piece: Option<(usize, String)> = None;
            each_piece(file, len, written, |offset, data, n| {
                let digest = match data {
                    Some(bytes) => hex::encode(Sha256::digest(bytes)),
                    None => match &zero_piece {
                        Some((m, d)) if *m == n => d.clone(),
                        _ => {
                            let d = hex::encode(Sha256::digest(vec![0u8; n]));
                            zero_piece = Some((n, d.clone()));
                            d
                        }
                    },
                };
                text.push_str(&format!("{offset} {n} {digest}\n"));
            })?;
            Ok::<_, io::Error>(text)
        });
        let mut whole = Sha256::new();
        let zeros = vec![0u8; DISK_CHUNK as usize];
        let whole_done = each_piece(file, len, written, |_, data, n| match data {
            Some(bytes) => whole.update(bytes),
            None => whole.update(&zeros[..n]),
        });
        let text = pieces
            .join()
            .map_err(|_| io::Error::other("hashing the disk image's pieces failed"))??;
        whole_done?;
        Ok((text, hex::encode(whole.finalize()), len))
    })
}

/// Calls `f(offset, data, len)` for each [`DISK_CHUNK`] piece of `file` in order, once it is
/// final: `data` is `None` for a piece that holds no data (zeros).
fn each_piece(
    file: &fs::File,
    len: u64,
    written: &Written,
    mut f: impl FnMut(u64, Option<&[u8]>, usize),
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; DISK_CHUNK as usize];
    let mut offset = 0u64;
    while offset < len {
        let n = DISK_CHUNK.min(len - offset) as usize;
        written.wait(offset + n as u64)?;
        let data_at = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => Some(at),
            Err(rustix::io::Errno::NXIO) => None,
            Err(e) => return Err(e.into()),
        };
        if data_at.is_none_or(|at| at >= offset + n as u64) {
            f(offset, None, n);
        } else {
            file.read_exact_at(&mut buf[..n], offset)?;
            f(offset, Some(&buf[..n]), n);
        }
        offset += n as u64;
    }
    Ok(())
}

/// The manifest schema this crate reads and the pipeline writes.
pub const SCHEMA: u32 = 1;

/// What one published version is made of and made from.
///
/// Every field is deterministic: no build time, host name or path appears, so two builds from
/// the same inputs write the same manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest schema version ([`SCHEMA`]).
    pub schema: u32,
    /// The recipe's name (its file stem).
    pub recipe: String,
    /// The published version: the recipe's version, a dash, and a short digest of all inputs.
    pub version: String,
    /// The full sha256 of all inputs, of which `version` carries a prefix.
    pub inputs_sha256: String,
    /// The ironbake release that built this version, with the start of its source digest.
    pub builder: String,
    /// sha256 of the builder's sources (part of the inputs digest): the same code and the
    /// same inputs give the same version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_sha256: Option<String>,
    /// The timestamp given to every file and to the filesystems (SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
    /// The recipe file itself.
    pub recipe_file: FileDigest,
    /// The Debian base: suite, variant, apt sources with the digest of their signed index.
    pub debian: DebianInputs,
    /// Overlays the recipe names that this build left out, as asked (`--without`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// The overlays in the order they were applied, each with a digest of its whole folder.
    pub overlays: Vec<OverlayInput>,
    /// Pinned artifacts placed into the image.
    pub artifacts: Vec<ArtifactRecord>,
    /// The kernel: package, release and command line.
    pub kernel: KernelRecord,
    /// The root filesystem layers, bottom first; the node stacks them with overlayfs.
    pub layers: Vec<String>,
    /// Every Debian package installed in the image, sorted by name.
    pub packages: Vec<PackageRecord>,
    /// Every published file but `manifest.json` and `SHA256SUMS`, sorted by path.
    pub outputs: Vec<OutputRecord>,
    /// Node templates whose rendered file is not mode 0644, by image path ("0600").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_template_modes: BTreeMap<String, String>,
    /// The recipe's `[variables]`, which node templates see beside `node.*` when the boot
    /// server renders them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, serde_json::Value>,
}

/// A file named by path with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Path relative to the project root.
    pub path: String,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// The Debian side of the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianInputs {
    /// The suite, e.g. `bookworm`.
    pub suite: String,
    /// The mmdebstrap variant, e.g. `minbase`.
    pub variant: String,
    /// The digest that keys the cached package layer.
    pub base_sha256: String,
    /// The apt sources used, each with the digest of the index file that pins its contents.
    pub sources: Vec<SourceRecord>,
}

/// One apt source as it was used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    /// Where it came from: `host` (the build machine's apt sources), `recipe`, or an overlay's name.
    pub origin: String,
    /// The repository URI.
    pub uri: String,
    /// The suite.
    pub suite: String,
    /// The components.
    pub components: Vec<String>,
    /// sha256 of the repository's `InRelease` (or `Release`) file at build time.
    pub release_sha256: String,
    /// sha256 of the signing key given for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

/// One overlay as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayInput {
    /// The overlay's folder name.
    pub name: String,
    /// sha256 over every file of the overlay's folder (path, mode and contents).
    pub sha256: String,
}

/// A pinned artifact as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    /// The overlay that declared it.
    pub overlay: String,
    /// The artifact's name in its overlay.
    pub name: String,
    /// Where it was fetched from.
    pub url: String,
    /// The checksum file its digest was resolved from, if it was not pinned directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_url: Option<String>,
    /// The verified digest.
    pub sha256: String,
    /// Where it lands in the image.
    pub dest: String,
}

/// The kernel as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRecord {
    /// The Debian package that provided it (the recipe's choice).
    pub package: String,
    /// The kernel release, as `uname -r` prints it on the node.
    pub release: String,
    /// The command line: the recipe's, then each overlay's additions.
    pub cmdline: String,
}

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecord {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Architecture (`amd64`, `all`).
    pub architecture: String,
}

/// One published file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRecord {
    /// Path relative to the version folder, with `/` separators.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the contents, lowercase hex.
    pub sha256: String,
}

/// The kernel command line that boots a published version through ironbake's first stage:
/// the recipe's own command line, then the `ironbake.*` parameters (the contract is in
/// ARCHITECTURE.md). `root_url` is where `out/` is served (`http://10.0.2.2:8080`), and
/// `server` is where the node reports ready.
pub fn boot_cmdline(m: &Manifest, root_url: &str, node: &str, server: &str) -> String {
    let layers: Vec<String> = m
        .layers
        .iter()
        .map(|l| {
            let digest = m
                .outputs
                .iter()
                .find(|o| &o.path == l)
                .map_or("", |o| o.sha256.as_str());
            format!("{l}:{digest}")
        })
        .collect();
    let mut line = m.kernel.cmdline.clone();
    if !line.is_empty() {
        line.push(' ');
    }
    line.push_str(&format!(
        "ironbake.image={}/{}/{}/ ironbake.layers={} ironbake.node={node} ironbake.server={server}",
        root_url.trim_end_matches('/'),
        m.recipe,
        m.version,
        layers.join(",")
    ));
    line
}

/// A problem reading the published layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file or folder could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A manifest is not valid JSON of the expected schema.
    #[error("{path} is not a valid ironbake manifest: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A manifest has a schema this release does not read.
    #[error("{path} has manifest schema {found}; this netboot reads schema {SCHEMA}")]
    Schema {
        /// The manifest file.
        path: PathBuf,
        /// The schema it declares.
        found: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Parses a manifest from its JSON text (no IO).
pub fn parse_manifest(text: &str) -> Result<Manifest, serde_json::Error> {
    serde_json::from_str(text)
}

/// Reads and checks `VERSION_DIR/manifest.json`.
pub fn load_manifest(version_dir: &Path) -> Result<Manifest, LayoutError> {
    let path = version_dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    // Read the schema first so an old or new manifest gets a precise error, not a field error.
    #[derive(Deserialize)]
    struct Head {
        schema: u32,
    }
    let head: Head = serde_json::from_str(&text).map_err(|source| LayoutError::Manifest {
        path: path.clone(),
        source,
    })?;
    if head.schema != SCHEMA {
        return Err(LayoutError::Schema {
            path,
            found: head.schema,
        });
    }
    parse_manifest(&text).map_err(|source| LayoutError::Manifest { path, source })
}

/// The published versions of one recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeVersions {
    /// The recipe name (the folder name under `out/`).
    pub recipe: String,
    /// The versions, sorted by name.
    pub versions: Vec<String>,
    /// The version `current` points at, if the pointer exists.
    pub current: Option<String>,
}

/// Lists every recipe folder under `root` with its published versions.
///
/// A missing `root` is an empty list. Hidden entries are skipped.
pub fn list_published(root: &Path) -> Result<Vec<RecipeVersions>, LayoutError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type().map_err(io_err(root))?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let mut versions = Vec::new();
        for v in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let v = v.map_err(io_err(&dir))?;
            let vname = v.file_name().to_string_lossy().into_owned();
            if vname.starts_with('.') || vname == CURRENT {
                continue;
            }
            if v.file_type().map_err(io_err(&dir))?.is_dir() {
                versions.push(vname);
            }
        }
        versions.sort();
        let current = read_current(&dir)?;
        out.push(RecipeVersions {
            recipe: name,
            versions,
            current,
        });
    }
    out.sort_by(|a, b| a.recipe.cmp(&b.recipe));
    Ok(out)
}

/// Reads the `current` pointer of a recipe folder: the version it names, if it exists.
pub fn read_current(recipe_dir: &Path) -> Result<Option<String>, LayoutError> {
    let link = recipe_dir.join(CURRENT);
    match fs::read_link(&link) {
        Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&link)(e)),
    }
}

/// One way a published version differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A file the manifest lists is not there.
    Missing(String),
    /// A file is there that the manifest does not list.
    Unlisted(String),
    /// A file's size differs.
    Size {
        /// The file.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A file's digest differs.
    Digest {
        /// The file.
        path: String,
        /// Digest in the manifest.
        expected: String,
        /// Digest on disk.
        actual: String,
    },
    /// `SHA256SUMS` does not agree with the manifest and the files.
    Sums(String),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Missing(p) => write!(f, "{p}: missing (listed in {MANIFEST})"),
            Mismatch::Unlisted(p) => write!(f, "{p}: present but not listed in {MANIFEST}"),
            Mismatch::Size {
                path,
                expected,
                actual,
            } => {
                write!(f, "{path}: size {actual} bytes, manifest says {expected}")
            }
            Mismatch::Digest {
                path,
                expected,
                actual,
            } => {
                write!(f, "{path}: sha256 {actual}, manifest says {expected}")
            }
            Mismatch::Sums(why) => write!(f, "{SHA256SUMS}: {why}"),
        }
    }
}

/// The sha256 of everything `reader` yields, lowercase hex, with the byte count.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The sha256 of a file's contents, lowercase hex, with its size.
pub fn sha256_file(path: &Path) -> Result<(String, u64), LayoutError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    sha256_reader(io::BufReader::new(file)).map_err(io_err(path))
}

/// Renders the `SHA256SUMS` text for a manifest: its outputs and the manifest's own digest.
pub fn sha256sums_text(outputs: &[OutputRecord], manifest_sha256: &str) -> String {
    let mut lines: BTreeMap<&str, &str> = outputs
        .iter()
        .map(|o| (o.path.as_str(), o.sha256.as_str()))
        .collect();
    lines.insert(MANIFEST, manifest_sha256);
    lines.iter().map(|(p, d)| format!("{d}  {p}\n")).collect()
}

/// Lists the regular files under `dir` as `/`-separated relative paths, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>, LayoutError> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), LayoutError> {
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err(&path))?;
            if ft.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).expect("walk stays under its base");
                let parts: Vec<_> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Re-hashes every file of a published version and compares it with the manifest and
/// `SHA256SUMS`. An empty list means the version is intact.
pub fn verify(version_dir: &Path) -> Result<(Manifest, Vec<Mismatch>), LayoutError> {
    let manifest = load_manifest(version_dir)?;
    let mut problems = Vec::new();
    let on_disk = list_files(version_dir)?;
    let listed: BTreeMap<&str, &OutputRecord> = manifest
        .outputs
        .iter()
        .map(|o| (o.path.as_str(), o))
        .collect();
    for path in &on_disk {
        if path != MANIFEST && path != SHA256SUMS && !listed.contains_key(path.as_str()) {
            problems.push(Mismatch::Unlisted(path.clone()));
        }
    }
    for (path, rec) in &listed {
        let file = version_dir.join(path);
        if !on_disk.iter().any(|p| p == path) {
            problems.push(Mismatch::Missing(path.to_string()));
            continue;
        }
        let (digest, size) = sha256_file(&file)?;
        if size != rec.size {
            problems.push(Mismatch::Size {
                path: path.to_string(),
                expected: rec.size,
                actual: size,
            });
        }
        if digest != rec.sha256 {
            problems.push(Mismatch::Digest {
                path: path.to_string(),
                expected: rec.sha256.clone(),
                actual: digest,
            });
        }
    }
    let sums_path = version_dir.join(SHA256SUMS);
    match fs::read_to_string(&sums_path) {
        Ok(text) => {
            let (manifest_digest, _) = sha256_file(&version_dir.join(MANIFEST))?;
            let expected = sha256sums_text(&manifest.outputs, &manifest_digest);
            if text != expected {
                problems.push(Mismatch::Sums(
                    "does not match the manifest and manifest.json's digest".into(),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            problems.push(Mismatch::Missing(SHA256SUMS.into()))
        }
        Err(e) => return Err(io_err(&sums_path)(e)),
    }
    Ok((manifest, problems))
}

/// Is `name` a valid recipe or overlay name (lowercase letters, digits, `-`, `_`)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with('-')
}

/// Is `version` a valid published version name (letters, digits, `.`, `-`, `_`, `+`; not
/// starting with `.` or `-`), so it names one folder and never climbs out of one?
pub fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 128
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        && !version.starts_with(['.', '-'])
}

/// The folder of a version that holds its node templates.
pub const NODE_TEMPLATES: &str = "node-templates";

/// Reads a published version's node templates (`node-templates/**.j2`), with the modes its
/// manifest gives them (0644 when it names none).
pub fn load_node_templates(
    version_dir: &Path,
    manifest: &Manifest,
) -> io::Result<Vec<crate::template::TemplateSource>> {
    let root = version_dir.join(NODE_TEMPLATES);
    let mut out = Vec::new();
    if !root.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let Some(dest) = rel.strip_suffix(".j2") else {
                continue;
            };
            let dest = format!("/{dest}");
            let mode = manifest
                .node_template_modes
                .get(&dest)
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0o644);
            out.push(crate::template::TemplateSource {
                file: format!("{NODE_TEMPLATES}/{rel}"),
                dest,
                text: fs::read_to_string(&p)?,
                mode,
            });
        }
    }
    out.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_chunks_of_a_sparse_file_are_those_of_its_bytes() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = fs::File::create(&path).unwrap();
        // Data at the start, in the middle of the third piece, and in the last partial piece;
        // holes between.
        let len = 4 * DISK_CHUNK + 12345;
        f.set_len(len).unwrap();
        for (at, fill) in [(0, 1u8), (2 * DISK_CHUNK + 777, 2), (len - 9000, 3)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![fill; 5000]).unwrap();
        }
        drop(f);
        let bytes = fs::read(&path).unwrap();
        let mut want = String::new();
        for (i, piece) in bytes.chunks(DISK_CHUNK as usize).enumerate() {
            let off = i as u64 * DISK_CHUNK;
            let d = hex::encode(Sha256::digest(piece));
            want.push_str(&format!("{off} {} {d}\n", piece.len()));
        }
        let (text, sha, n) = disk_chunks(&fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(text, want);
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(n, len);
        assert_eq!(text.lines().count(), 5);
    }

    #[test]
    fn disk_chunks_hashed_as_written_are_those_of_the_finished_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = fs::File::create_new(&path).unwrap();
        let len = 5 * DISK_CHUNK + 4096;
        f.set_len(len).unwrap();
        let written = Written::default();
        let reader = fs::File::open(&path).unwrap();
        let (text, sha, n) = std::thread::scope(|s| {
            let hashing = s.spawn(|| disk_chunks_as_written(&reader, &written).unwrap());
            // In order, as a disk image is written, each region said final after it is; the
            // hasher must not read a piece before (it would see zeros where data comes).
            for (i, at) in [0, DISK_CHUNK + 5, 3 * DISK_CHUNK - 100, len - 10]
                .into_iter()
                .enumerate()
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
                f.write_all_at(&[i as u8 + 1; 4000][..(len - at).min(4000) as usize], at)
                    .unwrap();
                written.advance(at + 1);
            }
            written.finish();
            hashing.join().unwrap()
        });
        let bytes = fs::read(&path).unwrap();
        assert_eq!(n, len);
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(
            text,
            disk_chunks(&fs::File::open(&path).unwrap()).unwrap().0
        );

        // A writer that gives up: the hasher stops with an error instead of waiting.
        let again = Written::default();
        let r = std::thread::scope(|s| {
            let hashing = s.spawn(|| disk_chunks_as_written(&reader, &again));
            again.advance(DISK_CHUNK);
            again.abandon();
            hashing.join().unwrap()
        });
        assert!(r.unwrap_err().to_string().contains("not finished"));
    }

    #[test]
    fn sums_text_is_sorted_and_includes_the_manifest() {
        let outputs = vec![
            OutputRecord {
                path: "vmlinuz".into(),
                size: 1,
                sha256: "bb".into(),
            },
            OutputRecord {
                path: "base.squashfs".into(),
                size: 1,
                sha256: "aa".into(),
            },
        ];
        assert_eq!(
            sha256sums_text(&outputs, "cc"),
            "aa  base.squashfs\ncc  manifest.json\nbb  vmlinuz\n"
        );
    }

    #[test]
    fn sha256_of_known_input() {
        let (d, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn the_boot_command_line_names_every_layer_with_its_digest() {
        let text = r#"{"schema":1,"recipe":"ci-node","version":"1-abc","inputs_sha256":"x","builder":"0","source_date_epoch":0,
            "recipe_file":{"path":"r","sha256":"s"},"debian":{"suite":"b","variant":"v","base_sha256":"k","sources":[]},
            "overlays":[],"artifacts":[],"kernel":{"package":"p","release":"r","cmdline":"console=ttyS0 quiet"},
            "layers":["base.squashfs","overlay.squashfs"],"packages":[],
            "outputs":[{"path":"base.squashfs","size":1,"sha256":"aa"},{"path":"overlay.squashfs","size":1,"sha256":"bb"}]}"#;
        let m = parse_manifest(text).unwrap();
        assert_eq!(
            boot_cmdline(&m, "http://10.0.2.2:8080/", "ci0", "http://10.0.2.2:8080"),
            "console=ttyS0 quiet ironbake.image=http://10.0.2.2:8080/ci-node/1-abc/ \
             ironbake.layers=base.squashfs:aa,overlay.squashfs:bb ironbake.node=ci0 ironbake.server=http://10.0.2.2:8080"
        );
    }

    #[test]
    fn listing_a_missing_root_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_published(&dir.path().join("nope")).unwrap().is_empty());
    }
}
