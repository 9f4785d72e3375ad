//! A simulated NIC in Wake-on-LAN standby (QEMU has no Wake-on-LAN). While a VM is off, a
//! thread in the LAN's namespace holds the VM's tap device, as the VM's NIC would hold the
//! link while the machine sleeps, and reads the frames the LAN sends it until one carries the
//! magic packet for the VM's MAC (six 0xff bytes and the MAC sixteen times, anywhere in the
//! frame, as NICs match it). Then it lets go of the tap, and the caller starts the VM: that is
//! the power-on.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Does `frame` hold the magic packet for `mac`?
pub fn has_magic(frame: &[u8], mac: &[u8; 6]) -> bool {
    let mut magic = vec![0xffu8; 6];
    for _ in 0..16 {
        magic.extend_from_slice(mac);
    }
    frame.windows(magic.len()).any(|w| w == magic.as_slice())
}

/// Attaches to `tap` in `ns` and returns once attached; the thread ends when the magic packet
/// for `mac` came (`Ok`) or at `deadline` (`Err`).
pub fn standby(
    ns: &Netns,
    tap: &str,
    mac: &str,
    deadline: Duration,
) -> Result<JoinHandle<Result<()>>> {
    let mac = netboot::fleet::power::mac_bytes(mac).with_context(|| format!("MAC {mac}"))?;
    let ns_file = format!("/run/netns/{}", ns.name());
    let tap = tap.to_string();
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let t = std::thread::spawn(move || -> Result<()> {
        let end = Instant::now() + deadline;
        let attached = (|| -> Result<std::fs::File> {
            let f = std::fs::File::open(&ns_file)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .context("opening /dev/net/tun")?;
            // struct ifreq: the name, then the flags (IFF_TAP | IFF_NO_PI), 40 bytes in all.
            let mut ifr = [0u8; 40];
            ifr[..tap.len()].copy_from_slice(tap.as_bytes());
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
            #[allow(unsafe_code)]
            // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is laid out as.
            let rc = unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
            if rc != 0 {
                bail!("attaching to {tap}: {}", std::io::Error::last_os_error());
            }
            Ok(dev)
        })();
        let mut dev = match attached {
            Ok(d) => {
                let _ = tx.send(Ok(()));
                d
            }
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
        };
        let mut pfd = libc::pollfd {
            fd: dev.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut frame = vec![0u8; 65536];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no magic packet for {tap} within {} s", deadline.as_secs());
            }
            #[allow(unsafe_code)]
            // SAFETY: one valid pollfd, for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            if n <= 0 {
                continue;
            }
            let got = dev.read(&mut frame).context("reading a frame")?;
            if has_magic(&frame[..got], &mac) {
                return Ok(());
            }
        }
    });
    rx.recv().context("the standby thread ended")??;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_packet_is_found_anywhere_in_a_frame() {
        let mac = [0x52, 0x54, 0, 0, 3, 1];
        let mut frame = vec![0u8; 42];
        frame.extend_from_slice(&netboot::fleet::power::magic_packet(mac));
        assert!(has_magic(&frame, &mac));
        assert!(!has_magic(&frame, &[0x52, 0x54, 0, 0, 3, 2]));
        assert!(!has_magic(&frame[..100], &mac));
    }
}
