//! Pinned artifacts: downloads verified against a sha256 given in the overlay, or taken from a
//! published checksum file, and cached by that digest so a second build fetches nothing.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::overlay::{ArtifactDigest, ArtifactSpec};
use crate::plan::FetchedArtifact;

/// How long one artifact download may stall before it is abandoned.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The file name a URL ends with.
fn basename(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// Finds the digest for `file_name` in a `sha256sum`-format checksum list. A list with one
/// bare digest (and nothing else) applies to any file.
pub fn digest_from_sums(text: &str, file_name: &str) -> Option<String> {
    let is_digest = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let [only] = lines.as_slice()
        && is_digest(only)
    {
        return Some(only.to_ascii_lowercase());
    }
    lines.iter().find_map(|l| {
        let (digest, name) = l.split_once(char::is_whitespace)?;
        let name = name.trim_start().trim_start_matches('*');
        let name = name.rsplit('/').next().unwrap_or(name);
        (is_digest(digest) && name == file_name).then(|| digest.to_ascii_lowercase())
    })
}

fn open(url: &str) -> Result<Box<dyn Read>> {
    if let Some(path) = url.strip_prefix("file://") {
        let f = fs::File::open(path).with_context(|| format!("opening {path}"))?;
        return Ok(Box::new(io::BufReader::new(f)));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("{url}: only http://, https:// and file:// URLs are supported");
    }
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(READ_TIMEOUT))
        .build()
        .new_agent();
    let resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    Ok(Box::new(resp.into_body().into_reader()))
}

/// Where an artifact with this digest is cached.
pub fn cache_path(cache: &Path, sha256: &str) -> PathBuf {
    cache.join("artifacts").join("sha256").join(sha256)
}

/// What to do when an artifact cannot be downloaded from here.
fn way_past(recipe: &str, overlay: &str) -> String {
    format!(
        "\n  to get past it: download the file (and its checksum file) where you can, point \
         `url` (and `sha256-url`) at file:// copies in overlays/{overlay}/overlay.toml, or \
         leave the overlay out of this build, knowingly: \
         `{} build {recipe} --without {overlay}`",
        crate::cli::invoked_as()
    )
}

/// The sha256 an artifact must have: pinned in the overlay, or read from its checksum file.
fn expected_digest(recipe: &str, overlay: &str, spec: &ArtifactSpec) -> Result<String> {
    let sums_url = match &spec.digest {
        ArtifactDigest::Pinned(d) => return Ok(d.to_string()),
        ArtifactDigest::FromList(u) => u,
    };
    let what = format!("artifact {:?} of overlay {overlay:?}", spec.name);
    let text = crate::apt::fetch_small(sums_url).map_err(|e| {
        anyhow::anyhow!(
            "{what}: fetching its checksum file: {e:#}{}",
            way_past(recipe, overlay)
        )
    })?;
    let text = String::from_utf8_lossy(&text);
    let name = basename(&spec.url);
    digest_from_sums(&text, name).with_context(|| {
        format!("{what}: the checksum file {sums_url} has no sha256 line for {name:?}")
    })
}

/// Downloads `url` into a new file at `tmp`, synced; returns its sha256 and size.
fn download(url: &str, tmp: &Path) -> Result<(String, u64)> {
    let mut reader = open(url)?;
    let mut out = io::BufWriter::new(
        fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Resolves, fetches (if not cached) and verifies one artifact for `recipe`'s build.
pub fn fetch(
    recipe: &str,
    overlay: &str,
    spec: &ArtifactSpec,
    cache: &Path,
) -> Result<FetchedArtifact> {
    let what = format!("artifact {:?} of overlay {overlay:?}", spec.name);
    let expected = expected_digest(recipe, overlay, spec)?;
    let fetched = |path: PathBuf, size: u64| FetchedArtifact {
        overlay: overlay.into(),
        spec: spec.clone(),
        path,
        sha256: expected.clone(),
        size,
    };
    let path = cache_path(cache, &expected);
    if let Ok(m) = fs::metadata(&path)
        && m.is_file()
    {
        return Ok(fetched(path, m.len()));
    }
    let dir = path.parent().expect("cache path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), spec.name));
    let (actual, size) = download(&spec.url, &tmp).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::anyhow!(
            "{what}: fetching {}: {e:#}{}",
            spec.url,
            way_past(recipe, overlay)
        )
    })?;
    if actual != expected {
        let _ = fs::remove_file(&tmp);
        let from = match &spec.digest {
            ArtifactDigest::FromList(u) => format!(" (from {u})"),
            ArtifactDigest::Pinned(_) => String::new(),
        };
        bail!(
            "{what}: sha256 mismatch for {}\n  expected {expected}{from}\n  actual   {actual}\n  \
             if the new file is the one you want, update the digest in \
             overlays/{overlay}/overlay.toml",
            spec.url,
        );
    }
    fs::rename(&tmp, &path)?;
    Ok(fetched(path, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn checksum_lists_are_read_like_sha256sum_does() {
        let list = format!(
            "{}  k3s\n{D1} *k3s-arm64\n{D1}  dist/k3s-airgap.tar\n",
            "0".repeat(64)
        );
        assert_eq!(digest_from_sums(&list, "k3s").unwrap(), "0".repeat(64));
        assert_eq!(digest_from_sums(&list, "k3s-arm64").unwrap(), D1);
        assert_eq!(digest_from_sums(&list, "k3s-airgap.tar").unwrap(), D1);
        assert_eq!(digest_from_sums(&list, "other"), None);
        assert_eq!(
            digest_from_sums(&format!("{D1}\n"), "anything").unwrap(),
            D1
        );
        assert_eq!(basename("https://h/x/k3s?raw=1"), "k3s");
    }

    fn spec(url: String, sha256: Option<String>, sha256_url: Option<String>) -> ArtifactSpec {
        use crate::checked::{FetchUrl, ImagePath, Mode, Sha256};
        ArtifactSpec {
            name: "tool".into(),
            url: FetchUrl::try_from(url).unwrap(),
            digest: match (sha256, sha256_url) {
                (Some(d), None) => ArtifactDigest::Pinned(Sha256::try_from(d).unwrap()),
                (None, Some(u)) => ArtifactDigest::FromList(FetchUrl::try_from(u).unwrap()),
                _ => unreachable!("the tests give one"),
            },
            dest: ImagePath::try_from("/usr/bin/tool").unwrap(),
            mode: Mode::try_from("0755".to_string()).unwrap(),
        }
    }

    #[test]
    fn file_urls_are_fetched_verified_and_cached() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tool");
        fs::write(&src, "abc").unwrap();
        let cache = d.path().join("cache");
        let url = format!("file://{}", src.display());
        let got = fetch("r", "o", &spec(url.clone(), Some(D1.into()), None), &cache).unwrap();
        assert_eq!(got.sha256, D1);
        assert_eq!(fs::read(&got.path).unwrap(), b"abc");
        // Cached: the source can go away.
        fs::remove_file(&src).unwrap();
        assert!(fetch("r", "o", &spec(url.clone(), Some(D1.into()), None), &cache).is_ok());
        // A checksum file resolves the digest.
        fs::write(&src, "abc").unwrap();
        let sums = d.path().join("sha256sum.txt");
        fs::write(&sums, format!("{D1}  tool\n")).unwrap();
        let got = fetch(
            "r",
            "o",
            &spec(url, None, Some(format!("file://{}", sums.display()))),
            &cache,
        )
        .unwrap();
        assert_eq!(got.sha256, D1);
    }

    #[test]
    fn a_mismatch_is_an_error_that_names_both_digests_and_caches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tool");
        fs::write(&src, "abd").unwrap();
        let cache = d.path().join("cache");
        let err = fetch(
            "r",
            "o",
            &spec(format!("file://{}", src.display()), Some(D1.into()), None),
            &cache,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("sha256 mismatch")
                && msg.contains(D1)
                && msg.contains("overlays/o/overlay.toml"),
            "{msg}"
        );
        assert!(!cache_path(&cache, D1).exists());
        assert_eq!(
            fs::read_dir(cache.join("artifacts/sha256"))
                .unwrap()
                .count(),
            0,
            "no temporary left behind"
        );
        let missing = fetch(
            "r",
            "o",
            &spec("file:///nonexistent/tool".into(), Some(D1.into()), None),
            &cache,
        )
        .unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/tool"));
    }
}
