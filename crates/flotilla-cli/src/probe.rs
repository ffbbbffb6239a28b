//! `flotilla probe ADDR`: asks a replica's HTTP listener for `/readyz` (or `--path`) and exits
//! 0 only on `200 OK` — the health check of a container image that holds nothing but the
//! `flotilla` binary (no curl, no shell).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args)]
pub struct ProbeArgs {
    /// The replica's HTTP listener, HOST:PORT (its `--http-listen`).
    addr: String,
    /// The path to ask for: /readyz (ready to serve), /healthz (alive).
    #[arg(long, default_value = "/readyz")]
    path: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
}

/// Exits 0 on `200`, 1 (with the status line or the error on stderr) otherwise.
pub async fn run(args: ProbeArgs) -> Result<ExitCode> {
    if !args.path.starts_with('/') || args.path.contains(char::is_whitespace) {
        bail!(
            "invalid --path {:?}: expected a path such as /readyz",
            args.path
        );
    }
    let status = tokio::time::timeout(Duration::from_millis(args.timeout_ms), get(&args))
        .await
        .with_context(|| format!("{}: no answer within {} ms", args.addr, args.timeout_ms))??;
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{}{}: {status}", args.addr, args.path)
    }
}

/// The status line of `GET path` at `addr`.
async fn get(args: &ProbeArgs) -> Result<String> {
    let mut conn = tokio::net::TcpStream::connect(&args.addr)
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.path, args.addr
    );
    conn.write_all(request.as_bytes()).await?;
    // The status line is all that is needed; bound what is read.
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 || buf[..len + n].contains(&b'\n') {
            len += n;
            break;
        }
        len += n;
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    match text.lines().next() {
        Some(line) if line.starts_with("HTTP/") => Ok(line.trim().to_string()),
        _ => bail!("{}: not an HTTP answer", args.addr),
    }
}
