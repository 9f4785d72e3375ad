//! `ironbake`: a shim that parses the command line and runs [`ironbake::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ironbake::cli::quiet_on_closed_pipe();
    let cli = ironbake::cli::Cli::parse();
    if !cli.command.logs_itself() {
        ironbake::cli::init_tracing(cli.global.verbose);
    }
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
