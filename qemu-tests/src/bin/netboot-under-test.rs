//! The boot server's own command (`netboot::cli::main`), built in this package too, so the VM
//! tests can run it as a separate process under its own unprivileged user.

fn main() -> std::process::ExitCode {
    netboot::cli::main()
}
