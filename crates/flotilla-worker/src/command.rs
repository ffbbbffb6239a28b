//! Command tasks: the payload is an argv (plus optional env and working dir) as JSON; the
//! worker runs it as a child process with `FLOTILLA_TASK_ID`, `FLOTILLA_ATTEMPT` and
//! `FLOTILLA_WORKER_ID` set, keeps a bounded tail of its output, and on cancellation sends
//! SIGTERM, then SIGKILL after a grace period. It reads its parents' results, may write its
//! own, and saves checkpoints through files (see [`crate::attempt_files`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::attempt_files::AttemptFiles;
use crate::{Handler, Outcome, TaskContext};

/// Bytes of stdout and of stderr kept in the result.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// What a command task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandPayload {
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

impl CommandPayload {
    pub fn new(argv: Vec<String>) -> Self {
        CommandPayload {
            argv,
            env: BTreeMap::new(),
            cwd: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings always encode")
    }

    pub fn decode(bytes: &[u8]) -> Option<CommandPayload> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Runs command tasks.
pub struct CommandHandler {
    /// Time between SIGTERM and SIGKILL on cancellation.
    pub kill_grace: Duration,
    /// How often a running command's `$FLOTILLA_CHECKPOINT_OUT` is looked at (a changed one
    /// is reported); it is looked at once more when the command exits.
    pub checkpoint_every: Duration,
}

/// Default of [`CommandHandler::checkpoint_every`].
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

impl Default for CommandHandler {
    fn default() -> Self {
        CommandHandler {
            kill_grace: Duration::from_secs(5),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

/// Keeps the last `OUTPUT_TAIL_BYTES` of a stream.
async fn tail<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > OUTPUT_TAIL_BYTES * 2 {
            buf.drain(..buf.len() - OUTPUT_TAIL_BYTES);
        }
    }
    if buf.len() > OUTPUT_TAIL_BYTES {
        buf.drain(..buf.len() - OUTPUT_TAIL_BYTES);
    }
    buf
}

impl CommandHandler {
    async fn run_command(grace: Duration, every: Duration, ctx: TaskContext) -> Outcome {
        let mut files = match AttemptFiles::create(&ctx).await {
            Ok(f) => f,
            Err(e) => {
                return Outcome::Failure {
                    error: format!("cannot make the attempt's directory: {e}"),
                    retryable: true,
                }
            }
        };
        let outcome = Self::run_in(grace, every, &ctx, &mut files).await;
        files.remove().await;
        outcome
    }

    async fn run_in(
        grace: Duration,
        every: Duration,
        ctx: &TaskContext,
        files: &mut AttemptFiles,
    ) -> Outcome {
        let Some(payload) = CommandPayload::decode(&ctx.payload) else {
            return Outcome::Failure {
                error: "payload is not a command (expected JSON {\"argv\": [...]})".into(),
                retryable: false,
            };
        };
        let Some((program, args)) = payload.argv.split_first() else {
            return Outcome::Failure {
                error: "empty argv".into(),
                retryable: false,
            };
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(&payload.env)
            .env("FLOTILLA_TASK_ID", ctx.task_id.to_string())
            .env("FLOTILLA_ATTEMPT", ctx.attempt.to_string())
            .env("FLOTILLA_WORKER_ID", &ctx.worker_id)
            .envs(files.env(ctx))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a stop reaches the commands it started too (which would
            // otherwise keep its output open), and a Ctrl-C meant for the worker (which
            // drains) does not reach it.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cp) = &ctx.checkpoint {
            cmd.env(
                "FLOTILLA_CHECKPOINT",
                String::from_utf8_lossy(cp).to_string(),
            );
        }
        if let Some(dir) = &payload.cwd {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Failure {
                    error: format!("cannot start {program:?}: {e}"),
                    retryable: false,
                }
            }
        };
        let out = tokio::spawn(tail(child.stdout.take().expect("piped")));
        let err = tokio::spawn(tail(child.stderr.take().expect("piped")));
        let mut look = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let status = loop {
            tokio::select! {
            s = child.wait() => break s,
            _ = look.tick() => files.report_if_changed(ctx).await,
            _ = ctx.cancel.cancelled() => {
                let group = child.id().map(|pid| Pid::from_raw(-(pid as i32)));
                if let Some(g) = group {
                    let _ = kill(g, Signal::SIGTERM);
                }
                let s = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await
                    }
                };
                // Whatever of the group is left (a command the shell started) goes too.
                if let Some(g) = group {
                    let _ = kill(g, Signal::SIGKILL);
                }
                break s;
            }
            }
        };
        // A command that left a process holding its output open does not hold up the
        // outcome for long.
        let tail_of = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
            match tokio::time::timeout(grace, h).await {
                Ok(Ok(t)) => t,
                _ => Vec::new(),
            }
        };
        let stdout = tail_of(out).await;
        let stderr = tail_of(err).await;
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Failure {
                    error: format!("waiting for {program:?}: {e}"),
                    retryable: true,
                }
            }
        };
        if ctx.cancel.is_cancelled() {
            return Outcome::Failure {
                error: "cancelled".into(),
                retryable: false,
            };
        }
        // The last checkpoint reaches the leader before the outcome, so a retry gets it.
        files.report_if_changed(ctx).await;
        if let Some(why) = files.refusal() {
            return Outcome::Failure {
                error: why,
                retryable: false,
            };
        }
        let result = serde_json::json!({
            "exit_code": status.code(),
            "stdout": String::from_utf8_lossy(&stdout),
            "stderr": String::from_utf8_lossy(&stderr),
        });
        if status.success() {
            match files.written_result().await {
                Ok(Some(written)) => Outcome::Success(written),
                Ok(None) => Outcome::Success(result.to_string().into_bytes()),
                Err(why) => Outcome::Failure {
                    error: why,
                    retryable: false,
                },
            }
        } else {
            let last = String::from_utf8_lossy(&stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            Outcome::Failure {
                error: match status.code() {
                    Some(code) => format!("exit code {code}: {last}"),
                    None => format!("killed by a signal: {last}"),
                },
                retryable: true,
            }
        }
    }
}

impl Handler for CommandHandler {
    fn run(&self, ctx: TaskContext) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        Box::pin(Self::run_command(
            self.kill_grace,
            self.checkpoint_every,
            ctx,
        ))
    }
}
