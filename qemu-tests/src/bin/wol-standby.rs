//! A simulated NIC in Wake-on-LAN standby (QEMU has no Wake-on-LAN): attaches to the tap
//! device of a powered-off VM, as the VM's NIC would be while the machine is off, and reads the
//! frames the LAN sends it until one carries the magic packet for the VM's MAC (six 0xff bytes
//! and the MAC sixteen times, anywhere in the frame, as NICs match it). Then it lets go of the
//! tap and exits 0, and the harness starts the VM: that is the power-on. Exits 1 at the
//! deadline. Run inside the LAN's namespace: `wol-standby TAP MAC SECONDS`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// Does `frame` hold the magic packet for `mac`?
fn has_magic(frame: &[u8], mac: &[u8; 6]) -> bool {
    let mut magic = vec![0xffu8; 6];
    for _ in 0..16 {
        magic.extend_from_slice(mac);
    }
    frame.windows(magic.len()).any(|w| w == magic.as_slice())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(tap), Some(mac), Some(secs)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: wol-standby TAP MAC SECONDS");
        std::process::exit(2);
    };
    let mac = mac_bytes(mac).expect("a MAC like 52:54:00:00:00:01");
    let deadline = Instant::now() + Duration::from_secs(secs.parse().expect("seconds"));
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("opening /dev/net/tun");
    // struct ifreq: the name, then the flags (IFF_TAP | IFF_NO_PI), padded to 40 bytes.
    let mut ifr = [0u8; 40];
    ifr[..tap.len()].copy_from_slice(tap.as_bytes());
    let flags: i16 = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    #[allow(unsafe_code)]
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is sized and laid out as.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if rc != 0 {
        eprintln!(
            "wol-standby: attaching to {tap}: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    println!("wol-standby: {tap} in standby, waiting for a magic packet");
    let mut pfd = libc::pollfd {
        fd: dev.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut frame = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("wol-standby: no magic packet for {tap} before the deadline");
            std::process::exit(1);
        }
        #[allow(unsafe_code)]
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n <= 0 {
            continue;
        }
        let got = dev.read(&mut frame).expect("reading a frame");
        if has_magic(&frame[..got], &mac) {
            println!("wol-standby: magic packet for {tap} ({got} bytes): powering on");
            return;
        }
    }
}
