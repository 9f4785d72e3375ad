//! Shared helpers for the tool-backed tests: gating on tools and root, private project copies,
//! running the `ironbake` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// True if the test may run. A missing requirement fails the test when CI=true, and skips it
/// with a printed reason otherwise.
pub fn require(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !ironbake::exec::have_tool(t))
        .map(|t| t.to_string())
        .collect();
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1);
    if uid != 0 {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "needs {} (run `cargo xtask setup` as root)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test {msg}");
    }
    eprintln!("SKIPPED: this test {msg}");
    false
}

/// A scratch folder under the target folder (not /tmp: images are large).
pub fn scratch(name: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .unwrap()
}

/// The repository's project folder (tests run in the package's folder, inside it).
pub fn repository() -> PathBuf {
    ironbake::project::discover_here(None).unwrap()
}

/// A test project: a copy of the repository's recipes, overlays and inventory.
pub fn project(dir: &Path) -> PathBuf {
    let p = dir.join("project");
    ironbake::project::copy_inputs(&repository(), &p).unwrap();
    p
}

/// The result of one `ironbake` run.
#[derive(Debug)]
pub struct Run {
    /// Did it exit 0?
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `ironbake ARGS` against a project, out and cache folder.
pub fn run_ironbake(project: &Path, out: &Path, cache: &Path, args: &[&str]) -> Run {
    ironbake_env(project, out, cache, args, &[])
}

/// [`run_ironbake`] with extra environment variables.
pub fn ironbake_env(
    project: &Path,
    out: &Path,
    cache: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let o = ironbake_command(project, out, cache, args)
        .envs(env.iter().copied())
        .output()
        .expect("running ironbake");
    Run {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// The command for `ironbake ARGS`, not yet started.
pub fn ironbake_command(project: &Path, out: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ironbake"));
    c.args(args)
        .arg("--project")
        .arg(project)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .env("CI", "true");
    c
}

/// Copies a published version folder (its files) to `dst`.
pub fn copy_version(src: &Path, dst: &Path) {
    for p in netboot::layout::list_files(src).unwrap() {
        std::fs::create_dir_all(dst.join(&p).parent().unwrap()).unwrap();
        std::fs::copy(src.join(&p), dst.join(&p)).unwrap();
    }
}

/// Every path under `dir` with what it is: a folder (with its mode), a file (its mode, size
/// and sha256), or a symlink (its target); for before/after comparisons that catch a
/// same-length rewrite or a moved `current`.
pub fn snapshot(dir: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        return vec![];
    }
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let m = e.path().symlink_metadata().unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let what = if m.file_type().is_symlink() {
                format!(
                    "link -> {}",
                    std::fs::read_link(e.path()).unwrap().display()
                )
            } else if m.is_dir() {
                format!("dir {mode:04o}")
            } else {
                let (sha, len) = netboot::layout::sha256_file(e.path()).unwrap();
                format!("file {mode:04o} {len} {sha}")
            };
            (e.path().display().to_string(), what)
        })
        .collect();
    v.sort();
    v
}

/// `unsquashfs -lln` of an image: one line per path, numeric owners.
pub fn unsquashfs_list(image: &Path) -> String {
    let o = Command::new("unsquashfs")
        .arg("-lln")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "unsquashfs -lln {}: {}",
        image.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One file of an image, as text.
pub fn unsquashfs_cat(image: &Path, path: &str) -> String {
    let o = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "unsquashfs -cat {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The listing line of `path` (as `squashfs-root/PATH`) in an `unsquashfs -lln` listing.
pub fn entry<'a>(listing: &'a str, path: &str) -> Option<&'a str> {
    let want = format!("squashfs-root{path}");
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(5) == Some(want.as_str()))
}

/// Serves the files of `dir` over HTTP/1.0 on a loopback port, for as long as the test runs:
/// `GET /NAME` gives the file or 404. Returns the base URL (`http://127.0.0.1:PORT`).
pub fn serve_dir(dir: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Skip the headers up to the empty line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let name = path.trim_start_matches('/');
            let file = (!name.contains("..") && !name.is_empty())
                .then(|| std::fs::read(dir.join(name)).ok())
                .flatten();
            let _ = match file {
                Some(body) => conn
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| conn.write_all(&body)),
                None => conn.write_all(
                    b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    base
}
