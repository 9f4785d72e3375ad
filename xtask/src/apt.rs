//! apt sources: reading the build host's, and pinning each one by the digest of its signed
//! `InRelease` file, so the package layer's cache key changes when the archive does.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

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

/// Fetches `URI/dists/SUITE/InRelease` (or `Release`) and returns its bytes.
pub fn fetch_release(source: &Source) -> Result<Vec<u8>> {
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
         or build without {}",
        source.uri,
        source.suite,
        source.components.join(" "),
        source.origin,
        if source.origin == "host" || source.origin == "recipe" {
            "network access by setting `mirror` under [debian] to a local mirror".to_string()
        } else {
            format!(
                "the overlay {:?} (remove it from the recipe's overlays)",
                source.origin
            )
        }
    )
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

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `Date:` field of a Release file as seconds since the epoch.
pub fn release_date(release: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(release);
    let line = text.lines().find_map(|l| l.strip_prefix("Date:"))?;
    parse_rfc2822(line.trim())
}

/// Parses `Sat, 10 Aug 2024 09:36:41 UTC` (the form Release files use; `+0000`, `GMT` and
/// `UTC` zones) into seconds since the epoch.
pub fn parse_rfc2822(s: &str) -> Option<u64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut parts = s.split_whitespace();
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|x| x.parse::<u64>());
    let (h, m, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    match parts.next() {
        None | Some("UTC") | Some("GMT") | Some("+0000") | Some("Z") => {}
        Some(_) => return None,
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86400 + h * 3600 + m * 60 + sec)
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
    fn release_dates_parse() {
        assert_eq!(
            parse_rfc2822("Sat, 10 Aug 2024 09:36:41 UTC"),
            Some(1723282601)
        );
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(parse_rfc2822("Tue, 29 Feb 2000 12:00:00 +0100"), None);
        assert_eq!(
            release_date(b"Origin: Debian\nDate: Sat, 10 Aug 2024 09:36:41 UTC\n"),
            Some(1723282601)
        );
    }

    #[test]
    fn unreachable_sources_say_how_to_get_past_them() {
        let s = Source {
            origin: "extra".into(),
            uri: "file:///nonexistent/repo".into(),
            suite: "bookworm".into(),
            components: vec!["main".into()],
        };
        let msg = format!("{:#}", fetch_release(&s).unwrap_err());
        assert!(
            msg.contains("cannot be reached") && msg.contains("overlay \"extra\""),
            "{msg}"
        );
    }
}
