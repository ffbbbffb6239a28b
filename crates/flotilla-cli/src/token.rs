//! `flotilla token new`: makes a token, appends its hashed line to a tokens file, prints it once.
//! `flotilla token peer-secret FILE`: writes a new cluster secret for `--peer-secret-file`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use std::os::unix::fs::OpenOptionsExt;

use flotilla_server::auth::{new_token, token_line, Role, Tokens};
use flotilla_server::peer_auth::new_secret;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token: its line (name, role, SHA-256) is appended to the tokens file, and the
    /// token itself is printed once, on stdout — keep it, it cannot be recovered.
    New {
        /// Who holds it (shown in refusals and logs).
        #[arg(long)]
        name: String,
        /// read, submit, worker or admin.
        #[arg(long)]
        role: String,
        /// The file replicas read with --tokens-file (created if missing).
        #[arg(long, value_name = "FILE")]
        tokens_file: PathBuf,
        /// Queues a submit token may submit to and cancel in (comma-separated) [default: any].
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
    },
    /// Write a new random cluster secret to FILE (readable by its owner only; an existing
    /// file is left alone): give every replica the same file with --peer-secret-file.
    PeerSecret {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

pub fn run(cmd: TokenCmd) -> Result<ExitCode> {
    match cmd {
        TokenCmd::New {
            name,
            role,
            tokens_file,
            queues,
        } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let queues: Vec<String> = queues.into_iter().filter(|q| !q.is_empty()).collect();
            let token = new_token();
            let line = token_line(&name, role, &token, &queues).map_err(anyhow::Error::msg)?;
            // The file must still parse with the new line (a name used twice is fine; a
            // broken file is reported now rather than when a replica starts).
            let existing = match std::fs::read_to_string(&tokens_file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).context(format!("{}", tokens_file.display())),
            };
            let mut all = existing.clone();
            if !all.is_empty() && !all.ends_with('\n') {
                all.push('\n');
            }
            all.push_str(&line);
            Tokens::parse(&all).map_err(|e| anyhow::anyhow!("{}: {e}", tokens_file.display()))?;
            let mut file =
                open_private(&tokens_file).with_context(|| format!("{}", tokens_file.display()))?;
            let sep = if !existing.is_empty() && !existing.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            writeln!(file, "{sep}{line}")
                .and_then(|()| file.sync_all())
                .with_context(|| format!("{}", tokens_file.display()))?;
            outln!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::PeerSecret { file } => {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("{}", file.display()))?;
            writeln!(out, "{}", new_secret())
                .and_then(|()| out.sync_all())
                .with_context(|| format!("{}", file.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens `path` for appending, creating it readable by its owner only.
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
