//! What the VM tests need from the machine, and what happens when it is missing: under
//! `CI=true` the test fails; elsewhere it prints what is missing and how to get it, and skips.

use std::path::Path;

/// True if the VM tests can run here; see the module doc for what happens otherwise.
pub fn vm_tests() -> bool {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("sgdisk", "gdisk"),
        ("mmdebstrap", "mmdebstrap"),
        ("mksquashfs", "squashfs-tools"),
        ("fsck.fat", "dosfstools"),
        ("objdump", "binutils"),
        ("ipmi_sim", "openipmi"),
        ("ipmitool", "ipmitool"),
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
        ("prometheus", "prometheus"),
        ("docker-registry", "docker-registry"),
        ("htpasswd", "apache2-utils"),
        ("skopeo", "skopeo"),
        ("nginx", "nginx-light"),
        (
            "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            "systemd-boot-efi",
        ),
    ] {
        if !ironbake::exec::have_tool(tool) {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    if !ironbake::host::is_root() {
        missing.push("root (network namespaces)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "the VM tests need: {}; `cargo xtask setup` as root installs the tools",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}
