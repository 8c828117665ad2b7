//! The documentation against the binary: every flag README.md and docs/*.md name exists in the
//! `--help` of the command that takes it, and every `$` line of README's recipes runs, in order,
//! in one bash session against a started `aasp dev` (as a reader types them in one terminal).
//!
//! A `$` line that cannot run on a plain Debian machine carries `# needs: WHAT` and is skipped by
//! that marker only; lines without `$` (the build commands, `aasp dev` itself) are not commands
//! this test claims to run: it starts the built binary's `aasp dev` in their place.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const AASP: &str = env!("CARGO_BIN_EXE_aasp");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_owned(), read(&root().join("README.md")))];
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    entries.sort();
    for path in entries {
        let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
        docs.push((name, read(&path)));
    }
    docs
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `--help` of `aasp` and of every subcommand, keyed by the subcommand path ("" is the top,
/// "key release" a nested one), plus the attestation-agent personality under its name.
fn help_texts() -> BTreeMap<String, String> {
    fn help(args: &[&str], arg0: Option<&str>) -> String {
        let mut cmd = Command::new(AASP);
        if let Some(arg0) = arg0 {
            cmd.arg0(arg0);
        }
        let out = cmd.args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "aasp {args:?} --help failed");
        String::from_utf8(out.stdout).unwrap()
    }
    /// The names listed under `Commands:`.
    fn subcommands(help: &str) -> Vec<String> {
        help.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_owned)
            .collect()
    }
    let mut texts = BTreeMap::new();
    let mut queue = vec![Vec::<String>::new()];
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args, None);
        for sub in subcommands(&text) {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
        texts.insert(path.join(" "), text);
    }
    texts.insert(
        "attestation-agent".into(),
        help(&[], Some("attestation-agent")),
    );
    texts
}

/// The long options a help text offers (`--name` at the start of an option line, or after
/// `-x, `).
fn options(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix('-').map_or(l, |rest| {
                // `-c, --config-file` → `--config-file`
                if rest.starts_with('-') {
                    l
                } else {
                    rest.split_once(", ").map_or(l, |(_, long)| long)
                }
            });
            l.strip_prefix("--")
                .map(|name| name.split([' ', '=', '[', '<']).next().unwrap_or(name))
                .filter(|name| !name.is_empty())
                .map(|name| format!("--{name}"))
        })
        .collect()
}

/// Every `--flag` in a piece of text.
fn flags_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut flags = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("--") {
        let start = i + pos;
        let before_ok = start == 0
            || !matches!(bytes[start - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_');
        let name: String = text[start + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if before_ok && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            // `--sim-*` names a family of options: kept as a prefix ending in `*`.
            let family = name.ends_with('-') && text[start + 2 + name.len()..].starts_with('*');
            flags.push(if family {
                format!("--{name}*")
            } else {
                format!("--{}", name.trim_end_matches('-'))
            });
        }
        i = start + 2 + name.len();
    }
    flags
}

/// Flags of other tools that the documents name in prose, outside a command line of that tool.
const FOREIGN: &[(&str, &str)] = &[
    ("--release", "cargo"),
    ("--path", "cargo install"),
    ("--locked", "cargo"),
    ("--all-targets", "cargo"),
    ("--pbkdf", "cryptsetup"),
    ("--cfg", "rustc"),
];

/// Code blocks and prose of a markdown document: (is_code, line).
fn lines(doc: &str) -> Vec<(bool, String)> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        out.push((in_code, line.to_owned()));
    }
    out
}

/// Shell command segments of a code line: split at pipes, `&&`, `;`, `$(`, with a leading `$`
/// prompt and `VAR=value` assignments removed.
fn segments(line: &str) -> Vec<String> {
    let line = line.split(" # ").next().unwrap_or(line);
    let line = line.trim_start().trim_start_matches("$ ");
    line.split(['|', ';', '&', '('])
        .map(|segment| {
            let words: Vec<&str> = segment
                .split_whitespace()
                .skip_while(|w| {
                    w.split_once('=')
                        .is_some_and(|(var, _)| !var.is_empty() && !var.starts_with('-'))
                })
                .collect();
            words.join(" ")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The subcommand path an `aasp …` segment names, and its remaining words.
fn command_path(segment: &str, helps: &BTreeMap<String, String>) -> Option<(String, String)> {
    let mut words = segment.split_whitespace();
    let first = words.next()?;
    let name = first.rsplit('/').next()?;
    if name != "aasp" && name != "attestation-agent" {
        return None;
    }
    if name == "attestation-agent" || segment.contains("--attestation_sock") {
        return Some(("attestation-agent".into(), segment.to_owned()));
    }
    let mut path = String::new();
    for word in words {
        let candidate = if path.is_empty() {
            word.to_owned()
        } else {
            format!("{path} {word}")
        };
        if helps.contains_key(&candidate) {
            path = candidate;
        } else {
            break;
        }
    }
    Some((path, segment.to_owned()))
}

#[test]
fn every_flag_the_docs_name_exists_in_help() {
    let helps = help_texts();
    let per_command: BTreeMap<&String, BTreeSet<String>> =
        helps.iter().map(|(k, v)| (k, options(v))).collect();
    let any: BTreeSet<&String> = per_command.values().flatten().collect();
    assert!(
        per_command[&"serve".to_owned()].contains("--maa-endpoint"),
        "help parsing found no --maa-endpoint in serve --help"
    );
    let mut missing = Vec::new();
    let mut checked = 0;
    for (name, doc) in documents() {
        // A code line that starts with whitespace continues the command above it (synopses).
        let mut joined: Vec<(bool, String)> = Vec::new();
        for (code, line) in lines(&doc) {
            match joined.last_mut() {
                Some((true, prev)) if code && line.starts_with(' ') && !line.trim().is_empty() => {
                    prev.push(' ');
                    prev.push_str(line.trim());
                }
                _ => joined.push((code, line)),
            }
        }
        for (code, line) in joined {
            if code && !line.trim_start().starts_with('#') {
                // Command lines: aasp's flags against that command's help; other tools' skipped.
                // A segment that starts with a flag continues the aasp command before it (a `|`
                // or `(` of a synopsis's alternatives, not a shell pipe).
                let mut last: Option<String> = None;
                for segment in segments(&line) {
                    let found = match (&last, segment.starts_with('-')) {
                        (Some(path), true) => Some((path.clone(), segment.clone())),
                        _ => command_path(&segment, &helps),
                    };
                    last = found.as_ref().map(|(path, _)| path.clone());
                    let Some((path, rest)) = found else {
                        continue;
                    };
                    let Some(known) = per_command.get(&path) else {
                        continue;
                    };
                    for flag in flags_in(&rest) {
                        checked += 1;
                        let exists = match flag.strip_suffix('*') {
                            Some(prefix) => known.iter().any(|o| o.starts_with(prefix)),
                            None => known.contains(&flag),
                        };
                        if !exists {
                            missing.push(format!("{name}: `aasp {path}` has no {flag}: {line}"));
                        }
                    }
                }
            } else {
                // Prose (and code comments): a flag in a backtick span that is a bare flag or an
                // aasp command must exist in some command's help.
                for span in line.split('`').skip(1).step_by(2) {
                    let span_start = span.trim_start();
                    let ours = span_start.starts_with("--")
                        || span_start.starts_with("aasp ")
                        || span_start.starts_with('[');
                    if !ours {
                        continue;
                    }
                    for flag in flags_in(span) {
                        checked += 1;
                        let foreign = FOREIGN.iter().any(|(f, _)| *f == flag);
                        let known = match flag.strip_suffix('*') {
                            Some(prefix) => any.iter().any(|o| o.starts_with(prefix)),
                            None => any.contains(&flag),
                        };
                        if !foreign && !known {
                            missing.push(format!("{name}: no command has {flag}: {line}"));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} flags found in the documents");
    assert!(
        missing.is_empty(),
        "flags the documents name but --help does not have:\n{}",
        missing.join("\n")
    );
}

#[test]
fn flag_check_catches_a_flag_help_lacks() {
    // The checker itself: a made-up flag on an aasp line is found, a real one is not.
    let helps = help_texts();
    let (path, rest) = command_path("aasp key release --kms x --no-such-flag", &helps).unwrap();
    assert_eq!(path, "key release");
    let known = options(&helps[&path]);
    let unknown: Vec<String> = flags_in(&rest)
        .into_iter()
        .filter(|f| !known.contains(f))
        .collect();
    assert_eq!(unknown, ["--no-such-flag"]);
}

/// The `$` lines of README's code blocks, in order: (line, the `# needs:` marker if any).
fn dollar_lines(readme: &str) -> Vec<(String, Option<String>)> {
    lines(readme)
        .into_iter()
        .filter(|(code, _)| *code)
        .filter_map(|(_, line)| {
            let command = line.trim_start().strip_prefix("$ ")?.to_owned();
            let needs = command
                .split_once("# needs:")
                .map(|(_, what)| what.trim().to_owned());
            Some((command, needs))
        })
        .collect()
}

/// Ports README's recipes use: aasp dev's default gRPC port and the SKR sidecar's.
const README_PORTS: [u16; 2] = [50000, 8080];

#[test]
fn readme_dollar_lines_run_against_aasp_dev() {
    // The recipes use fixed ports, as a reader's terminal does: one run at a time per machine.
    let lock =
        std::fs::File::create(std::env::temp_dir().join("aasp-readme-recipes.lock")).unwrap();
    lock.lock().unwrap();
    // Another program may hold a port for a moment (this machine is shared): wait a while.
    for port in README_PORTS {
        let since = Instant::now();
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "port {port} on 127.0.0.1 is taken: README's recipes need it (stop what holds it)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if Command::new("curl").arg("--version").output().is_err() {
        // CI is a clean Debian machine; the SKR recipe calls the REST API with curl.
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "curl"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "curl is missing and apt-get could not install it");
    }
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(AASP, bin.join("aasp")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // `cargo run --release -- dev` in README: the same binary, its defaults.
    let dev_log = home.path().join("dev.log");
    let mut dev = Command::new("aasp")
        .arg("dev")
        .env("PATH", &path)
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env_remove("AASP_STATE_DIR")
        .stdout(std::fs::File::create(&dev_log).unwrap())
        .stderr(std::fs::File::create(home.path().join("dev.err")).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(dev.id() as i32, false);
    let started = Instant::now();
    while !read(&dev_log).contains("Ctrl-C stops everything") {
        assert!(
            dev.try_wait().unwrap().is_none(),
            "aasp dev exited:\n{}",
            read(&dev_log)
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "aasp dev did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let readme = read(&root().join("README.md"));
    let mut script = String::from("set -euo pipefail\n");
    let mut ran = 0;
    for (line, needs) in dollar_lines(&readme) {
        match needs {
            Some(what) => eprintln!("skipped (needs: {what}): {line}"),
            None => {
                // Each line is echoed before it runs, so a failure names the line.
                script.push_str(&format!(
                    "printf '%s\\n' {}\n{line}\n",
                    shell_quote(&format!("$ {line}"))
                ));
                ran += 1;
            }
        }
    }
    assert!(ran >= 10, "only {ran} runnable $ lines in README");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(home.path())
        .env("PATH", &path)
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env_remove("AASP_STATE_DIR")
        .stdout(std::fs::File::create(home.path().join("recipes.out")).unwrap())
        .stderr(std::fs::File::create(home.path().join("recipes.err")).unwrap())
        // Its own process group: background processes the recipes start are stopped with it.
        .process_group(0)
        .spawn()
        .unwrap();
    let session = KillOnDrop(child.id() as i32, true);
    let status = child.wait().unwrap();
    let stdout = read(&home.path().join("recipes.out"));
    let stderr = read(&home.path().join("recipes.err"));
    drop(session);
    drop(guard);
    let _ = dev.wait();
    assert!(
        status.success(),
        "a README $ line failed ({status}); the last echoed line is the one:\n{stdout}\n--- stderr\n{stderr}"
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stops a process (or, with `group`, its whole process group) when the test ends either way.
struct KillOnDrop(i32, bool);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let target = if self.1 {
            format!("-{}", self.0)
        } else {
            self.0.to_string()
        };
        let _ = Command::new("kill").args(["-TERM", "--", &target]).status();
    }
}

#[test]
fn every_option_has_help_text() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
        for arg in cmd.get_arguments() {
            *seen += 1;
            if arg.get_help().is_none() && !arg.is_hide_set() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
        }
    }
    let mut missing = Vec::new();
    let mut seen = 0;
    walk(&aasp::cli::Cli::command(), "aasp", &mut missing, &mut seen);
    walk(
        &aasp::cli::attestation_agent::AgentArgs::command(),
        "attestation-agent",
        &mut missing,
        &mut seen,
    );
    assert!(seen > 100, "only {seen} options found");
    assert!(missing.is_empty(), "options without help text: {missing:?}");
}

/// Terminal rows `text` takes at `columns` columns.
fn rows(text: &str, columns: usize) -> usize {
    text.lines()
        .map(|l| l.chars().count().div_ceil(columns).max(1))
        .sum()
}

#[test]
fn serve_help_fits_two_screens() {
    // Two screens of 60 rows on a 100-column terminal. clap's long layout (one option in five
    // lines) comes back as soon as one option or value has a multi-paragraph doc comment.
    let out = Command::new(AASP)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let taken = rows(&help, 100);
    assert!(
        taken <= 120,
        "aasp serve --help takes {taken} rows at 100 columns, more than 120: shorten the longest \
         help texts (details belong in docs/):\n{help}"
    );
    for heading in ["Listeners:", "Trustee KBS:", "Certificates and trust:"] {
        assert!(help.contains(heading), "no {heading} heading:\n{help}");
    }
}

#[test]
fn every_environment_variable_is_in_the_reference() {
    // docs/reference.md's table names every variable some command's --help shows as `[env: …]`.
    let reference = read(&root().join("docs/reference.md"));
    let mut missing = BTreeSet::new();
    let mut seen = 0;
    for help in help_texts().values() {
        for rest in help.split("[env: ").skip(1) {
            let var = rest.split(['=', ']']).next().unwrap_or_default();
            seen += 1;
            if !reference.contains(&format!("`{var}`")) {
                missing.insert(var.to_owned());
            }
        }
    }
    assert!(seen > 30, "only {seen} [env: …] entries in --help");
    assert!(
        missing.is_empty(),
        "variables missing from docs/reference.md's table: {missing:?}"
    );
}
