//! A real Redfish BMC for the fleet tests: OpenStack's sushy-tools emulator (from PyPI, in a
//! virtual environment under `target/tools/`), run inside the test's network namespace with
//! its fake driver. The fake driver is a simulation of the machines behind the BMC: each
//! system is a power state that the emulator keeps, and a change lands 1 to 11 s after it is
//! asked, as on hardware; no VM is switched. The Redfish service itself (routes, actions,
//! HTTPS, basic authentication) is the emulator's own. The certificate is made for the test,
//! for 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// One emulated system: its Redfish id (a UUID) and name.
#[derive(Debug, Clone)]
pub struct System {
    /// The id in `/redfish/v1/Systems/ID`.
    pub uuid: String,
    /// Its name.
    pub name: String,
}

/// The emulator, listening on `https://127.0.0.1:PORT` in its namespace; killed on drop.
pub struct Emulator {
    child: Child,
    /// The PEM certificate it serves (the one to trust).
    pub cert: PathBuf,
    /// Its port.
    pub port: u16,
    log: PathBuf,
}

/// The emulator's command, installed under the repository's `target/tools/` when missing.
pub fn command() -> Result<PathBuf> {
    ironbake::host::SUSHY_TOOLS.ensure(
        &crate::project().join("target").join("tools"),
        &ironbake::progress::Progress::new(false),
    )
}

/// Makes a self-signed server certificate for 127.0.0.1 (not a CA: a leaf that is its own
/// trust anchor) as `NAME.pem` and `NAME.key` in `dir`.
pub fn certificate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    // An empty configuration: no default extensions (v3_ca would make it a CA).
    let conf = dir.join(format!("{name}.cnf"));
    std::fs::write(&conf, "[req]\ndistinguished_name = dn\n[dn]\n")?;
    ironbake::exec::Tool::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-config")
        .arg(&conf)
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .run(None)
        .context("making a test certificate with openssl")?;
    Ok((cert, key))
}

impl Emulator {
    /// Starts the emulator in `ns` on 127.0.0.1:`port` with `systems` (all off), one login
    /// (`username`, `password`), its files in `dir`; returns once it answers.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        port: u16,
        username: &str,
        password: &str,
        systems: &[System],
    ) -> Result<Emulator> {
        let command = command()?;
        let (cert, key) = certificate(dir, "redfish-bmc")?;
        // Its logins: an htpasswd file with bcrypt digests, the only kind it reads.
        let python = command.parent().expect("in bin/").join("python");
        let hashed = std::process::Command::new(&python)
            .args([
                "-c",
                "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                password,
            ])
            .output()
            .context("hashing the BMC password with bcrypt")?;
        if !hashed.status.success() {
            bail!("bcrypt: {}", String::from_utf8_lossy(&hashed.stderr));
        }
        let auth = dir.join("redfish.htpasswd");
        std::fs::write(
            &auth,
            format!(
                "{username}:{}\n",
                String::from_utf8_lossy(&hashed.stdout).trim()
            ),
        )?;
        let list: Vec<String> = systems
            .iter()
            .map(|s| {
                format!(
                    "{{'uuid': '{}', 'name': '{}', 'power_state': 'Off', 'nics': []}}",
                    s.uuid, s.name
                )
            })
            .collect();
        let state = dir.join("redfish-state");
        let config = dir.join("redfish.conf");
        std::fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
                 SUSHY_EMULATOR_STATE_DIR = '{}'\n\
                 SUSHY_EMULATOR_SSL_CERT = '{}'\n\
                 SUSHY_EMULATOR_SSL_KEY = '{}'\n",
                list.join(", "),
                auth.display(),
                state.display(),
                cert.display(),
                key.display()
            ),
        )?;
        let log = dir.join("redfish.log");
        let child = ns
            .command(&command.display().to_string())
            .arg("--config")
            .arg(&config)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("redfish.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting sushy-emulator")?;
        let mut emu = Emulator {
            child,
            cert,
            port,
            log,
        };
        // Up once its TLS port takes a connection.
        let t0 = Instant::now();
        loop {
            if let Some(status) = emu.child.try_wait()? {
                bail!("sushy-emulator ended with {status}:\n{}", emu.log_text());
            }
            let probe = ns
                .command("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .status();
            if probe.is_ok_and(|s| s.success()) {
                return Ok(emu);
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "sushy-emulator did not listen within 60 s:\n{}",
                    emu.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What it logged (its requests, the power changes it was asked).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
