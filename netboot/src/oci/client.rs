//! A client of the OCI distribution API (distribution-spec 1.1): the calls push and sync
//! make, and the registry's authentication (a `Basic` challenge, or a `Bearer` challenge
//! answered by the token service it names, RFC 6750 with the distribution token flow).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::{Descriptor, MANIFEST_TYPE, OciError, Reference};

/// What the client will do in the repository (the scope it asks a token service for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read manifests and blobs.
    Pull,
    /// Read and write.
    Push,
}

/// The credentials given to the registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// None.
    #[default]
    Anonymous,
    /// A registry token, sent as `Authorization: Bearer`.
    Token(String),
    /// A user and password: sent as `Basic` to a registry that asks for it, or to its token
    /// service for a token.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => write!(f, "Anonymous"),
            Auth::Token(_) => write!(f, "Token(hidden)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, hidden)"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Reads a credentials file: TOML with `token = "..."`, or `username` and `password`. It must
/// be readable by its owner only.
pub fn load_auth(path: &Path) -> Result<Auth, OciError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(OciError::io(format!("reading {shown}")))?;
    let mode = std::fs::metadata(path)
        .map_err(OciError::io(format!("reading {shown}")))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(OciError::Credentials(format!(
            "{shown} is readable by others (mode {mode:04o}): `chmod 600 {shown}`"
        )));
    }
    let f: AuthFile = toml::from_str(&text)
        .map_err(|e| OciError::Credentials(format!("{shown}: {}", e.message())))?;
    match (f.token, f.username, f.password) {
        (Some(t), None, None) if !t.is_empty() => Ok(Auth::Token(t)),
        (None, Some(username), Some(password)) if !username.is_empty() => {
            Ok(Auth::Basic { username, password })
        }
        _ => Err(OciError::Credentials(format!(
            "{shown} must hold either `token = \"...\"` or `username = \"...\"` and \
             `password = \"...\"`"
        ))),
    }
}

/// One `WWW-Authenticate` challenge: its scheme and parameters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Scheme k="v", k2=v2` (RFC 9110 section 11.6.1; quoted values may hold commas).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(' ') {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end? + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// One repository of one registry, authenticated.
#[derive(Debug)]
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    /// What this client talks to.
    pub reference: Reference,
    authorization: Option<String>,
}

type Response = ureq::http::Response<ureq::Body>;

fn basic(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The start of a response body, for an error message.
fn body_start(r: &mut Response) -> String {
    let mut text = String::new();
    let _ = r.body_mut().as_reader().take(400).read_to_string(&mut text);
    let text = text.trim().replace('\n', " ");
    if text.is_empty() {
        "(no body)".into()
    } else {
        text
    }
}

impl Registry {
    /// Connects to the reference's registry and authenticates for `access` to its
    /// repository. Plain HTTP is used for a registry on loopback, or when `insecure` says so;
    /// HTTPS, with the system's roots, otherwise.
    pub fn connect(
        reference: &Reference,
        auth: &Auth,
        insecure: bool,
        access: Access,
    ) -> Result<Registry, OciError> {
        let scheme = if insecure || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            // Blob reads may be redirected to storage elsewhere; credentials stay with the
            // registry's own host.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("ironbake/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let mut r = Registry {
            agent,
            base: format!("{scheme}://{}", reference.registry),
            reference: reference.clone(),
            authorization: match auth {
                Auth::Token(t) => Some(format!("Bearer {t}")),
                _ => None,
            },
        };
        r.authenticate(auth, access)?;
        Ok(r)
    }

    /// `GET /v2/`, answering the registry's challenge if it makes one.
    fn authenticate(&mut self, auth: &Auth, access: Access) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let what = "asking the registry whether it speaks the distribution API";
        let mut resp = self.sent(self.agent.get(&url).call(), what, &url)?;
        match resp.status().as_u16() {
            200 => return Ok(()),
            401 => {}
            s => {
                return Err(OciError::Status {
                    what: what.into(),
                    url,
                    status: s,
                    hint: " (is this an OCI registry?)".into(),
                    body: body_start(&mut resp),
                });
            }
        }
        let header = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let challenge = parse_challenge(&header).ok_or_else(|| OciError::Status {
            what: what.into(),
            url: url.clone(),
            status: 401,
            hint: " without saying how to log in (no WWW-Authenticate)".into(),
            body: header.clone(),
        })?;
        let no_credentials = || {
            OciError::Credentials(format!(
                "{} wants credentials: give --auth FILE (username and password, or a token)",
                self.reference.registry
            ))
        };
        if challenge.scheme.eq_ignore_ascii_case("basic") {
            match auth {
                Auth::Basic { username, password } => {
                    self.authorization = Some(basic(username, password))
                }
                Auth::Token(_) => {
                    return Err(OciError::Credentials(format!(
                        "{} refused the token and asks for a username and password",
                        self.reference.registry
                    )));
                }
                Auth::Anonymous => return Err(no_credentials()),
            }
        } else if challenge.scheme.eq_ignore_ascii_case("bearer") {
            if matches!(auth, Auth::Token(_)) {
                return Err(OciError::Credentials(format!(
                    "{} refused the token",
                    self.reference.registry
                )));
            }
            let token = self.token(&challenge, auth, access)?;
            self.authorization = Some(format!("Bearer {token}"));
        } else {
            return Err(OciError::Credentials(format!(
                "{} asks for {} authentication, which ironbake does not speak (Basic or Bearer)",
                self.reference.registry, challenge.scheme
            )));
        }
        let mut again = self.sent(self.get(&url).call(), what, &url)?;
        match again.status().as_u16() {
            200 => Ok(()),
            401 | 403 => Err(OciError::Credentials(format!(
                "{} refused the credentials: {}",
                self.reference.registry,
                body_start(&mut again)
            ))),
            s => Err(OciError::Status {
                what: what.into(),
                url,
                status: s,
                hint: String::new(),
                body: body_start(&mut again),
            }),
        }
    }

    /// A token from the service a `Bearer` challenge names, for this repository.
    fn token(&self, c: &Challenge, auth: &Auth, access: Access) -> Result<String, OciError> {
        let realm = c.param("realm").ok_or_else(|| {
            OciError::Credentials(format!(
                "{} asks for a token but names no realm to get it from",
                self.reference.registry
            ))
        })?;
        if !(realm.starts_with("https://")
            || (realm.starts_with("http://") && self.base.starts_with("http://")))
        {
            return Err(OciError::Credentials(format!(
                "{} sends credentials to {realm:?}, which is not HTTPS",
                self.reference.registry
            )));
        }
        let actions = match access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let mut req = self.agent.get(realm).query(
            "scope",
            format!("repository:{}:{actions}", self.reference.repository),
        );
        if let Some(service) = c.param("service") {
            req = req.query("service", service);
        }
        if let Auth::Basic { username, password } = auth {
            req = req.header("Authorization", basic(username, password));
        }
        let what = "asking the registry's token service for a token";
        let mut resp = self.sent(req.call(), what, realm)?;
        if resp.status().as_u16() != 200 {
            return Err(OciError::Status {
                what: what.into(),
                url: realm.into(),
                status: resp.status().as_u16(),
                hint: " (are the credentials right?)".into(),
                body: body_start(&mut resp),
            });
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer =
            serde_json::from_reader(resp.body_mut().as_reader().take(1 << 20)).map_err(|e| {
                OciError::Content {
                    what: "the token service's answer".into(),
                    why: e.to_string(),
                }
            })?;
        answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| OciError::Content {
                what: "the token service's answer".into(),
                why: "it holds no token".into(),
            })
    }

    fn sent(
        &self,
        r: Result<Response, ureq::Error>,
        what: &str,
        url: &str,
    ) -> Result<Response, OciError> {
        r.map_err(|e| OciError::Transport {
            what: what.into(),
            url: url.into(),
            why: e.to_string(),
        })
    }

    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => req.header("Authorization", a),
            None => req,
        }
    }

    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.with_auth(self.agent.get(url))
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base, self.reference.repository)
    }

    fn status_error(&self, what: &str, url: &str, r: &mut Response) -> OciError {
        let status = r.status().as_u16();
        let hint = match status {
            401 => " (not allowed without credentials: --auth FILE)",
            403 => " (these credentials may not do this here)",
            404 => " (no such repository, tag or blob)",
            413 => " (the registry takes nothing this large)",
            _ => "",
        };
        OciError::Status {
            what: what.into(),
            url: url.into(),
            status,
            hint: hint.into(),
            body: body_start(r),
        }
    }

    /// Does the repository hold this blob?
    pub fn has_blob(&self, digest: &str) -> Result<bool, OciError> {
        let url = self.url(&format!("blobs/{digest}"));
        let what = format!("asking for blob {digest}");
        let mut r = self.sent(self.with_auth(self.agent.head(&url)).call(), &what, &url)?;
        match r.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&what, &url, &mut r)),
        }
    }

    /// Uploads one blob (a monolithic upload: `POST` then `PUT ?digest=`); the registry
    /// checks the digest and keeps nothing that does not match it.
    pub fn put_blob(&self, digest: &str, body: impl ureq::AsSendBody) -> Result<(), OciError> {
        let url = self.url("blobs/uploads/");
        let what = format!("starting the upload of {digest}");
        let mut r = self.sent(
            self.with_auth(self.agent.post(&url)).send_empty(),
            &what,
            &url,
        )?;
        if r.status().as_u16() != 202 {
            return Err(self.status_error(&what, &url, &mut r));
        }
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Content {
                what: what.clone(),
                why: "the registry gave no Location to upload to".into(),
            })?
            .to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let what = format!("uploading {digest}");
        let mut r = self.sent(
            self.with_auth(self.agent.put(&put))
                .header("Content-Type", "application/octet-stream")
                .send(body),
            &what,
            &url,
        )?;
        if r.status().as_u16() != 201 {
            return Err(self.status_error(&what, &url, &mut r));
        }
        Ok(())
    }

    /// The digest a tag points at, or None if there is no such tag.
    pub fn tag_digest(&self, tag: &str) -> Result<Option<String>, OciError> {
        let url = self.url(&format!("manifests/{tag}"));
        let what = format!("asking for tag {tag}");
        let mut r = self.sent(
            self.with_auth(self.agent.head(&url))
                .header("Accept", MANIFEST_TYPE)
                .call(),
            &what,
            &url,
        )?;
        match r.status().as_u16() {
            200 => Ok(r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)),
            404 => Ok(None),
            _ => Err(self.status_error(&what, &url, &mut r)),
        }
    }

    /// Puts a manifest under a tag; its digest.
    pub fn put_manifest(&self, tag: &str, bytes: &[u8]) -> Result<String, OciError> {
        let url = self.url(&format!("manifests/{tag}"));
        let what = format!("tagging {tag}");
        let mut r = self.sent(
            self.with_auth(self.agent.put(&url))
                .header("Content-Type", MANIFEST_TYPE)
                .send(bytes),
            &what,
            &url,
        )?;
        if r.status().as_u16() != 201 {
            return Err(self.status_error(&what, &url, &mut r));
        }
        Ok(format!(
            "sha256:{}",
            crate::layout::sha256_reader(bytes).expect("in memory").0
        ))
    }

    /// The manifest a tag or digest names, checked against the digest the registry says it
    /// has (and against the digest asked for): its bytes and digest.
    pub fn manifest(&self, tag_or_digest: &str) -> Result<(Vec<u8>, String), OciError> {
        let url = self.url(&format!("manifests/{tag_or_digest}"));
        let what = format!("reading manifest {tag_or_digest}");
        let mut r = self.sent(
            self.get(&url).header("Accept", MANIFEST_TYPE).call(),
            &what,
            &url,
        )?;
        if r.status().as_u16() != 200 {
            return Err(self.status_error(&what, &url, &mut r));
        }
        let said = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = r
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| OciError::Transport {
                what: what.clone(),
                url: url.clone(),
                why: e.to_string(),
            })?;
        let digest = format!(
            "sha256:{}",
            crate::layout::sha256_reader(&bytes[..])
                .expect("in memory")
                .0
        );
        let expected = if tag_or_digest.starts_with("sha256:") {
            Some(tag_or_digest.to_string())
        } else {
            said
        };
        if let Some(e) = expected
            && e != digest
        {
            return Err(OciError::Content {
                what: format!("manifest {tag_or_digest} of {}", self.reference),
                why: format!("its bytes hash to {digest}, not {e}"),
            });
        }
        Ok((bytes, digest))
    }

    /// A blob's bytes as they arrive (the caller checks them against the descriptor).
    pub fn blob(&self, d: &Descriptor) -> Result<impl Read + use<>, OciError> {
        let url = self.url(&format!("blobs/{}", d.digest));
        let what = format!("reading blob {}", d.digest);
        let mut r = self.sent(self.get(&url).call(), &what, &url)?;
        if r.status().as_u16() != 200 {
            return Err(self.status_error(&what, &url, &mut r));
        }
        Ok(r.into_body()
            .into_with_config()
            .limit(d.size.saturating_add(1))
            .reader())
    }

    /// Every tag of the repository (following `Link: <...>; rel="next"` pages).
    pub fn tags(&self) -> Result<Vec<String>, OciError> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut url = self.url("tags/list");
        for _ in 0..1000 {
            let what = "listing the repository's tags";
            let mut r = self.sent(self.get(&url).call(), what, &url)?;
            match r.status().as_u16() {
                200 => {}
                404 => return Ok(tags),
                _ => return Err(self.status_error(what, &url, &mut r)),
            }
            let next = r
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, l)| l.split_once('>'))
                .map(|(u, _)| u.to_string());
            let list: TagList = serde_json::from_reader(r.body_mut().as_reader().take(16 << 20))
                .map_err(|e| OciError::Content {
                    what: "the repository's tag list".into(),
                    why: e.to_string(),
                })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) if n.starts_with('/') => url = format!("{}{n}", self.base),
                _ => break,
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_keep_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example.org/token"));
        assert_eq!(c.param("service"), Some("registry.example.org"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let c = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("REALM"), Some("basic-realm"));
        let c = parse_challenge("Basic realm=lab, charset=\"UTF-8\"").unwrap();
        assert_eq!(c.param("realm"), Some("lab"));
        assert_eq!(c.param("charset"), Some("UTF-8"));
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn credentials_files_say_what_they_hold_and_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth.toml");
        let write = |text: &str, mode: u32| {
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("username = \"ci\"\npassword = \"pw\"\n", 0o600);
        assert_eq!(
            load_auth(&p).unwrap(),
            Auth::Basic {
                username: "ci".into(),
                password: "pw".into()
            }
        );
        write("token = \"t0k\"\n", 0o600);
        assert_eq!(load_auth(&p).unwrap(), Auth::Token("t0k".into()));
        assert!(!format!("{:?}", load_auth(&p).unwrap()).contains("t0k"));
        write("token = \"t0k\"\n", 0o644);
        assert!(load_auth(&p).unwrap_err().to_string().contains("chmod 600"));
        write("token = \"t\"\nusername = \"u\"\n", 0o600);
        assert!(load_auth(&p).unwrap_err().to_string().contains("either"));
        write("tokn = \"t\"\n", 0o600);
        assert!(load_auth(&p).is_err());
    }
}
