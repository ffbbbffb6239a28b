//! `flotilla cert`: a cluster CA and the certificates issued from it, for `--tls-cert` (replicas,
//! with `--peer`) and `--client-cert` (users), without an OpenSSL recipe. Keys are written
//! readable by their owner only; an existing file is never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use flotilla_tls::issue::{issue, new_ca, Pem, Spec};

const DAY_SECS: u64 = 86_400;

#[derive(Subcommand)]
pub enum CertCmd {
    /// Make a cluster CA: DIR/ca.pem (give it to replicas as --tls-client-ca and to clients
    /// as --ca) and DIR/ca.key (keep it safe: it issues replica certificates).
    Ca {
        /// Directory to write ca.pem and ca.key into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "flotilla cluster CA")]
        name: String,
        /// Valid for this many days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a certificate from the CA in --ca-dir: OUT/NAME.pem and OUT/NAME.key.
    Issue {
        /// Directory holding ca.pem and ca.key (`flotilla cert ca` made them).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The holder: a replica (e.g. replica-1) or a user.
        #[arg(long)]
        name: String,
        /// A replica's certificate: names flotilla-peer, which replicas check on each other,
        /// and serves as both server and client certificate.
        #[arg(long)]
        peer: bool,
        /// A DNS name or IP address clients dial this replica at (repeatable; at least one
        /// with --peer).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Valid for this many days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Directory to write into [default: --ca-dir].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: CertCmd) -> Result<ExitCode> {
    match cmd {
        CertCmd::Ca { out, name, days } => {
            let pem = new_ca(&name, validity(days)?)?;
            write_pair(&out, "ca", &pem)?;
        }
        CertCmd::Issue {
            ca_dir,
            name,
            peer,
            hosts,
            days,
            out,
        } => {
            let ca = Pem {
                cert: read(&ca_dir.join("ca.pem"))?,
                key: read(&ca_dir.join("ca.key"))?,
            };
            let spec = Spec {
                name: name.clone(),
                hosts,
                peer,
                valid_for: validity(days)?,
            };
            let pem = issue(&ca, &spec)?;
            write_pair(out.as_deref().unwrap_or(&ca_dir), &name, &pem)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validity(days: u64) -> Result<Duration> {
    if !(1..=36_500).contains(&days) {
        anyhow::bail!("invalid --days {days}: must be 1 to 36500");
    }
    Ok(Duration::from_secs(days * DAY_SECS))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes DIR/NAME.pem and DIR/NAME.key (0600), refusing to replace either.
fn write_pair(dir: &Path, name: &str, pem: &Pem) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    for path in [&cert, &key] {
        if path.exists() {
            anyhow::bail!("{} exists; it is left alone", path.display());
        }
    }
    write_new(&key, &pem.key, 0o600)?;
    write_new(&cert, &pem.cert, 0o644)?;
    outln!("{}", cert.display());
    outln!("{}", key.display());
    Ok(())
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
