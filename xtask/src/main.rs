//! `cargo xtask`: a shim that parses the command line and runs [`ironbake::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ironbake::cli::Cli::parse();
    if !cli.logs_itself() {
        ironbake::cli::init_tracing(cli.verbose);
    }
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
