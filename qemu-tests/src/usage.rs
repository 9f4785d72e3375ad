//! What a run of VMs takes from each resource it shares: the host's CPU (every core, from
//! `/proc/stat`; under TCG the guests' CPUs are emulated on it), the boot server's CPU (the
//! threads of this process named [`SERVER_THREAD`]: the in-process `netboot serve`, one
//! event loop, so one core is its limit) and the LAN (bytes the server sent through the
//! bridge, against a 1 Gbit/s link; the test's bridge is not held to that rate, so a second
//! can carry more than a real link would). Sampled about once a second; the peaks, and the
//! seconds a resource was at [`SATURATED`] of its limit or more, are over those samples. The
//! one that spent the longest there ran out first.

use std::path::Path;
use std::time::Instant;

use crate::netns::Netns;

/// The name of every thread the in-process boot server runs on.
pub const SERVER_THREAD: &str = "netboot";
/// A LAN link's rate, bytes per second (1 Gbit/s).
pub const LINK_BYTES_PER_S: f64 = 125e6;
/// The share of its limit at which a resource counts as run out for that second.
pub const SATURATED: f64 = 0.9;

/// CPU time so far: the host's busy and total jiffies, and the server's seconds.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    busy: u64,
    total: u64,
    server_s: f64,
    sent: u64,
}

/// Samples the resources of a run; see the module documentation.
#[derive(Debug)]
pub struct Sampler {
    ns: Option<String>,
    first: Point,
    last: Point,
    peak_host: f64,
    peak_server: f64,
    peak_link: f64,
    /// Seconds at [`SATURATED`] or more: host, server, link.
    saturated: [f64; 3],
}

/// What a run used, from its start to [`Sampler::finish`].
#[derive(Debug, Clone)]
pub struct Usage {
    /// Seconds measured.
    pub secs: f64,
    /// The host's cores.
    pub cores: usize,
    /// Host CPU busy, as a share of all its cores: mean and the peak second.
    pub host: (f64, f64),
    /// The boot server's CPU, as a share of one core: mean and the peak second.
    pub server: (f64, f64),
    /// Bytes the server sent on the LAN.
    pub lan_bytes: u64,
    /// The LAN's share of a 1 Gbit/s link: mean and the peak second.
    pub link: (f64, f64),
    /// Seconds each of host, server and link spent at [`SATURATED`] of its limit or more.
    pub saturated: [f64; 3],
}

fn host_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - idle, total)
}

fn cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1)
}

fn ticks_per_s() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// CPU seconds of this process's threads named [`SERVER_THREAD`] (threads that ended are
/// not counted: the server's blocking pool keeps its threads for 10 s idle).
fn server_cpu_s() -> f64 {
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for e in rd.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != SERVER_THREAD {
            continue;
        }
        // After the name: state, then fields 4.. ; utime and stime are fields 14 and 15.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |n: usize| {
            f.get(n - 3)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(14) + field(15);
    }
    ticks as f64 / ticks_per_s()
}

/// Bytes the bridge `br0` of namespace `ns` sent (the server's traffic to the nodes).
fn sent(ns: Option<&str>) -> u64 {
    let Some(ns) = ns else { return 0 };
    let path = Path::new("/sys/class/net/br0/statistics/tx_bytes");
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Sampler {
    /// Starts sampling; `lan` is the namespace with the bridge, if the run has a LAN.
    pub fn start(lan: Option<&Netns>) -> Sampler {
        let ns = lan.map(|n| n.name().to_string());
        let first = Self::point(ns.as_deref());
        Sampler {
            ns,
            first,
            last: first,
            peak_host: 0.0,
            peak_server: 0.0,
            peak_link: 0.0,
            saturated: [0.0; 3],
        }
    }

    fn point(ns: Option<&str>) -> Point {
        let (busy, total) = host_jiffies();
        Point {
            at: Instant::now(),
            busy,
            total,
            server_s: server_cpu_s(),
            sent: sent(ns),
        }
    }

    /// Takes a sample if a second went by since the last one.
    pub fn tick(&mut self) {
        if self.last.at.elapsed().as_secs_f64() < 1.0 {
            return;
        }
        let p = Self::point(self.ns.as_deref());
        let (host, server, link) = shares(&self.last, &p);
        self.peak_host = self.peak_host.max(host);
        self.peak_server = self.peak_server.max(server);
        self.peak_link = self.peak_link.max(link);
        let secs = p.at.duration_since(self.last.at).as_secs_f64();
        for (t, share) in self.saturated.iter_mut().zip([host, server, link]) {
            if share >= SATURATED {
                *t += secs;
            }
        }
        self.last = p;
    }

    /// What was used from the start to now.
    pub fn finish(mut self) -> Usage {
        self.tick();
        let p = Self::point(self.ns.as_deref());
        let (host, server, link) = shares(&self.first, &p);
        Usage {
            secs: p.at.duration_since(self.first.at).as_secs_f64(),
            cores: cores(),
            host: (host, self.peak_host.max(host)),
            server: (server, self.peak_server.max(server)),
            lan_bytes: p.sent.saturating_sub(self.first.sent),
            link: (link, self.peak_link.max(link)),
            saturated: self.saturated,
        }
    }
}

/// Host share of all cores, server share of one core, link share of 1 Gbit/s, between two
/// points.
fn shares(a: &Point, b: &Point) -> (f64, f64, f64) {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let total = b.total.saturating_sub(a.total);
    let host = if total == 0 {
        0.0
    } else {
        b.busy.saturating_sub(a.busy) as f64 / total as f64
    };
    let server = (b.server_s - a.server_s).max(0.0) / secs;
    let link = b.sent.saturating_sub(a.sent) as f64 / secs / LINK_BYTES_PER_S;
    (host, server, link)
}

impl Usage {
    /// The resource that spent the longest at [`SATURATED`] of its limit or more (if none
    /// did, the one with the highest mean share), and those seconds.
    pub fn first_to_run_out(&self) -> (&'static str, f64) {
        let mut all = [
            (
                "the host's CPU (QEMU emulating the guests' CPUs)",
                self.saturated[0],
                self.host.0,
            ),
            (
                "the boot server's CPU (one core)",
                self.saturated[1],
                self.server.0,
            ),
            ("the LAN link (1 Gbit/s)", self.saturated[2], self.link.0),
        ];
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
        (all[0].0, all[0].1)
    }

    /// Lines for a person: each resource, then which ran out first.
    pub fn lines(&self) -> Vec<String> {
        let pct = |x: f64| format!("{:.0}%", 100.0 * x);
        let (name, share) = self.first_to_run_out();
        vec![
            format!(
                "host CPU ({} cores): {} busy on average, {} at the busiest second, {:.0} s at \
                 {} or more",
                self.cores,
                pct(self.host.0),
                pct(self.host.1),
                self.saturated[0],
                pct(SATURATED)
            ),
            format!(
                "boot server CPU: {:.1} s in {:.0} s, {} of one core on average, {} at the \
                 busiest second, {:.0} s at {} or more",
                self.server.0 * self.secs,
                self.secs,
                pct(self.server.0),
                pct(self.server.1),
                self.saturated[1],
                pct(SATURATED)
            ),
            format!(
                "LAN: {:.0} MB sent by the server, {} of a 1 Gbit/s link on average, {} at the \
                 busiest second, {:.0} s at {} or more",
                self.lan_bytes as f64 / 1e6,
                pct(self.link.0),
                pct(self.link.1),
                self.saturated[2],
                pct(SATURATED)
            ),
            format!(
                "first to run out: {name}, at {} of its limit or more for {share:.0} of {:.0} s",
                pct(SATURATED),
                self.secs
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_resource_is_named_first() {
        let u = Usage {
            secs: 100.0,
            cores: 2,
            host: (0.97, 1.0),
            server: (0.02, 0.31),
            lan_bytes: 2_000_000_000,
            link: (0.16, 0.55),
            saturated: [91.0, 0.0, 0.0],
        };
        assert_eq!(
            u.first_to_run_out().0,
            "the host's CPU (QEMU emulating the guests' CPUs)"
        );
        let lines = u.lines();
        assert_eq!(
            lines[1],
            "boot server CPU: 2.0 s in 100 s, 2% of one core on average, 31% at the busiest \
             second, 0 s at 90% or more"
        );
        assert_eq!(
            lines[3],
            "first to run out: the host's CPU (QEMU emulating the guests' CPUs), at 90% of its \
             limit or more for 91 of 100 s"
        );
        // One burst over the link's rate does not outweigh a host busy all along.
        let burst = Usage {
            link: (0.06, 1.27),
            saturated: [91.0, 0.0, 2.0],
            ..u.clone()
        };
        assert_eq!(burst.first_to_run_out(), u.first_to_run_out());
        let link_bound = Usage {
            link: (0.7, 0.99),
            host: (0.5, 0.6),
            saturated: [0.0, 0.0, 40.0],
            ..u.clone()
        };
        assert_eq!(link_bound.first_to_run_out().0, "the LAN link (1 Gbit/s)");
        // None saturated: the highest mean.
        let calm = Usage {
            saturated: [0.0; 3],
            host: (0.3, 0.5),
            link: (0.4, 0.6),
            ..u
        };
        assert_eq!(calm.first_to_run_out().0, "the LAN link (1 Gbit/s)");
    }

    #[test]
    fn this_process_threads_named_for_the_server_are_counted() {
        let before = server_cpu_s();
        let t = std::thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed().as_millis() < 300 {
                    x = x.wrapping_mul(31).wrapping_add(1);
                }
                // Still running when measured.
                std::thread::sleep(std::time::Duration::from_millis(200));
                x
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let during = server_cpu_s();
        t.join().unwrap();
        assert!(during - before >= 0.1, "{before} -> {during}");
        let (busy, total) = host_jiffies();
        assert!(busy > 0 && total > busy);
    }
}
