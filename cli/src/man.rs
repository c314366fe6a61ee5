//! `hearth man`: one manual page (roff) with every command — its usage, what it does
//! and its options — then FILES and ENVIRONMENT. One page, so that nothing it names is
//! missing (clap_mangen alone would point to a `hearth-up(1)` nobody installed).

use clap::{Arg, Command};

/// Escapes text for roff: backslashes, and a `.` or `'` that would start a line as a
/// request.
fn esc(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    text.lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn arg_line(arg: &Arg) -> String {
    let mut out = String::new();
    if let Some(short) = arg.get_short() {
        out.push_str(&format!("\\fB\\-{short}\\fR"));
    }
    if let Some(long) = arg.get_long() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&format!("\\fB\\-\\-{}\\fR", esc(long)));
    }
    let values: Vec<String> = arg
        .get_value_names()
        .map(|names| names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    if arg.is_positional() {
        let name = values
            .first()
            .cloned()
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        out.push_str(&format!("\\fI{}\\fR", esc(&name)));
    } else if takes_value && !values.is_empty() {
        out.push_str(&format!(" \\fI{}\\fR", esc(&values.join(" "))));
    }
    out
}

fn command_section(out: &mut String, path: &str, command: &Command) {
    let mut command = command.clone().bin_name(path.to_owned());
    out.push_str(&format!(".SS \"{}\"\n", esc(path)));
    let usage = command.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").trim();
    out.push_str(&format!(".B {}\n.PP\n", esc(usage)));
    if let Some(about) = command.get_long_about().or_else(|| command.get_about()) {
        out.push_str(&esc(&about.to_string()));
        out.push_str("\n.PP\n");
    }
    for arg in command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
    {
        out.push_str(".TP\n");
        out.push_str(&arg_line(arg));
        out.push('\n');
        if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
            out.push_str(&esc(&help.to_string()));
            out.push('\n');
        }
    }
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        command_section(out, &format!("{path} {}", sub.get_name()), sub);
    }
}

/// The page: clap_mangen's title, name, synopsis, description and global options, then
/// every command here, FILES and ENVIRONMENT.
pub fn page(command: Command) -> anyhow::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command.clone());
    let mut text = Vec::new();
    man.render_title(&mut text)?;
    man.render_name_section(&mut text)?;
    man.render_synopsis_section(&mut text)?;
    man.render_description_section(&mut text)?;
    man.render_options_section(&mut text)?;
    let mut out = String::from(".SH COMMANDS\n");
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        command_section(&mut out, &format!("hearth {}", sub.get_name()), sub);
    }
    out.push_str(FILES_AND_ENVIRONMENT);
    text.extend_from_slice(out.as_bytes());
    Ok(text)
}

const FILES_AND_ENVIRONMENT: &str = r#".SH FILES
HOME is \fB\-\-home\fR, else \fB$HEARTH_HOME\fR, else the platform's data directory.
.TP
\fIHOME/keys\fR
This device's secrets (mode 0600), wrapped by the passphrase if one is set.
.TP
\fIHOME/owner.token\fR
The owner's API token (mode 0600). Whoever holds it has the vault.
.TP
\fIHOME/store/\fR
The database (sled): every value encrypted.
.TP
\fIHOME/blobs/\fR
File content, in encrypted 1 MiB chunks.
.TP
\fIHOME/api.addr\fR
Where the running node's API listens (removed when it stops); the CLI finds it there.
.TP
\fIHOME/hearth.toml\fR
What \fBhearth up\fR runs with: every flag of \fBup\fR as a key (api, lan, listen, peers, mdns, relay, name, passphrase_file, log, cache_mb, ...), and free_unnamed_after (how long bytes no file names stay: 10m, or never). A flag wins over the file. SIGHUP (\fBsystemctl reload\fR) reads it again and applies log and peers.
.TP
\fIHOME/tls.pem\fR
The LAN certificate (\fBhearth up \-\-lan\fR); its key is sealed in the store.
.SH ENVIRONMENT
.TP
\fBHEARTH_HOME\fR
The vault's home directory, when \fB\-\-home\fR is not given.
.TP
\fBHEARTH_PASSPHRASE\fR
The passphrase, for \fBinit\fR and \fBup\fR without \fB\-\-passphrase\-file\fR (a terminal is asked otherwise).
.TP
\fBHEARTH_NEW_PASSPHRASE\fR
The new passphrase, for \fBhearth passphrase\fR.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd: a credential named \fIpassphrase\fR there is the passphrase.
.TP
\fBRUST_LOG\fR
What the node logs (wins over \fIlog\fR in hearth.toml), e.g. \fIinfo\fR or \fIhearth=debug\fR.
.SH EXIT STATUS
0 on success; otherwise non\-zero, with a one\-line reason on standard error (and with \fB\-\-json\fR, \fB{"error": {"code", "message"}}\fR on standard output).
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command is in the page, no page it does not have is pointed to, and the
    /// page has FILES and ENVIRONMENT.
    #[test]
    fn one_page_holds_every_command() {
        let command = <crate::args::Cli as clap::CommandFactory>::command();
        let text = String::from_utf8(page(command.clone()).unwrap()).unwrap();
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            assert!(
                text.contains(&format!(".SS \"hearth {}\"", esc(sub.get_name()))),
                "{}",
                sub.get_name()
            );
        }
        assert!(text.contains(".SS \"hearth backup prune\""));
        assert!(
            !text.contains("hearth\\-up(1)"),
            "no pages that do not exist"
        );
        for section in [
            ".SH FILES",
            ".SH ENVIRONMENT",
            ".SH COMMANDS",
            "HEARTH_HOME",
        ] {
            assert!(text.contains(section), "{section}");
        }
        // No line starts a roff request by accident.
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('.') {
                let request = rest.split_whitespace().next().unwrap_or_default();
                assert!(
                    [
                        "TH", "SH", "SS", "TP", "PP", "B", "IP", "RS", "RE", "br", "ie", "el",
                        "nh", "ad", "fi", "nf", "sp", "in", "ti", "LP", "P", "HP", "I", "BR", "IR",
                        "BI", "RB", "RI", "IB"
                    ]
                    .contains(&request),
                    "{line}"
                );
            }
        }
    }
}
