//! Settings of `flotilla server` and `flotilla worker` from a TOML file (`--config FILE`) and
//! the environment, merged into the command line before clap parses it, so that every flag
//! has one meaning wherever it is set. Precedence: flags > `FLOTILLA_SERVER_*` /
//! `FLOTILLA_WORKER_*` environment variables > the file > the defaults.
//!
//! A file key is a flag's long name (`http-listen`, `max-connections`; `_` works for `-`);
//! values are strings, numbers, booleans (a switch is set by `true`) or arrays (a repeatable
//! flag such as the worker's `queue`, or a comma-separated list). An environment variable is
//! the flag's name in capitals after the prefix: `FLOTILLA_SERVER_HTTP_LISTEN=0.0.0.0:9464`.
//! Unknown keys and variables, values the flag would refuse, and missing required settings are
//! all reported before anything starts, one line each.

use std::ffi::OsString;

use clap::Command;

/// The subcommands that take settings, with their environment prefix.
const WITH_SETTINGS: [(&str, &str); 2] = [
    ("server", "FLOTILLA_SERVER_"),
    ("worker", "FLOTILLA_WORKER_"),
];

/// The subcommands whose settings include the global client options (`cluster`,
/// `token-file`, `ca`, `client-cert`, `client-key`, `tls-server-name`): a worker is a client of
/// the cluster, so its file says where the cluster is and how to reach it. A global option set
/// on the command line or by its own variable (`FLOTILLA_CLUSTER`...) wins over the file and
/// `FLOTILLA_WORKER_*`.
const WITH_GLOBALS: [&str; 1] = ["worker"];

/// `argv` with the settings of `--config FILE` and the environment (`env`) put before the
/// subcommand's own flags (so flags win); unchanged for other subcommands. `Err` lists every
/// problem found, one line each.
pub fn expand(
    cli: &Command,
    argv: Vec<OsString>,
    env: &[(String, String)],
) -> Result<Vec<OsString>, Vec<String>> {
    let valued_globals: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.is_global_set() && a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let Some((at, sub, prefix)) = subcommand(&argv, &valued_globals) else {
        return Ok(argv);
    };
    let mut cmd = cli
        .find_subcommand(sub)
        .expect("settings subcommands exist")
        .clone();
    // Globals given on the command line or by their own variable: not taken from settings.
    let mut overridden: Vec<String> = Vec::new();
    if WITH_GLOBALS.contains(&sub) {
        for g in cli.get_arguments().filter(|a| a.is_global_set()) {
            let Some(long) = g.get_long() else { continue };
            let on_line = argv.iter().skip(1).any(|a| {
                a.to_str().is_some_and(|a| {
                    a == format!("--{long}") || a.starts_with(&format!("--{long}="))
                })
            });
            let by_env = g
                .get_env()
                .and_then(|v| v.to_str())
                .is_some_and(|v| env.iter().any(|(k, _)| k == v));
            if on_line || by_env {
                overridden.push(long.to_string());
            }
            cmd = cmd.arg(g.clone());
        }
    }
    let own = &argv[at + 1..];
    let mut problems = Vec::new();
    let mut settings: Vec<OsString> = Vec::new();
    let mut given: Vec<String> = Vec::new();

    if let Some(file) = config_path(own) {
        match std::fs::read_to_string(&file) {
            Err(e) => problems.push(format!("cannot read --config {file}: {e}")),
            Ok(text) => match text.parse::<toml::Table>() {
                Err(e) => problems.push(format!(
                    "invalid --config {file}: {}",
                    e.to_string().lines().next().unwrap_or("not TOML")
                )),
                Ok(table) => {
                    for (key, value) in table {
                        let name = key.replace('_', "-");
                        if overridden.contains(&name) {
                            given.push(name);
                            continue;
                        }
                        match values(&value) {
                            Ok(vs) => {
                                let what = format!("{key:?} in {file}");
                                add(&cmd, &name, &vs, &what, &mut settings, &mut problems);
                                given.push(name);
                            }
                            Err(e) => problems.push(format!("invalid {key:?} in {file}: {e}")),
                        }
                    }
                }
            },
        }
    }
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(prefix) else {
            continue;
        };
        let name = rest.to_ascii_lowercase().replace('_', "-");
        if overridden.contains(&name) {
            given.push(name);
            continue;
        }
        let vs: Vec<String> = vec![value.clone()];
        add(&cmd, &name, &vs, var, &mut settings, &mut problems);
        given.push(name);
    }
    // Every required setting missing, not just the first clap would name.
    for arg in cmd.get_arguments().filter(|a| a.is_required_set()) {
        let Some(long) = arg.get_long() else { continue };
        let on_line = own.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        });
        if !on_line && !given.iter().any(|g| g == long) && !given.is_empty() {
            problems.push(format!(
                "missing required setting {long:?} (flag --{long}, file key {long}, or {prefix}{})",
                long.to_ascii_uppercase().replace('-', "_")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut out: Vec<OsString> = argv[..=at].to_vec();
    out.extend(settings);
    out.extend(own.iter().cloned());
    Ok(out)
}

/// The subcommand, when it takes settings: the first argument that is not a global option
/// (`--cluster ADDR`, `--ca=FILE`, `--json`; `valued` lists those that take a value). A
/// "server" further on (`flotilla submit -- echo server`) is an argument of another
/// subcommand, never this.
fn subcommand(argv: &[OsString], valued: &[String]) -> Option<(usize, &'static str, &'static str)> {
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        let a = a.to_str()?;
        match a {
            _ if valued.iter().any(|v| v == a) => i += 2,
            "--json" => i += 1,
            _ if a.starts_with("--") && a.contains('=') => i += 1,
            _ => {
                return WITH_SETTINGS
                    .iter()
                    .find(|(name, _)| *name == a)
                    .map(|(name, prefix)| (i, *name, *prefix));
            }
        }
    }
    None
}

/// The value of `--config` among a subcommand's own arguments.
fn config_path(own: &[OsString]) -> Option<String> {
    let mut it = own.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(str::to_string);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
    }
    None
}

/// A TOML value as the flag values it stands for.
fn values(v: &toml::Value) -> Result<Vec<String>, String> {
    match v {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Integer(i) => Ok(vec![i.to_string()]),
        toml::Value::Float(f) => Ok(vec![f.to_string()]),
        toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err("arrays hold plain values".to_string())
                }
                other => values(other).map(|mut v| v.remove(0)),
            })
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => {
            Err("expected a string, number, boolean or array".into())
        }
    }
}

/// Checks one setting against the flag it names and appends it as flags to `out`.
fn add(
    cmd: &Command,
    name: &str,
    vs: &[String],
    what: &str,
    out: &mut Vec<OsString>,
    problems: &mut Vec<String>,
) {
    let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(name)) else {
        problems.push(format!(
            "unknown setting {what}: `flotilla {}` has no --{name}",
            cmd.get_name()
        ));
        return;
    };
    if name == "config" {
        problems.push(format!(
            "{what}: --config cannot be set from a file or the environment"
        ));
        return;
    }
    let switch = !arg.get_action().takes_values();
    if switch {
        match vs {
            [v] if v == "true" => out.push(format!("--{name}").into()),
            [v] if v == "false" => {}
            _ => problems.push(format!("invalid {what}: expected true or false")),
        }
        return;
    }
    // A single-valued flag given an array takes it comma-separated (--peers, --join).
    let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
    let vs: Vec<String> = if repeatable || vs.len() == 1 {
        vs.to_vec()
    } else {
        vec![vs.join(",")]
    };
    for v in vs {
        // The flag's own value parser, alone (no required or conflicting flags around it).
        let check = Command::new("setting").arg(
            clap::Arg::new("value")
                .long("value")
                .value_parser(arg.get_value_parser().clone())
                .action(clap::ArgAction::Set),
        );
        if let Err(e) = check.try_get_matches_from(["setting", "--value", v.as_str()]) {
            let line = e.to_string();
            let line = line.lines().next().unwrap_or("").to_string();
            // "error: invalid value 'x' for '--value <value>': why" -> "why"
            let possible: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|p| p.get_name().to_string())
                .collect();
            let why = match line.rsplit_once("': ") {
                Some((_, why)) => why.to_string(),
                None if !possible.is_empty() => {
                    format!("expected one of {}", possible.join(", "))
                }
                None => "not a valid value".to_string(),
            };
            problems.push(format!("invalid {what}: {v:?} for --{name}: {why}"));
            continue;
        }
        out.push(format!("--{name}").into());
        out.push(v.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Cmd};
    use clap::{CommandFactory, Parser};

    const TEMPLATE: &str = include_str!("../../../deploy/flotilla.toml");

    /// Settings in the template that are off by default; its values for them are examples.
    const OFF_BY_DEFAULT: [&str; 10] = [
        "join",
        "id-from-hostname",
        "max-pending",
        "max-pending-per-queue",
        "http-listen",
        "tokens-file",
        "peer-secret-file",
        "tls-cert",
        "tls-key",
        "tls-client-ca",
    ];

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The replica configuration `flotilla server` would run with, as JSON.
    fn server_config(file: &str, env: &[(String, String)], flags: &[&str]) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, file).unwrap();
        let mut a = vec!["flotilla", "server", "--config", path.to_str().unwrap()];
        a.extend_from_slice(flags);
        let expanded = expand(&Cli::command(), argv(&a), env).unwrap_or_else(|p| panic!("{p:?}"));
        let cli = Cli::try_parse_from(expanded).unwrap();
        let Cmd::Server(args) = cli.command else {
            panic!("not the server command")
        };
        serde_json::to_value(crate::server::config_from(&args).unwrap()).unwrap()
    }

    /// The template's own lines (uncommented) and its commented `# key = value` lines.
    fn template_lines() -> (String, Vec<(String, String)>) {
        let own: String = TEMPLATE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let commented = TEMPLATE
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter_map(|l| {
                let (k, v) = l.split_once(" = ")?;
                (!k.contains(' ')).then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        (own, commented)
    }

    /// deploy/flotilla.toml names every flag of `flotilla server`, and each value it shows
    /// commented out is the real default: setting it changes nothing.
    #[test]
    fn the_template_shows_every_setting_and_the_real_defaults() {
        let (own, commented) = template_lines();
        let base = server_config(&own, &[], &[]);
        let cmd = Cli::command();
        let server = cmd.find_subcommand("server").unwrap();
        for arg in server.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || long == "config" || arg.is_global_set() {
                continue;
            }
            let in_own = own.lines().any(|l| l.starts_with(&format!("{long} = ")));
            let shown = commented.iter().any(|(k, _)| k == long);
            assert!(
                in_own || shown,
                "deploy/flotilla.toml does not show --{long}"
            );
        }
        for (key, value) in &commented {
            let file = format!("{own}{key} = {value}\n");
            if OFF_BY_DEFAULT.contains(&key.as_str()) {
                // An example: it must at least be a value the flag takes.
                let table: toml::Table = file.parse().unwrap();
                let vs = values(&table[key]).unwrap();
                let mut out = Vec::new();
                let mut problems = Vec::new();
                add(server, key, &vs, key, &mut out, &mut problems);
                assert!(problems.is_empty(), "{key}: {problems:?}");
                continue;
            }
            assert_eq!(
                server_config(&file, &[], &[]),
                base,
                "`{key} = {value}` in deploy/flotilla.toml is not the default"
            );
        }
    }

    /// Flags win over the environment, which wins over the file.
    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let (own, _) = template_lines();
        let file =
            format!("{own}heartbeat-ms = 150\nmax-connections = 100\nworker-ttl-ms = 5000\n");
        let env = [
            (
                "FLOTILLA_SERVER_HEARTBEAT_MS".to_string(),
                "170".to_string(),
            ),
            (
                "FLOTILLA_SERVER_MAX_CONNECTIONS".to_string(),
                "200".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = server_config(&file, &env, &["--max-connections", "300"]);
        assert_eq!(c["worker_lease_ttl_ms"], 5000, "from the file");
        assert_eq!(
            c["heartbeat_interval_ms"], 170,
            "the environment over the file"
        );
        assert_eq!(c["max_connections"], 300, "the flag over both");
    }

    /// Every problem is reported, one line each, naming the key and where it came from.
    #[test]
    fn every_bad_setting_is_reported_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "id = 1\nmax-connections = \"lots\"\ntypo_key = 3\nlog-format = \"yaml\"\nheartbeat-ms = [1, [2]]\n",
        )
        .unwrap();
        let env = [("FLOTILLA_SERVER_NOPE".to_string(), "1".to_string())];
        let problems = expand(
            &Cli::command(),
            argv(&["flotilla", "server", "--config", path.to_str().unwrap()]),
            &env,
        )
        .unwrap_err();
        let expect = [
            "\"lots\" for --max-connections: invalid digit",
            "unknown setting \"typo_key\"",
            "\"yaml\" for --log-format: expected one of text, json",
            "invalid \"heartbeat-ms\"",
            "unknown setting FLOTILLA_SERVER_NOPE",
            "missing required setting \"listen\"",
            "missing required setting \"data-dir\"",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.contains(e)),
                "{e:?} not reported: {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        assert!(problems.iter().all(|p| !p.contains('\n')));
        // A missing file is one line too; other subcommands are left alone.
        let missing = expand(
            &Cli::command(),
            argv(&["flotilla", "server", "--config", "/nonexistent.toml"]),
            &[],
        )
        .unwrap_err();
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("cannot read --config /nonexistent.toml"));
        let other = argv(&["flotilla", "status", "1"]);
        assert_eq!(expand(&Cli::command(), other.clone(), &env), Ok(other));
        // "server" as another subcommand's argument is left alone, settings or not.
        let env = [(
            "FLOTILLA_SERVER_HEARTBEAT_MS".to_string(),
            "170".to_string(),
        )];
        let submit = argv(&[
            "flotilla",
            "--cluster",
            "a:1",
            "submit",
            "--",
            "echo",
            "server",
        ]);
        assert_eq!(expand(&Cli::command(), submit.clone(), &env), Ok(submit));
        let own = ["--id", "1", "--listen", "127.0.0.1:1", "--data-dir", "/d"];
        let mut server = argv(&["flotilla", "--json", "--cluster=a:1", "server"]);
        server.extend(argv(&own));
        let expanded = expand(&Cli::command(), server, &env).unwrap();
        assert_eq!(
            expanded,
            argv(&[
                "flotilla",
                "--json",
                "--cluster=a:1",
                "server",
                "--heartbeat-ms",
                "170",
                "--id",
                "1",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                "/d"
            ])
        );
    }

    /// The worker takes the same: arrays become repeated flags.
    #[test]
    fn a_worker_reads_repeatable_flags_from_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "queue = [\"a\", \"b\"]\nslots = 8\nlabel = [\"gpu=yes\"]\n",
        )
        .unwrap();
        let expanded = expand(
            &Cli::command(),
            argv(&["flotilla", "worker", "--config", path.to_str().unwrap()]),
            &[],
        )
        .unwrap();
        let cli = Cli::try_parse_from(expanded).unwrap();
        let Cmd::Worker(w) = cli.command else {
            panic!("not the worker command")
        };
        assert_eq!(w.queues, vec!["a", "b"]);
        assert_eq!(w.slots, 8);
        assert_eq!(w.labels, vec!["gpu=yes"]);
    }

    /// A worker's file says where the cluster is and how to reach it (the global client
    /// options); the command line and the options' own variables still win, and the server
    /// takes no such keys.
    #[test]
    fn a_worker_file_names_its_cluster_token_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "cluster = \"a:1,b:2\"\ntoken-file = \"/etc/t\"\nca = \"/etc/ca.pem\"\nqueue = \"q\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let parse = |args: &[&str], env: &[(String, String)]| {
            let expanded = expand(&Cli::command(), argv(args), env).unwrap();
            Cli::try_parse_from(expanded).unwrap()
        };
        let cli = parse(&["flotilla", "worker", "--config", file], &[]);
        assert_eq!(cli.cluster.as_deref(), Some("a:1,b:2"));
        assert_eq!(cli.token_file, Some("/etc/t".into()));
        assert_eq!(cli.ca, Some("/etc/ca.pem".into()));
        let Cmd::Worker(w) = cli.command else {
            panic!("not the worker command")
        };
        assert_eq!(w.queues, vec!["q"]);
        // The flag, before or after the subcommand, wins over the file.
        let cli = parse(
            &["flotilla", "--cluster", "c:3", "worker", "--config", file],
            &[],
        );
        assert_eq!(cli.cluster.as_deref(), Some("c:3"));
        let cli = parse(
            &["flotilla", "worker", "--config", file, "--cluster=c:3"],
            &[],
        );
        assert_eq!(cli.cluster.as_deref(), Some("c:3"));
        // FLOTILLA_WORKER_CLUSTER over the file; the option's own variable over both (clap
        // reads it from the process environment, so here it only keeps the file's value out).
        let env = [("FLOTILLA_WORKER_CLUSTER".to_string(), "d:4".to_string())];
        let cli = parse(&["flotilla", "worker", "--config", file], &env);
        assert_eq!(cli.cluster.as_deref(), Some("d:4"));
        let env = [("FLOTILLA_CLUSTER".to_string(), "e:5".to_string())];
        let expanded = expand(
            &Cli::command(),
            argv(&["flotilla", "worker", "--config", file]),
            &env,
        )
        .unwrap();
        assert!(
            !expanded.iter().any(|a| a == "--cluster"),
            "the file's cluster stays out: {expanded:?}"
        );
        // A server's file has no such key.
        let server_file = dir.path().join("s.toml");
        std::fs::write(&server_file, "cluster = \"a:1\"\n").unwrap();
        let err = expand(
            &Cli::command(),
            argv(&[
                "flotilla",
                "server",
                "--config",
                server_file.to_str().unwrap(),
                "--id",
                "1",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                "/d",
            ]),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("has no --cluster"), "{err:?}");
    }
}
