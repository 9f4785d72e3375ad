//! apt sources: reading the build host's, and pinning each one by the digest of its signed
//! `InRelease` file, so the package layer's cache key changes when the archive does.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One `deb` source: a repository, a suite and components.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    /// Where it was declared: `host`, `recipe`, or an overlay's name.
    pub origin: String,
    /// Repository URI (`http://`, `https://` or `file://`).
    pub uri: String,
    /// Suite.
    pub suite: String,
    /// Components.
    pub components: Vec<String>,
}

/// Parses the host's apt sources: deb822 `.sources` text and one-line `.list` text.
/// Only `deb` entries are kept (no `deb-src`), with `Enabled: no` entries dropped.
pub fn parse_sources(text: &str, deb822: bool) -> Vec<Source> {
    let mut out = Vec::new();
    if deb822 {
        for para in text.split("\n\n") {
            let mut types = Vec::new();
            let (mut uris, mut suites, mut comps) = (Vec::new(), Vec::new(), Vec::new());
            let mut enabled = true;
            for line in para.lines() {
                if line.starts_with('#') || line.starts_with([' ', '\t']) {
                    continue;
                }
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let words = v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => types = words,
                    "uris" => uris = words,
                    "suites" => suites = words,
                    "components" => comps = words,
                    "enabled" => enabled = v.trim() != "no",
                    _ => {}
                }
            }
            if !enabled || !types.iter().any(|t| t == "deb") {
                continue;
            }
            for uri in &uris {
                for suite in &suites {
                    out.push(Source {
                        origin: "host".into(),
                        uri: uri.trim_end_matches('/').to_string(),
                        suite: suite.clone(),
                        components: comps.clone(),
                    });
                }
            }
        }
    } else {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace().peekable();
            if words.next() != Some("deb") {
                continue;
            }
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
                continue;
            };
            out.push(Source {
                origin: "host".into(),
                uri: uri.trim_end_matches('/').to_string(),
                suite: suite.to_string(),
                components: words.map(str::to_string).collect(),
            });
        }
    }
    out
}

/// The host's Debian sources for `suite`: entries for `suite`, `suite-updates` and
/// `suite-security` from `/etc/apt/sources.list` and `/etc/apt/sources.list.d/`, restricted to
/// `components`. Third-party repositories on the host are not Debian and are left out: only
/// sources that carry `main` are kept.
pub fn host_sources(etc_apt: &Path, suite: &str, components: &[String]) -> Result<Vec<Source>> {
    let mut all = Vec::new();
    let list = etc_apt.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&list) {
        all.extend(parse_sources(&text, false));
    }
    let dir = etc_apt.join("sources.list.d");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let deb822 = p.extension().is_some_and(|e| e == "sources");
            if !(deb822 || p.extension().is_some_and(|e| e == "list")) {
                continue;
            }
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            all.extend(parse_sources(&text, deb822));
        }
    }
    let wanted = [
        suite.to_string(),
        format!("{suite}-updates"),
        format!("{suite}-security"),
    ];
    let mut out: Vec<Source> = Vec::new();
    for mut s in all {
        if !wanted.contains(&s.suite) || !s.components.iter().any(|c| c == "main") {
            continue;
        }
        s.components.retain(|c| components.contains(c));
        if !out.iter().any(|o| o.uri == s.uri && o.suite == s.suite) {
            out.push(s);
        }
    }
    if !out.iter().any(|s| s.suite == suite) {
        bail!(
            "the build host's apt sources ({}) have no Debian entry for suite {suite:?}; \
             add one, or set `mirror = \"http://...\"` under [debian] in the recipe",
            etc_apt.display()
        );
    }
    Ok(out)
}

/// How long one fetch of an index file may take before the source counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches `URI/dists/SUITE/InRelease` (or `Release`) and returns its bytes. `recipe` names
/// the build in the message that says how to get past an unreachable source.
pub fn fetch_release(source: &Source, recipe: &str) -> Result<Vec<u8>> {
    let mut last_err = None;
    for name in ["InRelease", "Release"] {
        let url = format!("{}/dists/{}/{}", source.uri, source.suite, name);
        match fetch_small(&url) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => last_err = Some(e),
        }
    }
    let err = last_err.expect("tried at least once");
    bail!(
        "apt source {:?} ({} {}, from {}) cannot be reached: {err:#}\n  \
         to get past it: point it at a reachable or local mirror (a `file://` URI works), \
         or {}",
        source.uri,
        source.suite,
        source.components.join(" "),
        source.origin,
        way_past(&source.origin, recipe)
    )
}

/// The second way past an unreachable source, by where it was declared.
fn way_past(origin: &str, recipe: &str) -> String {
    if origin == "host" || origin == "recipe" {
        "build without network access by setting `mirror` under [debian] to a local mirror"
            .to_string()
    } else {
        format!(
            "leave the overlay {origin:?} out of this build, knowingly: \
             `{} build {recipe} --without {origin}` (the manifest records it)",
            crate::cli::invoked_as()
        )
    }
}

/// Returns the signing key of an overlay's apt source as a file: the overlay's own, or a
/// download checked against its pinned digest and cached by that digest.
pub fn resolve_key(
    recipe: &str,
    overlay: &str,
    overlay_dir: &Path,
    source: &crate::overlay::AptSource,
    cache: &Path,
) -> Result<std::path::PathBuf> {
    use crate::overlay::KeySource;
    use sha2::{Digest, Sha512};
    match &source.key {
        KeySource::File(rel) => Ok(overlay_dir.join(rel.as_str())),
        KeySource::Url { url, digest } => {
            let (algorithm, digest) = digest.parts();
            let dir = cache.join("keys").join(algorithm);
            let path = dir.join(format!("{digest}.{}", source.key_extension()));
            if path.is_file() {
                return Ok(path);
            }
            let bytes = fetch_small(url).with_context(|| {
                format!(
                    "the signing key of apt source {:?} (overlay {overlay:?}) cannot be fetched \
                     from {url}\n  to get past it: download it where you can and give it as \
                     `key = \"keys/NAME.gpg\"` in overlays/{overlay}/overlay.toml, or {}",
                    source.name.as_str(),
                    way_past(overlay, recipe)
                )
            })?;
            let actual = match algorithm {
                "sha512" => hex::encode(Sha512::digest(&bytes)),
                _ => crate::digest::sha256_hex(&bytes),
            };
            if actual != digest {
                bail!(
                    "the signing key of apt source {:?} (overlay {overlay:?}) from {url} does \
                     not match its pinned digest\n  expected {algorithm} {digest}\n  actual   \
                     {algorithm} {actual}\n  nothing was built; check the key's publisher for \
                     its current digest before changing overlays/{overlay}/overlay.toml",
                    source.name.as_str()
                );
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let tmp = dir.join(format!(".tmp-{}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(path)
        }
    }
}

/// An OpenPGP key in binary form: armored (`.asc`) keys are decoded.
pub fn dearmor(bytes: &[u8]) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(bytes);
    if !text
        .trim_start()
        .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    {
        return Ok(bytes.to_vec());
    }
    let mut body = String::new();
    let mut in_body = false;
    let mut headers_done = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            in_body = true;
            continue;
        }
        if line.starts_with("-----END PGP PUBLIC KEY BLOCK-----") {
            break;
        }
        if !in_body {
            continue;
        }
        if !headers_done {
            // Armor headers ("Comment: ...") end at the first empty line.
            if line.is_empty() {
                headers_done = true;
            } else if !line.contains(": ") {
                headers_done = true;
                body.push_str(line);
            }
            continue;
        }
        if line.starts_with('=') {
            break; // the CRC-24 line
        }
        body.push_str(line);
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .context("the armored key's body is not valid base64")
}

/// Checks that `release` (an `InRelease` file, or a `Release` file with its detached
/// `Release.gpg` fetched beside it) is signed by the key in `key_path`, with gpgv.
pub fn verify_release(source: &Source, release: &[u8], key_path: &Path) -> Result<()> {
    let tmp = tempfile::tempdir().context("making a folder for gpgv")?;
    let keyring = tmp.path().join("keyring.gpg");
    let key = std::fs::read(key_path).with_context(|| format!("reading {}", key_path.display()))?;
    std::fs::write(&keyring, dearmor(&key)?)?;
    let inline = release.starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----");
    let data = tmp
        .path()
        .join(if inline { "InRelease" } else { "Release" });
    std::fs::write(&data, release)?;
    let mut files = Vec::new();
    if !inline {
        let url = format!("{}/dists/{}/Release.gpg", source.uri, source.suite);
        let sig = fetch_small(&url).with_context(|| {
            format!(
                "apt source {:?} (from {}) has no InRelease, and its Release.gpg cannot be \
                 fetched: a source with a key must be signed",
                source.uri, source.origin
            )
        })?;
        let sig_path = tmp.path().join("Release.gpg");
        std::fs::write(&sig_path, sig)?;
        files.push(sig_path);
    }
    files.push(data);
    let checked = crate::exec::Tool::new("gpgv")
        .arg("--homedir")
        .arg(tmp.path())
        .arg("--keyring")
        .arg(&keyring)
        .args(&files)
        .run(None);
    if let Err(e) = checked {
        bail!(
            "apt source {:?} ({} {}, from {}): its {} is not signed by the key {}\n  {e:#}\n  \
             nothing was built; if the repository changed its key, get the new one from its \
             publisher and update the overlay",
            source.uri,
            source.suite,
            source.components.join(" "),
            source.origin,
            if inline { "InRelease" } else { "Release" },
            key_path.display(),
        );
    }
    Ok(())
}

/// Fetches a small file (an index, a checksum list) over http(s) or from a `file://` URL.
pub fn fetch_small(url: &str) -> Result<Vec<u8>> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).with_context(|| format!("reading {path}"));
    }
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .new_agent();
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .with_context(|| format!("reading {url}"))?;
    Ok(bytes)
}

/// The `Date:` field of a Release file as seconds since the epoch.
pub fn release_date(release: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(release);
    let line = text.lines().find_map(|l| l.strip_prefix("Date:"))?;
    crate::date::parse_rfc2822(line.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_one_line_sources_parse() {
        let deb822 = "Types: deb deb-src\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: http://x\nSuites: bookworm\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://y\nSuites: bookworm\nComponents: main\n";
        let s = parse_sources(deb822, true);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://m.example/debian");
        assert_eq!(s[1].suite, "bookworm-updates");
        assert_eq!(s[0].components, ["main", "contrib"]);
        let one = "# c\ndeb [arch=amd64 signed-by=/k] http://m.example/debian bookworm main\ndeb-src http://z bookworm main\n";
        let s = parse_sources(one, false);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].uri.as_str(), s[0].suite.as_str()),
            ("http://m.example/debian", "bookworm")
        );
    }

    #[test]
    fn host_sources_keep_debian_entries_for_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "deb https://third.example/apt cloud main-ish\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates trixie\nComponents: main\n\nTypes: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
        .unwrap();
        let s = host_sources(dir.path(), "bookworm", &["main".into()]).unwrap();
        let got: Vec<_> = s.iter().map(|s| s.suite.as_str()).collect();
        assert_eq!(got, ["bookworm", "bookworm-updates", "bookworm-security"]);
        let err = host_sources(dir.path(), "sid", &["main".into()]).unwrap_err();
        assert!(format!("{err}").contains("no Debian entry for suite \"sid\""));
    }

    #[test]
    fn unreachable_sources_say_how_to_get_past_them() {
        let s = Source {
            origin: "extra".into(),
            uri: "file:///nonexistent/repo".into(),
            suite: "bookworm".into(),
            components: vec!["main".into()],
        };
        let msg = format!("{:#}", fetch_release(&s, "demo").unwrap_err());
        assert!(
            msg.contains("cannot be reached")
                && msg.contains("ironbake build demo --without extra"),
            "{msg}"
        );
    }

    #[test]
    fn armored_keys_are_decoded_and_binary_keys_kept() {
        let armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: test\n\nmDMEaWly\nb25iYWtl\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n";
        assert_eq!(
            dearmor(armored.as_bytes()).unwrap(),
            b"\x98\x33\x04\x69ironbake"
        );
        assert_eq!(dearmor(b"\x99\x01binary").unwrap(), b"\x99\x01binary");
        let bad =
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n";
        assert!(dearmor(bad.as_bytes()).is_err());
    }
}
