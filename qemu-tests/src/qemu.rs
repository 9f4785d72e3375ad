//! A QEMU VM inside a network namespace: the serial console goes to a file under the test's
//! folder, every argument is explained, and the VM is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::console::Console;
use crate::netns::Netns;

/// How a VM boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Direct kernel boot: QEMU loads the kernel and initramfs itself (no firmware PXE).
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initramfs.
        initrd: PathBuf,
        /// The kernel command line.
        append: String,
    },
    /// UEFI network boot: OVMF's own PXE client on the VM's NIC, as a real machine does.
    Pxe {
        /// The firmware code (read-only), e.g. `/usr/share/OVMF/OVMF_CODE.fd`.
        code: PathBuf,
        /// The firmware variable store to copy for this VM, e.g. `/usr/share/OVMF/OVMF_VARS.fd`.
        vars: PathBuf,
        /// Retry the boot order for ever, as many PC firmwares do (or can be set to) when no
        /// boot option worked; see [`ovmf_retrying`].
        retry: bool,
    },
    /// UEFI boot from the VM's first disk (no network needed): OVMF finds the disk's ESP and
    /// runs its removable-media boot path, as a machine with an installed disk does.
    Disk {
        /// The firmware code (read-only).
        code: PathBuf,
        /// The firmware variable store to copy for this VM.
        vars: PathBuf,
        /// Let the machine restart (a failed slot restarts so the boot manager can fall
        /// back); otherwise a restart ends the VM.
        reboot: bool,
    },
}

/// The UEFI firmware: from the environment (`IRONBAKE_OVMF_CODE`, `IRONBAKE_OVMF_VARS`), else
/// Debian's `ovmf` package.
pub fn ovmf() -> Boot {
    let pick = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    Boot::Pxe {
        code: pick("IRONBAKE_OVMF_CODE", "/usr/share/OVMF/OVMF_CODE.fd"),
        vars: pick("IRONBAKE_OVMF_VARS", "/usr/share/OVMF/OVMF_VARS.fd"),
        retry: false,
    }
}

/// [`ovmf`], retrying its boot order for ever, the way the NUC-class firmware of a power-on
/// storm keeps asking until the boot server answers. OVMF itself tries each boot option once
/// and then starts its UEFI shell; the VM gets a small read-only FAT disk whose `startup.nsh`
/// makes that shell reset the machine, so the firmware starts over. Its IPv6 boot options are
/// turned off (the LAN boots over IPv4), which keeps one pass to IPv4 PXE and IPv4 HTTP boot.
pub fn ovmf_retrying() -> Boot {
    match ovmf() {
        Boot::Pxe { code, vars, .. } => Boot::Pxe {
            code,
            vars,
            retry: true,
        },
        kernel => kernel,
    }
}

/// [`ovmf`], booting from disk.
pub fn ovmf_disk() -> Boot {
    match ovmf() {
        Boot::Pxe { code, vars, .. } => Boot::Disk {
            code,
            vars,
            reboot: false,
        },
        other => other,
    }
}

/// Gives the VM OVMF with its own copy of the variable store.
fn firmware(
    cmd: &mut std::process::Command,
    name: &str,
    dir: &Path,
    code: &Path,
    vars: &Path,
) -> Result<()> {
    // Each VM writes its own copy of the variable store (boot order, PXE state).
    let own_vars = dir.join(format!("{name}.OVMF_VARS.fd"));
    std::fs::copy(vars, &own_vars).with_context(|| format!("copying {}", vars.display()))?;
    cmd.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        code.display()
    ));
    cmd.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        own_vars.display()
    ));
    Ok(())
}

/// The line the retrying firmware's shell prints before it resets the machine.
pub const FIRMWARE_RETRY_LINE: &str = "firmware: no boot option worked, starting over";

/// A VM to start.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Its name, for logs.
    pub name: String,
    /// How it boots.
    pub boot: Boot,
    /// Memory in MiB: the image lives in RAM.
    pub mem_mib: u32,
    /// Virtual CPUs (TCG runs each on a host thread: VMs side by side take one each).
    pub cpus: u32,
    /// Its network card; `None` for a VM with no network at all.
    pub nic: Option<Nic>,
    /// Raw disk images, attached as virtio disks in order.
    pub disks: Vec<PathBuf>,
    /// Point-to-point links to other VMs (cables between two NICs), after the LAN NIC.
    pub links: Vec<Cable>,
}

/// One end of a cable between two VMs: a NIC whose frames go, as UDP datagrams on the
/// namespace's loopback, to the NIC at the other end. Both ends name each other's port.
#[derive(Debug, Clone)]
pub struct Cable {
    /// This NIC's MAC address.
    pub mac: String,
    /// The UDP port this end receives on.
    pub port: u16,
    /// The UDP port the other end receives on.
    pub peer_port: u16,
}

/// A VM's network card, plugged into a tap device of a [`crate::lan::Lan`].
#[derive(Debug, Clone)]
pub struct Nic {
    /// Its MAC address (the inventory's key for the node).
    pub mac: String,
    /// The tap device, from [`crate::lan::Lan::tap`].
    pub tap: String,
}

/// A running VM; killed on drop.
///
/// A guest reset is a power cycle here: QEMU runs with `-no-reboot`, so it ends when the guest
/// resets, and a watcher thread starts it again at once with the same arguments (the same
/// firmware variables, disks, MAC and console log). Under TCG, OVMF after a warm reset of a
/// q35 VM that ran Linux sometimes stalls for minutes in DXE before printing anything (QEMU's
/// monitor shows it running in long mode, 1 or 2 vCPUs alike); a cold start does not. A guest
/// that powers off ends the VM as before.
pub struct Vm {
    run: Arc<Mutex<Running>>,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    /// Its serial console.
    pub console: Console,
    /// The console log file.
    pub log: PathBuf,
    /// QEMU's human monitor, a Unix socket: where a VM stuck with a silent console is.
    pub monitor: PathBuf,
}

/// The QEMU process of a [`Vm`], and what became of it.
struct Running {
    child: Child,
    /// Where the console log stood when this QEMU started.
    from: u64,
    /// Set once QEMU ended for good (not a reset).
    ended: Option<std::process::ExitStatus>,
    /// Resets turned into power cycles.
    cycles: u32,
}

/// The console lines that end a QEMU run: the guest reset (Linux, or the harness's firmware
/// retry), or powered off.
const RESET_LINES: [&str; 2] = ["reboot: Restarting system", FIRMWARE_RETRY_LINE];
const POWER_DOWN_LINE: &str = "reboot: Power down";

/// Did the console text a QEMU run wrote end in a reset?
fn ended_in_reset(text: &str) -> bool {
    let last = |needle: &str| text.rfind(needle);
    let reset = RESET_LINES.iter().filter_map(|l| last(l)).max();
    match (reset, last(POWER_DOWN_LINE)) {
        (Some(r), Some(p)) => r > p,
        (Some(_), None) => true,
        _ => false,
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("log", &self.log).finish()
    }
}

impl Vm {
    /// Starts `cfg` inside `ns`, with its console log at `dir/NAME.console.log`.
    pub fn start(ns: &Netns, cfg: &VmConfig, dir: &Path) -> Result<Vm> {
        let log = dir.join(format!("{}.console.log", cfg.name));
        let qemu_log = dir.join(format!("{}.qemu.log", cfg.name));
        let qemu_err = dir.join(format!("{}.qemu.err", cfg.name));
        // A log left by an earlier run would be read before QEMU truncates it.
        std::fs::create_dir_all(dir)?;
        std::fs::write(&log, b"")?;
        std::fs::write(&qemu_log, b"")?;
        std::fs::write(&qemu_err, b"")?;
        let mut cmd = ns.command("qemu-system-x86_64");
        Self::arguments(&mut cmd, cfg, dir, &log)?;
        let cycle = matches!(
            cfg.boot,
            Boot::Pxe { retry: true, .. } | Boot::Disk { reboot: true, .. }
        );
        if cycle {
            cmd.arg("-no-reboot");
        }
        eprintln!("[{}] {:?}", cfg.name, cmd);
        let program = cmd.get_program().to_owned();
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
        let spawn = move || -> Result<Child> {
            let append = |p: &Path| std::fs::OpenOptions::new().append(true).open(p);
            std::process::Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(append(&qemu_log)?)
                .stderr(append(&qemu_err)?)
                .spawn()
                .context("starting qemu-system-x86_64")
        };
        let run = Arc::new(Mutex::new(Running {
            child: spawn()?,
            from: 0,
            ended: None,
            cycles: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (run2, stop2, log2, name) = (
            Arc::clone(&run),
            Arc::clone(&stop),
            log.clone(),
            cfg.name.clone(),
        );
        let watcher = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let mut r = run2.lock().expect("not poisoned");
                if r.ended.is_some() {
                    continue;
                }
                let Ok(Some(status)) = r.child.try_wait() else {
                    continue;
                };
                let text = std::fs::read(&log2).unwrap_or_default();
                let from = (r.from as usize).min(text.len());
                let wrote = String::from_utf8_lossy(&text[from..]);
                if !cycle || !ended_in_reset(&wrote) {
                    r.ended = Some(status);
                    continue;
                }
                match spawn() {
                    Ok(child) => {
                        r.cycles += 1;
                        r.from = text.len() as u64;
                        r.child = child;
                        eprintln!(
                            "[{name}] the guest reset: QEMU started again (power cycle {})",
                            r.cycles
                        );
                    }
                    Err(e) => {
                        eprintln!("[{name}] starting QEMU again after a reset: {e:#}");
                        r.ended = Some(status);
                    }
                }
            }
        });
        Ok(Vm {
            run,
            stop,
            watcher: Some(watcher),
            console: Console::new(&log),
            log,
            monitor: monitor_path(dir, &cfg.name),
        })
    }

    /// How many guest resets were power cycles so far.
    pub fn power_cycles(&self) -> u32 {
        self.run.lock().expect("not poisoned").cycles
    }

    /// What QEMU's monitor says of the VM (`info status`, `info cpus`, `info registers -a`),
    /// for a failure message when the console says nothing; also written beside the console
    /// log as `NAME.state.txt`.
    pub fn state(&self) -> String {
        use std::io::{Read, Write};
        let said = (|| -> std::io::Result<String> {
            let mut s = std::os::unix::net::UnixStream::connect(&self.monitor)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"info status\ninfo cpus\ninfo registers -a\n")?;
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            // The monitor never closes: read until it has been quiet for the timeout.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        })()
        .unwrap_or_else(|e| format!("(QEMU's monitor {}: {e})", self.monitor.display()));
        let _ = std::fs::write(
            self.log.with_extension("").with_extension("state.txt"),
            &said,
        );
        said
    }

    /// QEMU's arguments for `cfg` (its serial console appended to `log`), added to `cmd`;
    /// a BMC simulator that starts the VM itself uses them too.
    pub fn arguments(
        cmd: &mut std::process::Command,
        cfg: &VmConfig,
        dir: &Path,
        log: &Path,
    ) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        cmd.args([
            // KVM opens but fails on these machines (nested); TCG always works.
            "-accel",
            "tcg",
            // A modern PC chipset (PCIe), as the firmware PXE tests use.
            "-machine",
            "q35",
            "-smp",
            &cfg.cpus.to_string(),
            "-m",
            &cfg.mem_mib.to_string(),
            // No default devices (VGA, floppy, ...): fewer things to probe, faster boots.
            "-nodefaults",
            "-display",
            "none",
            // Needed by the RNG-hungry early userspace (sshd key checks, systemd).
            "-device",
            "virtio-rng-pci",
        ]);
        // The human monitor on a Unix socket, for `Vm::state`.
        cmd.arg("-monitor").arg(format!(
            "unix:{},server=on,wait=off",
            monitor_path(dir, &cfg.name).display()
        ));
        // The console, appended to (a VM powered on again keeps one log).
        cmd.arg("-chardev")
            .arg(format!("file,id=console,path={},append=on", log.display()));
        cmd.args(["-serial", "chardev:console"]);
        if !matches!(
            cfg.boot,
            Boot::Pxe { retry: true, .. } | Boot::Disk { reboot: true, .. }
        ) {
            // A reboot ends the run instead of looping.
            cmd.arg("-no-reboot");
        }
        // (Where a reboot should boot again, `Vm::start` makes it a power cycle.)
        match &cfg.boot {
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .arg("-append")
                    .arg(append);
            }
            Boot::Disk { code, vars, .. } => {
                firmware(cmd, &cfg.name, dir, code, vars)?;
                // Boot from the first disk.
                cmd.args(["-boot", "c"]);
            }
            Boot::Pxe { code, vars, retry } => {
                firmware(cmd, &cfg.name, dir, code, vars)?;
                // Boot from the network first, as a node set up for PXE does.
                cmd.args(["-boot", "n"]);
                if *retry {
                    let esp = dir.join(format!("{}.retry", cfg.name));
                    std::fs::create_dir_all(&esp)?;
                    std::fs::write(
                        esp.join("startup.nsh"),
                        format!("echo {FIRMWARE_RETRY_LINE}\r\nreset\r\n"),
                    )?;
                    // QEMU's virtual FAT of that folder, read-only: the shell's FS0:.
                    cmd.arg("-drive").arg(format!(
                        "file=fat:ro:{},format=raw,if=none,id=retry,readonly=on",
                        esp.display()
                    ));
                    cmd.args(["-device", "virtio-blk-pci,drive=retry"]);
                    // No IPv6 PXE or HTTP boot: the LAN's boot service is IPv4.
                    for knob in ["IPv6PXESupport", "IPv6Support"] {
                        cmd.arg("-fw_cfg")
                            .arg(format!("name=opt/org.tianocore/{knob},string=no"));
                    }
                }
            }
        }
        for (i, disk) in cfg.disks.iter().enumerate() {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=d{i}",
                disk.display()
            ));
            // The serial (the file's name, as far as virtio allows) is what the guest's
            // /dev/disk/by-id/virtio-SERIAL names.
            cmd.arg("-device").arg(format!(
                "virtio-blk-pci,drive=d{i},serial={}",
                serial_of(disk)
            ));
        }
        if let Some(nic) = &cfg.nic {
            // The tap device is a port of the LAN's bridge: the VM is one more machine on
            // the LAN (DHCP from the router, the server at its address). script=no: the
            // tap already exists and is set up; QEMU only opens it.
            cmd.arg("-netdev").arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                nic.tap
            ));
            // virtio-net, as the image's drivers expect. romfile= (empty) keeps QEMU's own
            // iPXE option ROM out, so the firmware's PXE (or the kernel) is what runs.
            cmd.arg("-device")
                .arg(format!("virtio-net-pci,netdev=n0,mac={},romfile=", nic.mac));
        }
        for (i, c) in cfg.links.iter().enumerate() {
            // A socket netdev: each frame is one UDP datagram between the two QEMUs, on the
            // namespace's loopback; nothing else sees it, as with a cable.
            cmd.arg("-netdev").arg(format!(
                "socket,id=c{i},udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
                c.peer_port, c.port
            ));
            cmd.arg("-device")
                .arg(format!("virtio-net-pci,netdev=c{i},mac={},romfile=", c.mac));
        }
        Ok(())
    }

    /// Waits for QEMU to end by itself (the guest powered off); its exit status.
    pub fn wait_exit(
        &mut self,
        what: &str,
        deadline: Duration,
    ) -> Result<std::process::ExitStatus> {
        let end = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.run.lock().expect("not poisoned").ended {
                return Ok(status);
            }
            if std::time::Instant::now() >= end {
                anyhow::bail!(
                    "{what}: QEMU still running after {} s\n--- console ---\n{}",
                    deadline.as_secs(),
                    self.console.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Is QEMU still running?
    pub fn alive(&mut self) -> bool {
        self.run.lock().expect("not poisoned").ended.is_none()
    }

    /// Waits for a console line containing `needle` after line `skip`.
    pub fn wait_line(
        &mut self,
        what: &str,
        needle: &str,
        deadline: Duration,
        skip: usize,
    ) -> Result<(String, usize)> {
        let console = self.console.clone();
        let run = Arc::clone(&self.run);
        console.wait_for(
            what,
            deadline,
            skip,
            || run.lock().expect("not poisoned").ended.is_none(),
            |l| l.contains(needle),
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let mut r = self.run.lock().expect("not poisoned");
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}

/// A disk's serial number for the guest: its file name without the extension, letters,
/// digits, `-` and `_` only, at most 20 bytes (virtio-blk's limit).
pub fn serial_of(disk: &Path) -> String {
    disk.file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(20)
        .collect()
}

/// Where a VM's monitor socket is.
fn monitor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.monitor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_ended_in_a_reset_is_told_from_a_power_off() {
        assert!(ended_in_reset(
            "systemd-shutdown...\n[ 53.5] reboot: Restarting system\n"
        ));
        assert!(ended_in_reset(&format!("PXE...\n{FIRMWARE_RETRY_LINE}\n")));
        assert!(!ended_in_reset("[ 20.1] reboot: Power down\n"));
        assert!(ended_in_reset(
            "reboot: Power down\n(started again)\nreboot: Restarting system\n"
        ));
        assert!(!ended_in_reset("qemu: terminating on signal 15\n"));
    }
}
