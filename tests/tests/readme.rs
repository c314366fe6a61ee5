//! The README's tour, its service walk-through and its files, run exactly as written, so that the
//! README and the program cannot drift apart.
//!
//! Every `$ hearth …` line of the ```sh blocks in the sections named below runs, in
//! order, against one node (the `hearth up` blocks are that node; `export` and `cargo`
//! lines set up a shell and are skipped), in a directory of its own that holds the
//! README's `portrait.jpg`. Each must succeed. The lines printed below a command are
//! what it must print: word for word (runs of spaces equal), a whole JSON value as that
//! value, a word ending in `...` as any word; `<NAME>` takes whatever stands there and
//! stands for it in every later command. `curl` lines are made with an HTTP client
//! (their address is the node's; `$TOKEN` is `<TOKEN>`, `$(cat …/owner.token)` the
//! owner's token).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use hearth_tests::*;
use serde_json::Value;

/// The sections whose shell blocks run.
const SECTIONS: &[&str] = &[
    "## A tour",
    "## The dashboard",
    "## Giving a service a view",
    "## Your files",
];

#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The ```sh blocks of `sections` of `readme`, as steps.
fn steps(readme: &str, sections: &[&str]) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut section = "";
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if !in_block && line.starts_with("## ") {
            section = line;
            continue;
        }
        if !sections.contains(&section) {
            continue;
        }
        if line.trim_start().starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim_start();
        if !pending.is_empty() {
            pending.push(' ');
            pending.push_str(line.trim_end_matches('\\').trim());
            if !line.ends_with('\\') {
                out.push(Step {
                    command: std::mem::take(&mut pending),
                    expected: Vec::new(),
                });
            }
        } else if let Some(command) = line.strip_prefix("$ ") {
            if command.ends_with('\\') {
                pending = command.trim_end_matches('\\').trim().to_owned();
            } else {
                out.push(Step {
                    command: command.to_owned(),
                    expected: Vec::new(),
                });
            }
        } else if let Some(step) = out.last_mut() {
            step.expected.push(line.to_owned());
        }
    }
    out
}

/// A command line as the shell would cut it: words, quotes taken off, a `#` comment
/// gone.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// Puts what `<NAME>`s stand for into `text`.
fn fill(text: &str, known: &HashMap<String, String>) -> String {
    let mut text = text.to_owned();
    for (name, value) in known {
        text = text.replace(&format!("<{name}>"), value);
    }
    text
}

/// Checks `actual` against the README's `expected` lines, learning the `<NAME>`s.
fn check(command: &str, expected: &[String], actual: &str, known: &mut HashMap<String, String>) {
    if expected.is_empty() {
        return;
    }
    let wanted = fill(&expected.join("\n"), known);
    if let Ok(value) = serde_json::from_str::<Value>(&wanted) {
        let got: Value = serde_json::from_str(actual)
            .unwrap_or_else(|e| panic!("`{command}` printed no JSON ({e}):\n{actual}"));
        assert_eq!(got, value, "`{command}`");
        return;
    }
    let got: Vec<&str> = actual.lines().collect();
    let wanted: Vec<&str> = wanted.lines().collect();
    assert_eq!(
        got.len(),
        wanted.len(),
        "`{command}` printed\n{actual}\nwhere the README shows\n{}",
        wanted.join("\n")
    );
    for (got, wanted) in got.iter().zip(&wanted) {
        let (got_words, wanted_words): (Vec<&str>, Vec<&str>) = (
            got.split_whitespace().collect(),
            wanted.split_whitespace().collect(),
        );
        let fits = got_words.len() == wanted_words.len()
            && got_words.iter().zip(&wanted_words).all(|(g, w)| {
                if w.ends_with("...") {
                    return true;
                }
                match placeholder(w) {
                    Some((before, name, after)) => {
                        let Some(value) =
                            g.strip_prefix(before).and_then(|v| v.strip_suffix(after))
                        else {
                            return false;
                        };
                        known.insert(name.to_owned(), value.to_owned());
                        true
                    }
                    None => g == w,
                }
            });
        assert!(
            fits,
            "`{command}` printed\n{got}\nwhere the README shows\n{wanted}"
        );
    }
}

/// `(before, NAME, after)` of a word holding `<NAME>` (upper case).
fn placeholder(word: &str) -> Option<(&str, &str, &str)> {
    let start = word.find('<')?;
    let end = start + word[start..].find('>')?;
    let name = &word[start + 1..end];
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .then(|| (&word[..start], name, &word[end + 1..]))
}

fn run_hearth(home: &Path, dir: &Path, args: &[String]) -> (bool, String, String) {
    let mut command = Command::new(hearth_bin());
    command
        .arg("--home")
        .arg(home)
        .args(args)
        .current_dir(dir)
        .env_remove("HEARTH_HOME");
    let out = run_with_deadline(command, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_readme_tour_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("the README");
    let steps = steps(&readme, SECTIONS);
    assert!(steps.len() > 20, "the tour was found: {steps:?}");
    let t = TestHome::new();
    let home = t.path().join("my-vault");
    let dir = t.path().join("work");
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::fs::write(dir.join("portrait.jpg"), [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).unwrap();
    let node = spawn_node(&home, &[]);
    let base = node.base_url();
    let mut known: HashMap<String, String> = HashMap::new();
    let mut ran = 0;
    for step in &steps {
        let line = fill(&step.command, &known)
            .replace("~/", &format!("{}/", dir.join("home").display()))
            .replace("http://127.0.0.1:7780", &base);
        let args = words(&line);
        match args.first().map(String::as_str) {
            Some("hearth") if args.get(1).map(String::as_str) == Some("up") => continue,
            Some("hearth") => {
                let (ok, stdout, stderr) = run_hearth(&home, &dir, &args[1..]);
                assert!(ok, "`{line}` failed: {stderr}");
                check(&line, &step.expected, &stdout, &mut known);
                ran += 1;
            }
            Some("curl") => {
                let url = args.iter().find(|a| a.starts_with("http")).expect("a URL");
                let header = args
                    .iter()
                    .find(|a| a.starts_with("Authorization: Bearer "))
                    .expect("a bearer token");
                let token = match header.trim_start_matches("Authorization: Bearer ") {
                    "$TOKEN" => known.get("TOKEN").cloned().expect("<TOKEN> printed before"),
                    t if t.contains("owner.token") => node.owner_token(),
                    other => panic!("a token the test does not know: {other}"),
                };
                let answer = reqwest::blocking::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .unwrap();
                assert!(
                    answer.status().is_success(),
                    "`{line}`: {}",
                    answer.status()
                );
                check(&line, &step.expected, &answer.text().unwrap(), &mut known);
                ran += 1;
            }
            Some("export" | "cargo") => {}
            _ => panic!("the README runs a command the test does not know: {line}"),
        }
    }
    assert!(ran > 20, "{ran} commands ran");
    // What the tour promised it did.
    assert_eq!(
        std::fs::read(dir.join("copy.jpg")).unwrap(),
        [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]
    );
    assert!(dir.join("home/vault-export/export.json").is_file());
    assert_eq!(
        std::fs::read(dir.join("me.jpg")).unwrap(),
        [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]
    );
}

#[test]
fn the_reader_of_the_readme_reads_shell_lines() {
    assert_eq!(
        words(r#"hearth put notes '{"text": "a # b"}'   # a comment"#),
        ["hearth", "put", "notes", r#"{"text": "a # b"}"#]
    );
    assert_eq!(placeholder("<GRANT>:"), Some(("", "GRANT", ":")));
    let readme =
        "## A tour\n```sh\n$ hearth a \\\n   --b c\nout\n```\n## Other\n```sh\n$ hearth x\n```\n";
    let s = steps(readme, &["## A tour"]);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].command, "hearth a --b c");
    assert_eq!(s[0].expected, ["out"]);
}
