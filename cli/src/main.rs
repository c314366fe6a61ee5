//! `hearth`: runs a node (`hearth up`) or talks to a running one. Thin: parsing here,
//! the work in `commands`, the node itself in `hearth-node`.

mod args;
mod client;
mod commands;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// One line on stderr, as the interface contract asks.
fn fail(e: &anyhow::Error) -> std::process::ExitCode {
    let line = format!("{e:#}").replace(['\n', '\r'], " ");
    eprintln!("error: {line}");
    std::process::ExitCode::FAILURE
}
