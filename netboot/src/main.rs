//! `netboot`: the boot server's command line. A shim over [`netboot::cli::main`].

fn main() -> std::process::ExitCode {
    netboot::cli::main()
}
