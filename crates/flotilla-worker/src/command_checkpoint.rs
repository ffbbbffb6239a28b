//! Checkpoints of command tasks, through files.
//!
//! Each attempt of a command task gets a scratch directory of its own and three variables:
//!
//! - `FLOTILLA_CHECKPOINT_OUT`: a file the command writes its progress to (best written to a
//!   temporary name and renamed, so it is never read half-written). The worker looks at it
//!   every `--checkpoint-every` seconds while the command runs, and once more when it exits,
//!   and reports it when its contents changed — fenced by the attempt, like every report.
//! - `FLOTILLA_PROGRESS_OUT`: optionally, a percentage (0 to 100) reported with it.
//! - `FLOTILLA_CHECKPOINT_FILE`: the checkpoint an earlier attempt saved, byte for byte (only
//!   when there is one; `FLOTILLA_CHECKPOINT` holds it as text, as before).
//!
//! A checkpoint over [`Limits::MAX_CHECKPOINT_BYTES`] is not reported; when the command ends
//! with one, the attempt fails (not retried) naming the limit, rather than lose progress
//! silently. The directory is removed when the attempt ends.

use std::path::{Path, PathBuf};

use flotilla_core::Limits;
use tracing::warn;

use crate::TaskContext;

/// The files of one attempt.
pub(crate) struct CheckpointFiles {
    dir: PathBuf,
    /// What was reported last (or handed in by an earlier attempt): unchanged is not re-sent.
    last: Option<Vec<u8>>,
    /// Size of a checkpoint found over the limit, until a valid one replaces it.
    oversized: Option<u64>,
}

impl CheckpointFiles {
    /// Makes the attempt's directory (under the system temp dir) and writes the checkpoint
    /// handed in, if any.
    pub(crate) async fn create(ctx: &TaskContext) -> std::io::Result<CheckpointFiles> {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-worker-{}-task-{}-attempt-{}",
            std::process::id(),
            ctx.task_id,
            ctx.attempt
        ));
        tokio::fs::create_dir_all(&dir).await?;
        let files = CheckpointFiles {
            dir,
            last: ctx.checkpoint.clone(),
            oversized: None,
        };
        if let Some(cp) = &ctx.checkpoint {
            tokio::fs::write(files.input(), cp).await?;
        }
        Ok(files)
    }

    fn output(&self) -> PathBuf {
        self.dir.join("checkpoint.out")
    }

    fn progress(&self) -> PathBuf {
        self.dir.join("progress.out")
    }

    fn input(&self) -> PathBuf {
        self.dir.join("checkpoint.in")
    }

    /// The variables the command gets.
    pub(crate) fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let mut env = vec![
            ("FLOTILLA_CHECKPOINT_OUT", self.output()),
            ("FLOTILLA_PROGRESS_OUT", self.progress()),
        ];
        if self.last.is_some() {
            env.push(("FLOTILLA_CHECKPOINT_FILE", self.input()));
        }
        env
    }

    /// Reports the checkpoint file when it changed since the last report.
    pub(crate) async fn report_if_changed(&mut self, ctx: &TaskContext) {
        let path = self.output();
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(_) => return, // not written (yet)
        };
        if size > Limits::MAX_CHECKPOINT_BYTES as u64 {
            if self.oversized != Some(size) {
                warn!(
                    task = %ctx.task_id,
                    attempt = ctx.attempt,
                    bytes = size,
                    limit = Limits::MAX_CHECKPOINT_BYTES,
                    "checkpoint in $FLOTILLA_CHECKPOINT_OUT is over the limit: not reported"
                );
            }
            self.oversized = Some(size);
            return;
        }
        let Ok(data) = tokio::fs::read(&path).await else {
            return;
        };
        // Re-checked on what was read: the file may have grown since its size was taken.
        if data.len() > Limits::MAX_CHECKPOINT_BYTES {
            self.oversized = Some(data.len() as u64);
            return;
        }
        self.oversized = None;
        if self.last.as_ref() == Some(&data) {
            return;
        }
        let progress = read_progress(&self.progress()).await;
        match ctx.checkpoint(progress, data.clone()).await {
            Ok(()) => self.last = Some(data),
            Err(e) => warn!(
                task = %ctx.task_id,
                attempt = ctx.attempt,
                error = %e,
                "checkpoint not saved (retried at the next look)"
            ),
        }
    }

    /// Why the attempt must fail after its command ended, if it must: its last checkpoint was
    /// over the limit.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.oversized.map(|bytes| {
            format!(
                "checkpoint of {bytes} bytes in $FLOTILLA_CHECKPOINT_OUT is over the limit of {} bytes",
                Limits::MAX_CHECKPOINT_BYTES
            )
        })
    }

    /// Removes the attempt's directory.
    pub(crate) async fn remove(self) {
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

/// The percentage in `path` as thousandths; 0 when absent or not a number in 0..=100.
async fn read_progress(path: &Path) -> u32 {
    let Ok(text) = tokio::fs::read_to_string(path).await else {
        return 0;
    };
    parse_progress(&text)
}

fn parse_progress(text: &str) -> u32 {
    match text.trim().trim_end_matches('%').trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => (p * 10.0).round() as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    #[test]
    fn progress_is_a_percentage() {
        assert_eq!(parse_progress("42"), 420);
        assert_eq!(parse_progress(" 12.5%\n"), 125);
        assert_eq!(parse_progress("100"), 1000);
        assert_eq!(parse_progress("0"), 0);
        assert_eq!(parse_progress("101"), 0);
        assert_eq!(parse_progress("-1"), 0);
        assert_eq!(parse_progress("half"), 0);
        assert_eq!(parse_progress(""), 0);
    }
}
