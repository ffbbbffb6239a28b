//! Backup and restore: `flotilla snapshot export` takes a backup of the cluster's replicated
//! state from the leader (the snapshot file, verified once written); `flotilla restore`
//! prepares an empty data dir of a NEW cluster from one. The restore logic is
//! `flotilla_store::restore`; this module only parses, calls and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tokio::io::AsyncWriteExt;

use crate::commands::Ctx;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Back up the cluster's state: the leader builds a snapshot now and streams it into FILE
    /// (written as FILE.tmp, synced, read back and checked, then renamed).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Where to write the backup.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// How long the leader may take to build the snapshot, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    build_timeout: u64,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup (a file written by `flotilla snapshot export`).
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The new replica's data dir; must be empty or missing.
    #[arg(long)]
    data_dir: PathBuf,
    /// The new replica's id (must appear in --peers).
    #[arg(long)]
    id: u64,
    /// The new cluster's name (as its replicas will be started with).
    #[arg(long, default_value = "flotilla")]
    cluster_name: String,
    /// The new cluster's members, the same for every replica: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    peers: String,
}

pub async fn snapshot(ctx: &Ctx, command: SnapshotCmd) -> Result<ExitCode> {
    match command {
        SnapshotCmd::Export(args) => export(ctx, args).await,
    }
}

/// `FILE.tmp` beside `FILE`.
fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    out.with_file_name(name)
}

async fn export(ctx: &Ctx, args: ExportArgs) -> Result<ExitCode> {
    if args.out.file_name().is_none() {
        bail!("--out {}: not a file name", args.out.display());
    }
    let client = ctx.client()?;
    let mut export = client
        .export_snapshot(Duration::from_secs(args.build_timeout))
        .await
        .context("snapshot export")?;
    let tmp = tmp_path(&args.out);
    let written = write_file(&tmp, &mut export).await;
    let checked = match written {
        Ok(()) => {
            let path = tmp.clone();
            tokio::task::spawn_blocking(move || flotilla_store::read_backup(&path))
                .await
                .context("verifying the backup")?
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    let info = match checked {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if info.last_log_id.index != export.last_log_index
        || info.last_log_id.leader_id.term != export.last_log_term
        || info.bytes != export.total_bytes
    {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "the backup read back covers index {} term {} in {} bytes, the leader announced index {} term {} in {} bytes",
            info.last_log_id.index,
            info.last_log_id.leader_id.term,
            info.bytes,
            export.last_log_index,
            export.last_log_term,
            export.total_bytes
        );
    }
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    sync_parent(&args.out)?;
    let term = info.last_log_id.leader_id.term;
    if ctx.json {
        outln!(
            "{}",
            serde_json::json!({
                "file": args.out.display().to_string(),
                "index": info.last_log_id.index,
                "term": term,
                "records": info.records,
                "tasks": info.tasks,
                "bytes": info.bytes,
                "snapshot_id": info.snapshot_id,
            })
        );
    } else {
        outln!(
            "backup {}: index {} term {}, {} records ({} tasks), {} bytes",
            args.out.display(),
            info.last_log_id.index,
            term,
            info.records,
            info.tasks,
            info.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the whole export into `path` (replacing it) and syncs it.
async fn write_file(path: &Path, export: &mut flotilla_client::SnapshotExport) -> Result<()> {
    let mut file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    while let Some(chunk) = export.next_chunk().await.context("snapshot export")? {
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
    }
    file.sync_all()
        .await
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Syncs the directory holding `path`, so that a rename into it is durable.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", parent.display()))
}

pub async fn restore(ctx: &Ctx, args: RestoreArgs) -> Result<ExitCode> {
    let members = flotilla_server::parse_peers(&args.peers)
        .map_err(|e| anyhow::anyhow!("invalid --peers: {e}"))?;
    if !members.contains_key(&args.id) {
        bail!("--id {} does not appear in --peers", args.id);
    }
    let (dir, cluster, id, from) = (
        args.data_dir.clone(),
        args.cluster_name.clone(),
        args.id,
        args.from.clone(),
    );
    let peers = members.clone();
    let summary = tokio::task::spawn_blocking(move || {
        flotilla_store::restore(&dir, &cluster, id, &from, peers)
    })
    .await
    .context("restore")??;
    let last = summary.backup.last_log_id;
    if ctx.json {
        outln!(
            "{}",
            serde_json::json!({
                "data_dir": args.data_dir.display().to_string(),
                "id": args.id,
                "cluster_name": args.cluster_name,
                "index": last.index,
                "term": last.leader_id.term,
                "records": summary.backup.records,
                "tasks": summary.backup.tasks,
                "snapshot_id": summary.snapshot_id,
                "incarnation": summary.incarnation,
            })
        );
    } else {
        outln!(
            "restored {} as replica {} of cluster {:?} from {}: index {} term {}, {} tasks; start it with `flotilla server --id {} --listen {} --data-dir {} --peers {} --cluster-name {}`",
            args.data_dir.display(),
            args.id,
            args.cluster_name,
            args.from.display(),
            last.index,
            last.leader_id.term,
            summary.backup.tasks,
            args.id,
            members[&args.id],
            args.data_dir.display(),
            args.peers,
            args.cluster_name
        );
    }
    Ok(ExitCode::SUCCESS)
}
