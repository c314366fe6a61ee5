//! `hearth`: runs a node (`hearth up`) or talks to a running one. Thin: parsing here,
//! the work in `commands`, the node itself in `hearth-node`.

mod args;
mod client;
mod commands;
mod config;

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
        // The reader of our output went away (`hearth audit | head`): nothing failed.
        Err(e) if e.downcast_ref::<commands::StdoutClosed>().is_some() => {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// One line on stderr, as the interface contract asks.
fn fail(e: &anyhow::Error) -> std::process::ExitCode {
    let line = format!("{e:#}").replace(['\n', '\r'], " ");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("error: {line}\n").as_bytes(),
    );
    std::process::ExitCode::FAILURE
}
