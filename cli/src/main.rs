//! `hearth`: runs a node (`hearth up`) or talks to a running one. Thin: parsing here,
//! the work in `commands`, the node itself in `hearth-node`.

mod args;
mod client;
mod commands;
mod config;
mod export;
mod mail;
mod man;
mod restore;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_usage(e),
    };
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                json,
                &anyhow::anyhow!("cannot start the async runtime: {e}"),
            );
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away (`hearth audit | head`): nothing failed.
        Err(e) if e.downcast_ref::<commands::StdoutClosed>().is_some() => {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => fail(json, &e),
    }
}

/// Help and version as clap prints them; a mistake in the arguments as one line (the
/// usage block dropped, a tip kept).
fn bad_usage(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ");
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    fail(
        json,
        &client::coded("usage", format!("{line} (see `hearth --help`)")),
    )
}

/// One line on stderr, as the interface contract asks; with `--json` also
/// `{"error": {"code", "message"}}` on stdout (the node's code when it answered with one).
fn fail(json: bool, e: &anyhow::Error) -> std::process::ExitCode {
    let line = one_line(e);
    if json && e.downcast_ref::<commands::Reported>().is_none() {
        let code = code_of(e);
        let body = serde_json::json!({ "error": { "code": code, "message": line } });
        let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("{body}\n").as_bytes());
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("error: {line}\n").as_bytes(),
    );
    std::process::ExitCode::FAILURE
}

/// The code `--json` gives a failure: the node's when it answered with one, the CLI's
/// own when it set one, else what the cause says (a file not found, bad JSON), else
/// `failed`.
fn code_of(e: &anyhow::Error) -> &str {
    for cause in e.chain() {
        if let Some(answer) = cause.downcast_ref::<client::NodeAnswered>() {
            return &answer.code;
        }
        if let Some(coded) = cause.downcast_ref::<client::Coded>() {
            return coded.code;
        }
    }
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => "not_found",
                std::io::ErrorKind::PermissionDenied => "permission_denied",
                std::io::ErrorKind::AlreadyExists => "exists",
                std::io::ErrorKind::StorageFull => "insufficient_storage",
                _ => "io",
            };
        }
        if cause.downcast_ref::<serde_json::Error>().is_some() {
            return "bad_json";
        }
        if cause.downcast_ref::<reqwest::Error>().is_some() {
            return "unreachable";
        }
    }
    "failed"
}

/// The error and its causes on one line, each cause once: an error that already
/// quotes its source (`cannot write x: No space left on device`) is not followed by
/// that source again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace(['\n', '\r'], " ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Like the node's storage errors: the message quotes the source it also returns.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot open x: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let os = || std::io::Error::from_raw_os_error(2);
        let quoted = anyhow::Error::new(Quoting { source: os() }).context("reading the config");
        assert_eq!(
            one_line(&quoted),
            "reading the config: cannot open x: No such file or directory (os error 2)"
        );
        let chained = anyhow::Error::new(os()).context("cannot open y");
        assert_eq!(
            one_line(&chained),
            "cannot open y: No such file or directory (os error 2)"
        );
    }
}
