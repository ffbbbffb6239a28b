//! The files of one attempt of a command task: its inputs, its output, its checkpoints.
//!
//! Each attempt gets a scratch directory of its own (removed when the attempt ends) and these
//! variables:
//!
//! - `FLOTILLA_PARENTS`: the ids of the tasks it depends on, space-separated, in the order it
//!   named them; `FLOTILLA_INPUTS`: a directory holding each parent's result as a file named
//!   by the parent's id (`$FLOTILLA_INPUTS/<id>`). A task's output is its dependents' input.
//! - `FLOTILLA_OUTPUT`: a file the command may write its result to. When it exists after a
//!   successful exit, the result is its bytes exactly (at most
//!   [`Limits::MAX_RESULT_BYTES`]; a larger one fails the attempt, not retried, naming the
//!   limit); otherwise the result is the exit code and the tails of stdout and stderr as JSON.
//! - `FLOTILLA_CHECKPOINT_OUT`: a file the command writes its progress to (best written to a
//!   temporary name and renamed, so it is never read half-written). The worker looks at it
//!   every `--checkpoint-every` seconds while the command runs, and once more when it exits,
//!   and reports it when its contents changed — fenced by the attempt, like every report.
//!   `FLOTILLA_PROGRESS_OUT`: optionally, a percentage (0 to 100) reported with it.
//! - `FLOTILLA_CHECKPOINT_FILE`: the checkpoint an earlier attempt saved, byte for byte (only
//!   when there is one; `FLOTILLA_CHECKPOINT` holds it as text).
//!
//! A checkpoint over [`Limits::MAX_CHECKPOINT_BYTES`] is not reported; when the command ends
//! with one, the attempt fails (not retried) naming the limit, rather than lose progress
//! silently.

use std::path::{Path, PathBuf};

use flotilla_core::Limits;
use tracing::warn;

use crate::TaskContext;

/// The files of one attempt.
pub(crate) struct AttemptFiles {
    dir: PathBuf,
    /// What was reported last (or handed in by an earlier attempt): unchanged is not re-sent.
    last: Option<Vec<u8>>,
    /// Size of a checkpoint found over the limit, until a valid one replaces it.
    oversized: Option<u64>,
}

impl AttemptFiles {
    /// Makes the attempt's directory (under the system temp dir) and writes its inputs and
    /// the checkpoint handed in, if any.
    pub(crate) async fn create(ctx: &TaskContext) -> std::io::Result<AttemptFiles> {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-worker-{}-task-{}-attempt-{}",
            std::process::id(),
            ctx.task_id,
            ctx.attempt
        ));
        tokio::fs::create_dir_all(dir.join("inputs")).await?;
        let files = AttemptFiles {
            dir,
            last: ctx.checkpoint.clone(),
            oversized: None,
        };
        if let Some(cp) = &ctx.checkpoint {
            tokio::fs::write(files.input(), cp).await?;
        }
        for (parent, result) in &ctx.inputs {
            tokio::fs::write(files.inputs().join(parent.to_string()), result).await?;
        }
        Ok(files)
    }

    fn inputs(&self) -> PathBuf {
        self.dir.join("inputs")
    }

    fn result(&self) -> PathBuf {
        self.dir.join("output")
    }

    /// The result the command wrote to `$FLOTILLA_OUTPUT`, if it wrote one; an error naming
    /// the limit when it is too large.
    pub(crate) async fn written_result(&self) -> Result<Option<Vec<u8>>, String> {
        let path = self.result();
        let Ok(meta) = tokio::fs::metadata(&path).await else {
            return Ok(None);
        };
        let too_big = |bytes: u64| {
            format!(
                "result of {bytes} bytes in $FLOTILLA_OUTPUT is over the limit of {} bytes",
                Limits::MAX_RESULT_BYTES
            )
        };
        if meta.len() > Limits::MAX_RESULT_BYTES as u64 {
            return Err(too_big(meta.len()));
        }
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read $FLOTILLA_OUTPUT: {e}"))?;
        if data.len() > Limits::MAX_RESULT_BYTES {
            return Err(too_big(data.len() as u64));
        }
        Ok(Some(data))
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
    pub(crate) fn env(&self, ctx: &TaskContext) -> Vec<(&'static str, std::ffi::OsString)> {
        let parents: Vec<String> = ctx.parents.iter().map(|p| p.to_string()).collect();
        let mut env = vec![
            ("FLOTILLA_PARENTS", parents.join(" ").into()),
            ("FLOTILLA_INPUTS", self.inputs().into()),
            ("FLOTILLA_OUTPUT", self.result().into()),
            ("FLOTILLA_CHECKPOINT_OUT", self.output().into()),
            ("FLOTILLA_PROGRESS_OUT", self.progress().into()),
        ];
        if ctx.checkpoint.is_some() {
            env.push(("FLOTILLA_CHECKPOINT_FILE", self.input().into()));
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
