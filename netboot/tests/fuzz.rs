//! Tier (b): builds the cargo-fuzz targets of `netboot/fuzz` (DHCP, TFTP and the HTTP-facing
//! parsers) with the stable toolchain and runs each for a bounded time (`IRONBAKE_FUZZ_SECONDS`,
//! default 20). A crash fails the test and names the input; a missing C++ compiler, or
//! `libfuzzer-sys` that cannot be fetched, fails it when `CI=true` and prints `SKIPPED: ...`
//! otherwise.
//!
//! The targets are built with plain `cargo build` and the RUSTFLAGS that
//! `cargo fuzz build --sanitizer none` (cargo-fuzz 0.13) passes, so CI needs nothing but
//! cargo and a C++ compiler (libfuzzer-sys compiles libFuzzer with the `cc` crate); every flag
//! is a stable `-C` flag. Longer runs by hand, with cargo-fuzz: see `netboot/fuzz/README.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The coverage instrumentation libFuzzer needs, as `cargo fuzz build --sanitizer none`
/// passes it: the same flags give the same build cache as a `cargo fuzz` run by hand.
const RUSTFLAGS: &[&str] = &[
    // Insert the SanitizerCoverage pass: the edge counters and the PC table libFuzzer reads.
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    // Report the operands of comparisons, so the fuzzer finds magic numbers and lengths.
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    // Record how deep an input drives the stack, a signal libFuzzer can use (Linux only).
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    // Keep branches apart so that each one is a separate edge.
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    // `cfg(fuzzing)`, which libfuzzer-sys and `arbitrary` look at.
    "--cfg",
    "fuzzing",
    // Optimised (--release), but with debug assertions and overflow checks: overflows are
    // findings.
    "-Cdebug-assertions",
    // With several codegen units the coverage pass stops inlining across them; cargo-fuzz
    // measured targets ~3x slower that way.
    "-Ccodegen-units=1",
];

/// How long a fuzzer may run past its `-max_total_time` before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(60);
/// libFuzzer's limit for one input: slower than this is a hang, reported like a crash.
const INPUT_TIMEOUT_S: u32 = 10;
/// How much of a crash input is printed as hex.
const MAX_HEX: usize = 4096;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Where the fuzz build goes: not the workspace's target dir, so the two builds never wait for
/// each other's lock (and it is where `cargo fuzz` builds too).
fn target_dir() -> PathBuf {
    fuzz_dir().join("target")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Seconds per target, from `IRONBAKE_FUZZ_SECONDS`.
fn seconds() -> u64 {
    match std::env::var("IRONBAKE_FUZZ_SECONDS") {
        Err(_) => 20,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => panic!("IRONBAKE_FUZZ_SECONDS={v:?}: expected a whole number of seconds, >= 1"),
        },
    }
}

/// Why there are no fuzz binaries.
#[derive(Debug, Clone)]
enum NotBuilt {
    /// Something the build needs is not on this machine: skipped outside CI.
    Missing(String),
    /// The build itself failed (a compile error in a target): always a failure.
    Failed(String),
}

/// The fuzz binaries, by target name.
type Binaries = Vec<(String, PathBuf)>;

/// Builds every target once per test process; the tests share the result.
fn binaries() -> &'static Result<Binaries, NotBuilt> {
    static BUILT: OnceLock<Result<Binaries, NotBuilt>> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(fuzz_dir())
        .stdin(Stdio::null())
        // Takes precedence over RUSTFLAGS: an outer build's flags must not leak in.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    c
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn build() -> Result<Binaries, NotBuilt> {
    // libfuzzer-sys compiles libFuzzer (C++) with the `cc` crate, which runs $CXX or `c++`.
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let have_cxx = Command::new(&cxx)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_cxx {
        return Err(NotBuilt::Missing(format!(
            "no C++ compiler (`{cxx}`) to build libFuzzer with: apt-get install g++"
        )));
    }
    // Fetching is the only step that needs the network (crates.io): its failure means a
    // missing dependency, not a broken target.
    let fetch = cargo()
        .args(["fetch", "--manifest-path", "Cargo.toml"])
        .output()
        .expect("running cargo fetch");
    if !fetch.status.success() {
        return Err(NotBuilt::Missing(format!(
            "the fuzz crate's dependencies (libfuzzer-sys) could not be fetched from crates.io \
             (`cargo fetch` in {}):\n{}",
            fuzz_dir().display(),
            tail(&String::from_utf8_lossy(&fetch.stderr), 20)
        )));
    }
    let started = Instant::now();
    let out = cargo()
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .args([
            "build",
            "--release",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        // An explicit --target keeps RUSTFLAGS off build scripts and proc macros, which must
        // not be instrumented (they would not link). The target is this machine's own (as
        // rustc reports it); the binaries' paths come from cargo's JSON messages.
        .args(["--target", &host_target(), "--target-dir"])
        .arg(target_dir())
        .output()
        .expect("running cargo build");
    if !out.status.success() {
        return Err(NotBuilt::Failed(format!(
            "building the fuzz targets failed:\n{}",
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        )));
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    println!(
        "built {} fuzz targets in {:.0} s",
        bins.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(bins)
}

/// `stat::NAME: VALUE` from libFuzzer's final statistics.
fn stat(log: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    log.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Builds (once) and runs fuzz target `name` for the configured time; panics on a crash.
fn fuzz(name: &str) {
    let bin = match binaries() {
        Ok(bins) => match bins.iter().find(|(n, _)| n == name) {
            Some((_, path)) => path.clone(),
            None => panic!("the fuzz build produced no `{name}` binary: {bins:?}"),
        },
        Err(NotBuilt::Failed(why)) => panic!("{why}"),
        Err(NotBuilt::Missing(why)) => {
            if in_ci() {
                panic!("CI=true and {why}");
            }
            println!("SKIPPED: fuzz target {name}: {why}");
            return;
        }
    };
    let secs = seconds();
    // The committed seeds are read; new finds go to a corpus under the (ignored) target dir,
    // kept between local runs; crash inputs go where cargo-fuzz puts them.
    let seeds = fuzz_dir().join("corpus").join(name);
    let corpus = target_dir().join("corpus").join(name);
    let artifacts = fuzz_dir().join("artifacts").join(name);
    let log_path = target_dir().join("logs").join(format!("{name}.log"));
    for dir in [
        &corpus,
        &artifacts,
        &log_path.parent().unwrap().to_path_buf(),
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let log = std::fs::File::create(&log_path).unwrap();
    let before = files_in(&artifacts);
    let mut child = Command::new(&bin)
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(&seeds)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(secs) + EXIT_GRACE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{}", crash_report(name, &bin, s, &text, &artifacts, before)),
        None => panic!(
            "fuzz target {name} did not stop within {secs} s + {EXIT_GRACE:?} (log: {}):\n{}",
            log_path.display(),
            tail(&text, 30)
        ),
    }
    let runs = stat(&text, "number_of_executed_units")
        .unwrap_or_else(|| panic!("no final statistics in {}", log_path.display()));
    let per_sec = stat(&text, "average_exec_per_sec").unwrap_or(0);
    println!(
        "fuzz target {name}: {runs} runs in {secs} s ({per_sec} exec/s), corpus {} seeds + {} \
         found, no crash (log: {})",
        files_in(&seeds),
        files_in(&corpus),
        log_path.display()
    );
    assert!(runs > 0, "fuzz target {name} ran no input");
}

/// What a failed fuzz run says: libFuzzer's verdict, the panic, the input (path and hex) and
/// how to replay it.
fn crash_report(
    name: &str,
    bin: &Path,
    status: std::process::ExitStatus,
    log: &str,
    artifacts: &Path,
    before: usize,
) -> String {
    let input = log.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| PathBuf::from(p.trim()))
    });
    let mut report = format!("fuzz target {name} failed ({status})\n");
    let panic_lines: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("panicked at"))
        .take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note:"))
        .take(12)
        .collect();
    if !panic_lines.is_empty() {
        report += &format!("{}\n", panic_lines.join("\n"));
    }
    report += &format!(
        "--- last lines of the fuzzer's output:\n{}\n",
        tail(log, 25)
    );
    match &input {
        Some(path) => {
            report += &format!("crash input: {}\n", path.display());
            if let Ok(bytes) = std::fs::read(path) {
                let hex: String = bytes
                    .iter()
                    .take(MAX_HEX)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let cut = if bytes.len() > MAX_HEX { " (cut)" } else { "" };
                report += &format!("input ({} bytes, hex{cut}): {hex}\n", bytes.len());
            }
            report += &format!(
                "replay: {} {}\n   or: cd netboot/fuzz && cargo fuzz run --sanitizer none {name} {}\n",
                bin.display(),
                path.display(),
                path.display()
            );
        }
        None => {
            report += &format!(
                "no crash input named in the output ({} new files in {})\n",
                files_in(artifacts).saturating_sub(before),
                artifacts.display()
            );
        }
    }
    report
}

#[test]
fn fuzz_dhcp() {
    fuzz("dhcp");
}

#[test]
fn fuzz_tftp() {
    fuzz("tftp");
}

#[test]
fn fuzz_http() {
    fuzz("http");
}

/// The seeds are what their names say, so the fuzzer starts from real traffic.
#[test]
fn seed_corpus_is_what_it_says() {
    use netboot::dhcp::{self, BootFiles, Config, ListenPort};
    use netboot::hub::Lookup;

    let read = |target: &str| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(fuzz_dir().join("corpus").join(target))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        assert!(v.len() >= 3, "too few seeds for {target}");
        v
    };
    let cfg = Config {
        server_ip: "10.33.0.1".parse().unwrap(),
        http_base: "http://10.33.0.1:8080".into(),
        boot_files: BootFiles {
            bios: "ipxe/undionly.kpxe".into(),
            efi_x64: "ipxe/snponly.efi".into(),
            efi_arm64: None,
        },
    };
    for (name, bytes) in read("dhcp") {
        let p = dhcp::parse(&bytes).unwrap_or_else(|e| panic!("dhcp seed {name}: {e}"));
        let port = if name.contains("4011") {
            ListenPort::Pxe
        } else {
            ListenPort::Dhcp
        };
        let r = dhcp::answer(&p, port, &cfg, &Lookup::Node("n1".into()))
            .unwrap_or_else(|e| panic!("dhcp seed {name} gets no answer: {e}"));
        if name.contains("ipxe") {
            assert!(r.boot.contains("boot.ipxe"), "{name}: {}", r.boot);
        }
    }
    for (name, bytes) in read("tftp") {
        let parsed = netboot::tftp::parse_request(&bytes);
        if name == "wrq" {
            assert_eq!(parsed, Err(netboot::tftp::PacketError::WriteRequest));
        } else {
            parsed.unwrap_or_else(|e| panic!("tftp seed {name}: {e}"));
        }
    }
    for (name, bytes) in read("http") {
        let text = std::str::from_utf8(&bytes).unwrap();
        if name.starts_with("range-") {
            http_range_header::parse_range_header(text)
                .unwrap_or_else(|e| panic!("http seed {name}: {e}"));
        } else {
            assert!(text.starts_with('/'), "http seed {name}");
        }
    }
}

/// The host's target triple, from `rustc -vV` (`host: x86_64-unknown-linux-gnu`).
fn host_target() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_string()
}
