//! `--auth`: the run's replicas need tokens and a peer secret, as a production cluster would.
//!
//! Before the cluster starts, `flotilla token new` makes an `admin` token (every client of the
//! suite sends it: submits, reads, membership) and a `worker` token (every worker process sends
//! it from a file), and `flotilla token peer-secret` writes the cluster secret. Replicas get
//! `--tokens-file` and `--peer-secret-file`. The checkers are the same: a run with auth must be
//! as valid as one without, which exercises the token layer, the workers' binding to their
//! session and token across leader changes, and the peer secret under every fault.
//!
//! `--tls`: `flotilla cert ca` makes a CA for the run and `flotilla cert issue --peer` a replica
//! certificate; replicas get `--tls-cert/--tls-key/--tls-client-ca`, every client and worker
//! `--ca` (checking the name `localhost`, which the certificate carries, whatever proxy address
//! it dials). Peers then authenticate each other by certificate, through the proxies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The files of a run with auth.
#[derive(Debug, Clone)]
pub struct Auth {
    pub tokens_file: PathBuf,
    pub peer_secret_file: PathBuf,
    /// Holds the workers' token (`flotilla worker --token-file`).
    pub worker_token_file: PathBuf,
}

static CLIENT_TOKEN: OnceLock<String> = OnceLock::new();
static CLIENT_TLS: OnceLock<flotilla_client::ClientTls> = OnceLock::new();

/// The TLS files of a run with `--tls`.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS the suite's clients use (None: plain TCP).
pub fn client_tls() -> Option<flotilla_client::ClientTls> {
    CLIENT_TLS.get().cloned()
}

/// The name clients expect in the replicas' certificate.
pub const SERVER_NAME: &str = "localhost";

/// Makes the run's CA and replica certificate under `dir` with `bin`; every client the suite
/// makes then uses TLS.
pub fn setup_tls(bin: &Path, dir: &Path) -> Result<Tls> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(bin)
            .arg("cert")
            .args(args)
            .output()
            .with_context(|| format!("run flotilla cert {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "flotilla cert {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let d = dir.to_str().context("the output dir is not UTF-8")?;
    run(&["ca", "--out", d])?;
    run(&[
        "issue",
        "--ca-dir",
        d,
        "--name",
        "replica",
        "--peer",
        "--host",
        SERVER_NAME,
        "--host",
        "127.0.0.1",
    ])?;
    let tls = Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("replica.pem"),
        key: dir.join("replica.key"),
    };
    let client = flotilla_client::tls_from_files(&tls.ca, None, None, Some(SERVER_NAME))?;
    if CLIENT_TLS.set(client).is_err() {
        bail!("tls was set up twice in one process");
    }
    Ok(tls)
}

/// The token the suite's clients send (None: a run without auth).
pub fn client_token() -> Option<String> {
    CLIENT_TOKEN.get().cloned()
}

fn flotilla(bin: &Path, args: &[&str], file: &Path) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .arg(file)
        .output()
        .with_context(|| format!("run {} {}", bin.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "flotilla {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Makes the tokens and the secret under `dir` with `bin`; the clients' token is then sent by
/// every client the suite makes.
pub fn setup(bin: &Path, dir: &Path) -> Result<Auth> {
    std::fs::create_dir_all(dir)?;
    let tokens_file = dir.join("tokens");
    let new = |name: &str, role: &str| {
        flotilla(
            bin,
            &[
                "token",
                "new",
                "--name",
                name,
                "--role",
                role,
                "--tokens-file",
            ],
            &tokens_file,
        )
    };
    let admin = new("jepsen", "admin")?;
    let worker = new("workers", "worker")?;
    let worker_token_file = dir.join("worker.token");
    std::fs::write(&worker_token_file, format!("{worker}\n"))?;
    let peer_secret_file = dir.join("peer-secret");
    flotilla(bin, &["token", "peer-secret"], &peer_secret_file)?;
    if CLIENT_TOKEN.set(admin).is_err() {
        bail!("auth was set up twice in one process");
    }
    Ok(Auth {
        tokens_file,
        peer_secret_file,
        worker_token_file,
    })
}
