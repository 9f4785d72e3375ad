//! One Debian package, fetched by name from Debian sources and checked the way apt checks what
//! it installs: apt itself reads the sources' signed indexes (in a private apt state folder,
//! so the build host's apt is neither used nor changed) and says where the package is and
//! what its sha256 must be (`apt-get download --print-uris`); the download is then checked
//! against that digest and kept in the cache under it. Installer recipes take the Debian
//! installer's netboot files from such a package.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::apt::Source;
use crate::exec::Tool;
use crate::progress::Stage;

/// The keyring that signs Debian's archive, on every Debian host.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A package fetched into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The `.deb` in the cache (named by its sha256).
    pub path: PathBuf,
    /// Its file name in the archive (`NAME_VERSION_ARCH.deb`).
    pub file: String,
    /// The package's version.
    pub version: String,
    /// Where it was downloaded from.
    pub url: String,
    /// Its sha256, as the signed index gives it.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One line of `apt-get download --print-uris`:
/// `'URL' NAME_VERSION_ARCH.deb SIZE SHA256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// The URL.
    pub url: String,
    /// The file name.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// Parses apt's `--print-uris` line for one package.
pub fn parse_print_uris(text: &str) -> Result<Uri> {
    let line = text
        .lines()
        .find(|l| l.starts_with('\''))
        .with_context(|| format!("apt printed no URI: {text:?}"))?;
    let (url, rest) = line[1..]
        .split_once("' ")
        .with_context(|| format!("cannot read apt's line {line:?}"))?;
    let mut words = rest.split_whitespace();
    let (Some(file), Some(size), Some(hash)) = (words.next(), words.next(), words.next()) else {
        bail!("cannot read apt's line {line:?}");
    };
    let sha256 = hash
        .strip_prefix("SHA256:")
        .with_context(|| format!("apt gave no SHA256 for {file} ({hash})"))?;
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("apt gave a malformed SHA256 for {file}: {sha256}");
    }
    Ok(Uri {
        url: url.to_string(),
        file: file.to_string(),
        size: size
            .parse()
            .with_context(|| format!("apt gave a malformed size for {file}: {size}"))?,
        sha256: sha256.to_ascii_lowercase(),
    })
}

/// The version in a `NAME_VERSION_ARCH.deb` file name (apt writes an epoch's colon as `%3a`).
pub fn version_of(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (_, version, _) = (parts.next()?, parts.next()?, parts.next()?);
    Some(version.replace("%3a", ":"))
}

/// `sources.list` lines for `sources`, each signed by `keyring`.
pub fn sources_list(sources: &[Source], keyring: &Path) -> String {
    let mut s = String::new();
    for src in sources {
        let uri = match src.uri.strip_prefix("file://") {
            Some(path) => format!("copy://{path}"),
            None => src.uri.clone(),
        };
        s.push_str(&format!(
            "deb [signed-by={}] {uri} {} {}\n",
            keyring.display(),
            src.suite,
            src.components.join(" ")
        ));
    }
    s
}

/// Fetches `package` (`NAME` or `NAME=VERSION`) from `sources`, whose indexes `keyring`
/// signs, into `cache/debs/`. `recipe` names the build in errors.
pub fn fetch(
    sources: &[Source],
    keyring: &Path,
    package: &str,
    cache: &Path,
    recipe: &str,
    stage: &Stage<'_>,
) -> Result<Fetched> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".apt-")
        .tempdir_in(&debs)
        .context("making a private apt folder")?;
    let w = work.path();
    for d in [
        "etc/sources.list.d",
        "etc/preferences.d",
        "state/lists/partial",
        "cache/archives/partial",
    ] {
        fs::create_dir_all(w.join(d))?;
    }
    fs::write(w.join("etc/sources.list"), sources_list(sources, keyring))?;
    fs::write(w.join("state/status"), "")?;
    let opts = |t: Tool| {
        t.arg("-q")
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                w.join("etc/sources.list").display()
            ))
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceParts={}",
                w.join("etc/sources.list.d").display()
            ))
            .arg("-o")
            .arg(format!(
                "Dir::Etc::Preferences={}",
                w.join("etc/preferences").display()
            ))
            .arg("-o")
            .arg(format!(
                "Dir::Etc::PreferencesParts={}",
                w.join("etc/preferences.d").display()
            ))
            .arg("-o")
            .arg(format!("Dir::State={}", w.join("state").display()))
            .arg("-o")
            .arg(format!(
                "Dir::State::status={}",
                w.join("state/status").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", w.join("cache").display()))
            .arg("-o")
            .arg("Debug::NoLocking=true")
            .arg("-o")
            .arg("Acquire::Languages=none")
    };
    let sink = |l: &str| stage.line(l);
    opts(Tool::new("apt-get"))
        .arg("update")
        .run(Some(&sink))
        .with_context(|| {
            format!(
                "reading the Debian indexes for {package} ({recipe}): every source must be \
                 reachable and signed by {}",
                keyring.display()
            )
        })?;
    let printed = opts(Tool::new("apt-get"))
        .args(["download", "--print-uris", package])
        .run_capture(Some(&sink))
        .with_context(|| format!("finding {package} in the Debian sources of {recipe}"))?;
    let uri = parse_print_uris(&printed)?;
    let version = version_of(&uri.file)
        .with_context(|| format!("apt named {package}'s file {:?}", uri.file))?;
    let dest = debs.join(format!("{}.deb", uri.sha256));
    let fetched = Fetched {
        path: dest.clone(),
        file: uri.file.clone(),
        version,
        url: uri.url.clone(),
        sha256: uri.sha256.clone(),
        size: uri.size,
    };
    if dest.is_file() {
        return Ok(fetched);
    }
    let tmp = w.join(&uri.file);
    download(&uri, &tmp, stage)?;
    fs::rename(&tmp, &dest).with_context(|| format!("keeping {}", dest.display()))?;
    Ok(fetched)
}

/// Downloads `uri` to `dest`, checking its size and sha256.
fn download(uri: &Uri, dest: &Path, stage: &Stage<'_>) -> Result<()> {
    let mut reader: Box<dyn Read> = match uri
        .url
        .strip_prefix("copy://")
        .or(uri.url.strip_prefix("file://"))
    {
        Some(path) => Box::new(fs::File::open(path).with_context(|| format!("opening {path}"))?),
        None => Box::new(
            ureq::get(&uri.url)
                .call()
                .with_context(|| format!("downloading {}", uri.url))?
                .into_body()
                .into_reader(),
        ),
    };
    let mut out = fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    let mut shown = std::time::Instant::now();
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("downloading {}", uri.url))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        got += n as u64;
        if shown.elapsed().as_secs_f64() >= 1.0 {
            shown = std::time::Instant::now();
            stage.line(&format!(
                "{}: {} of {} MiB",
                uri.file,
                got >> 20,
                uri.size >> 20
            ));
        }
    }
    out.sync_all()?;
    let sha = hex::encode(hasher.finalize());
    if got != uri.size || sha != uri.sha256 {
        bail!(
            "{} is not what the signed index says: {got} bytes with sha256 {sha}, expected {} \
             bytes with sha256 {}",
            uri.url,
            uri.size,
            uri.sha256
        );
    }
    Ok(())
}

/// Extracts `members` (paths inside the package, `./usr/...`) of the `.deb` at `deb` into
/// `dest`, each under its file name; fails naming any that is missing.
pub fn extract(deb: &Path, members: &[&str], dest: &Path) -> Result<Vec<PathBuf>> {
    let tree = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dest)
        .context("making an extraction folder")?;
    Tool::new("dpkg-deb")
        .arg("--extract")
        .arg(deb)
        .arg(tree.path())
        .run(None)
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let mut out = Vec::new();
    for m in members {
        let src = tree.path().join(m.trim_start_matches("./"));
        let name = src.file_name().context("a member names a file")?;
        let to = dest.join(name);
        fs::rename(&src, &to).with_context(|| format!("{} has no {m}", deb.display()))?;
        out.push(to);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_print_uris_lines_are_read() {
        let text = "'http://mirror.example/debian/pool/main/d/debian-installer-netboot-images/debian-installer-12-netboot-amd64_20230607%2bdeb12u15_all.deb' debian-installer-12-netboot-amd64_20230607+deb12u15_all.deb 132886928 SHA256:6F1C0F5F3A07A3E7B2A4C1A1F1E7A4C0E0B7C2E9A1F3D2C4B5A6978800112233\n";
        let u = parse_print_uris(text).unwrap();
        assert_eq!(u.size, 132_886_928);
        assert_eq!(
            u.file,
            "debian-installer-12-netboot-amd64_20230607+deb12u15_all.deb"
        );
        assert!(u.url.ends_with("_all.deb") && u.url.starts_with("http://mirror.example/"));
        assert_eq!(
            u.sha256,
            "6f1c0f5f3a07a3e7b2a4c1a1f1e7a4c0e0b7c2e9a1f3d2c4b5a6978800112233"
        );
        assert_eq!(version_of(&u.file).unwrap(), "20230607+deb12u15");
        assert_eq!(version_of("bash_1%3a5.2-2_amd64.deb").unwrap(), "1:5.2-2");
        assert!(parse_print_uris("").is_err());
        assert!(parse_print_uris("'http://x/a.deb' a_1_all.deb 10 MD5Sum:abc").is_err());
        assert!(
            parse_print_uris(
                "'http://x/a.deb' a_1_all.deb ten SHA256:"
                    .to_string()
                    .as_str()
            )
            .is_err()
        );
    }

    #[test]
    fn sources_become_signed_list_lines() {
        let s = [
            Source {
                origin: "host".into(),
                uri: "http://mirror.example/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "non-free-firmware".into()],
            },
            Source {
                origin: "recipe".into(),
                uri: "file:///srv/mirror".into(),
                suite: "bookworm-updates".into(),
                components: vec!["main".into()],
            },
        ];
        assert_eq!(
            sources_list(&s, Path::new(DEBIAN_KEYRING)),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main non-free-firmware\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] copy:///srv/mirror bookworm-updates main\n"
        );
    }
}
