//! The `storygpt` command line. Everything happens in [`storygpt::cli::run`].
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = storygpt::cli::Args::parse();
    match storygpt::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if storygpt::cli::is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
