//! The build host's tools: which Debian packages provide them, and installing what is missing
//! (apt-get as root; otherwise the exact command to run, and a stop).

use anyhow::{Result, bail};

use crate::exec::{self, Tool};

/// A tool and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// The command.
    pub tool: &'static str,
    /// Its package.
    pub package: &'static str,
}

/// What `build` needs.
pub const BUILD: &[Need] = &[
    Need {
        tool: "mmdebstrap",
        package: "mmdebstrap",
    },
    Need {
        tool: "mksquashfs",
        package: "squashfs-tools",
    },
    // The first stage's userland.
    Need {
        tool: "/bin/busybox",
        package: "busybox-static",
    },
    // iPXE for the boot server, published under out/ipxe/.
    Need {
        tool: "/usr/lib/ipxe/snponly.efi",
        package: "ipxe",
    },
    Need {
        tool: "dpkg-query",
        package: "dpkg",
    },
    // The EFI stub and boot manager of disk images.
    Need {
        tool: "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        package: "systemd-boot-efi",
    },
    // Checks that an overlay's apt source is signed by its key before anything is built.
    Need {
        tool: "gpgv",
        package: "gpgv",
    },
];

/// What the tests need beyond `build`.
pub const TEST: &[Need] = &[
    Need {
        tool: "unsquashfs",
        package: "squashfs-tools",
    },
    // Real TFTP and HTTP clients for the boot server's interop tests.
    Need {
        tool: "atftp",
        package: "atftp",
    },
    Need {
        tool: "tftp",
        package: "tftp-hpa",
    },
    Need {
        tool: "curl",
        package: "curl",
    },
    Need {
        tool: "cpio",
        package: "cpio",
    },
    // Disk images read back with tools that are not ironbake's; `disk flash` onto a loop
    // device, and a mounted ext4 disk it must refuse.
    Need {
        tool: "fsck.fat",
        package: "dosfstools",
    },
    Need {
        tool: "losetup",
        package: "mount",
    },
    Need {
        tool: "mkfs.ext4",
        package: "e2fsprogs",
    },
    Need {
        tool: "objdump",
        package: "binutils",
    },
    // The signed apt repository that the overlay-source tests make for themselves.
    Need {
        tool: "gpg",
        package: "gpg",
    },
    Need {
        tool: "dpkg-deb",
        package: "dpkg",
    },
    // The tidy tests check every shell script the project ships.
    Need {
        tool: "shellcheck",
        package: "shellcheck",
    },
    // libFuzzer (the fuzz targets' engine) is C++, compiled by the libfuzzer-sys crate.
    Need {
        tool: "c++",
        package: "g++",
    },
    // The VM tests: QEMU, UEFI firmware, network namespaces, GPT disks, and the home router
    // of their LAN (plain DHCP).
    Need {
        tool: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Need {
        tool: "/usr/share/OVMF/OVMF_CODE.fd",
        package: "ovmf",
    },
    Need {
        tool: "ip",
        package: "iproute2",
    },
    Need {
        tool: "sgdisk",
        package: "gdisk",
    },
    Need {
        tool: "dnsmasq",
        package: "dnsmasq-base",
    },
    // The fleet tests: a real IPMI BMC for a VM (OpenIPMI's simulator) and the IPMI client
    // the boot server runs.
    Need {
        tool: "ipmi_sim",
        package: "openipmi",
    },
    Need {
        tool: "ipmitool",
        package: "ipmitool",
    },
    // A real Redfish BMC for the fleet tests (sushy-tools' emulator, from PyPI: Debian does
    // not package it) lives in a virtual environment; python3-venv makes one. It has no
    // command of its own, so its copyright file stands for it.
    Need {
        tool: "/usr/share/doc/python3-venv/copyright",
        package: "python3-venv",
    },
    Need {
        tool: "openssl",
        package: "openssl",
    },
    // The fleet page in a real browser (headless, over WebDriver), and a real Prometheus that
    // finds the nodes' exporters through the boot server's service discovery.
    Need {
        tool: "chromium",
        package: "chromium",
    },
    Need {
        tool: "chromedriver",
        package: "chromium-driver",
    },
    Need {
        tool: "prometheus",
        package: "prometheus",
    },
    // Past one boot server: a real OCI registry (the CNCF distribution registry) with basic
    // authentication, another client that reads what `push` wrote, and a real HTTP cache in
    // front of a boot server.
    Need {
        tool: "docker-registry",
        package: "docker-registry",
    },
    Need {
        tool: "htpasswd",
        package: "apache2-utils",
    },
    Need {
        tool: "skopeo",
        package: "skopeo",
    },
    Need {
        tool: "nginx",
        package: "nginx-light",
    },
];

/// A Python tool the tests run that Debian does not package: its PyPI name and pinned
/// version, and the command it installs.
#[derive(Debug, Clone, Copy)]
pub struct PythonTool {
    /// The PyPI distribution.
    pub package: &'static str,
    /// Its version, pinned.
    pub version: &'static str,
    /// The command in its environment's `bin/`.
    pub command: &'static str,
}

/// OpenStack's Redfish emulator (its fake driver keeps each system's power state).
pub const SUSHY_TOOLS: PythonTool = PythonTool {
    package: "sushy-tools",
    version: "2.2.0",
    command: "sushy-emulator",
};

impl PythonTool {
    /// Where its environment lives under `tools` (one folder per version).
    pub fn dir(&self, tools: &std::path::Path) -> std::path::PathBuf {
        tools.join(format!("{}-{}", self.package, self.version))
    }

    /// Its command, installing it first into a virtual environment under `tools` when it is
    /// not there. The environment counts only once its `.installed` mark is written, last: an
    /// install that failed halfway is removed and made again.
    pub fn ensure(
        &self,
        tools: &std::path::Path,
        progress: &crate::progress::Progress,
    ) -> Result<std::path::PathBuf> {
        let dir = self.dir(tools);
        let command = dir.join("bin").join(self.command);
        let mark = dir.join(".installed");
        if mark.is_file() && command.is_file() {
            return Ok(command);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(tools)?;
        let stage = progress.stage(&format!(
            "python3 -m venv + pip install {}=={}",
            self.package, self.version
        ));
        let sink = |l: &str| stage.line(l);
        // Debian's interpreter by its path: the environment must not hang on a user's own.
        Tool::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .run(Some(&sink))?;
        Tool::new(&dir.join("bin").join("pip").display().to_string())
            .args([
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
            ])
            .arg(format!("{}=={}", self.package, self.version))
            .run(Some(&sink))?;
        if !command.is_file() {
            bail!(
                "pip installed {} but {} is not there",
                self.package,
                command.display()
            );
        }
        std::fs::write(&mark, format!("{}=={}\n", self.package, self.version))?;
        stage.done("");
        Ok(command)
    }
}

/// `/usr/sbin/policy-rc.d` answering "never start" while it lives (unless one exists).
struct NoDaemons(Option<&'static str>);

impl NoDaemons {
    fn new() -> NoDaemons {
        const PATH: &str = "/usr/sbin/policy-rc.d";
        if std::path::Path::new(PATH).exists() {
            return NoDaemons(None);
        }
        let ok = std::fs::write(
            PATH,
            "#!/bin/sh\n# ironbake: no daemons start during install\nexit 101\n",
        )
        .and_then(|()| {
            std::fs::set_permissions(PATH, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        })
        .is_ok();
        NoDaemons(ok.then_some(PATH))
    }
}

impl Drop for NoDaemons {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What `cargo xtask bench serve` runs its anchors with.
pub const BENCH_SERVE: &[Need] = &[
    Need {
        tool: "/usr/sbin/in.tftpd",
        package: "tftpd-hpa",
    },
    Need {
        tool: "/usr/sbin/nginx",
        package: "nginx-light",
    },
    Need {
        tool: "dnsmasq",
        package: "dnsmasq-base",
    },
    Need {
        tool: "atftp",
        package: "atftp",
    },
    Need {
        tool: "curl",
        package: "curl",
    },
    Need {
        tool: "tc",
        package: "iproute2",
    },
];

/// What `cargo xtask bench disk` writes its anchor image with (beside TEST's sgdisk and
/// mkfs.fat).
pub const BENCH_DISK: &[Need] = &[Need {
    tool: "mcopy",
    package: "mtools",
}];

/// Is this process root?
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The packages whose tools are missing, sorted and unique.
pub fn missing(needs: &[Need]) -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = needs
        .iter()
        .filter(|n| !exec::have_tool(n.tool))
        .map(|n| n.package)
        .collect();
    pkgs.sort();
    pkgs.dedup();
    pkgs
}

/// Installs the packages of any missing tool. As root this runs apt-get; otherwise it fails
/// with the command to run.
pub fn ensure(needs: &[Need], progress: &crate::progress::Progress) -> Result<()> {
    let pkgs = missing(needs);
    if pkgs.is_empty() {
        return Ok(());
    }
    let cmd = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        pkgs.join(" ")
    );
    if !is_root() {
        bail!(
            "missing host tools; install them with:\n    sudo sh -c '{cmd}'\nthen run this command again"
        );
    }
    let stage = progress.stage(&format!("apt-get install {}", pkgs.join(" ")));
    let sink = |l: &str| stage.line(l);
    // Packages such as tftpd-hpa and nginx start a daemon on install; ironbake only runs them
    // itself, inside its own network namespaces. policy-rc.d (Debian's mechanism for this)
    // stops invoke-rc.d from starting anything while we install.
    let _no_daemons = NoDaemons::new();
    Tool::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run(Some(&sink))?;
    Tool::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run(Some(&sink))?;
    stage.done("");
    let still = missing(needs);
    if !still.is_empty() {
        bail!(
            "installed {} but still missing tools from: {}",
            pkgs.join(" "),
            still.join(" ")
        );
    }
    Ok(())
}
