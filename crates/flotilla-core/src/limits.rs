//! Input limits and the validation of a [`TaskSpec`].
//!
//! The limits are constants of the replicated protocol: `apply` checks them, so every replica
//! must use the same values. An edge may be stricter, never looser.

use crate::{CommandError, TaskSpec};

/// Named limits on client input.
pub struct Limits;

impl Limits {
    pub const MAX_QUEUE_NAME_LEN: usize = 128;
    pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
    pub const MAX_BATCH_TASKS: usize = 1000;
    /// Tasks of one workflow, at most (a workflow is one batch; its bytes are still bounded by
    /// [`Limits::MAX_BATCH_BYTES`]).
    pub const MAX_WORKFLOW_TASKS: usize = 10_000;
    /// Bytes of one submitted batch, at most (payloads, keys, labels and queue names): every
    /// accepted batch fits one Raft entry that replicates well within a heartbeat interval.
    pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
    pub const MIN_PRIORITY: i32 = -1000;
    pub const MAX_PRIORITY: i32 = 1000;
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
    pub const MAX_CONCURRENCY_KEY_LEN: usize = 256;
    pub const MAX_DEPENDENCIES: usize = 256;
    pub const MAX_LABELS: usize = 32;
    pub const MAX_LABEL_LEN: usize = 128;
    pub const MAX_ATTEMPTS: u32 = 100;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    pub const MAX_CPU_MILLIS: u32 = 1_000_000;
    pub const MAX_MEM_MB: u32 = 16 * 1024 * 1024;
    pub const MAX_WORKER_ID_LEN: usize = 128;
    pub const MAX_WORKER_SLOTS: u32 = 100_000;
    pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
    pub const MAX_CHECKPOINT_BYTES: usize = 1024 * 1024;
    pub const MAX_ERROR_LEN: usize = 4096;
    /// First retry delay after a failed attempt; doubles per attempt up to the cap.
    pub const RETRY_BACKOFF_BASE_MS: u64 = 500;
    pub const RETRY_BACKOFF_MAX_MS: u64 = 60_000;
    /// Longest aging period of the priority policy (30 days).
    pub const MAX_AGING_MS: u64 = 30 * 24 * 3600 * 1000;
}

/// The bytes of a batch that count against [`Limits::MAX_BATCH_BYTES`].
pub fn batch_bytes<'a>(specs: impl IntoIterator<Item = &'a crate::TaskSpec>) -> usize {
    specs
        .into_iter()
        .map(|s| {
            s.payload.len()
                + s.queue.len()
                + s.idempotency_key.as_ref().map_or(0, String::len)
                + s.concurrency_key.as_ref().map_or(0, String::len)
                + s.labels
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
                + 8 * s.depends_on.len()
        })
        .sum()
}

/// Checks a queue name (shared by specs and queue settings).
pub(crate) fn validate_queue_name(field: &str, queue: &str) -> Result<(), CommandError> {
    let mut spec = TaskSpec::new(queue, Vec::new());
    spec.max_attempts = 1;
    validate_spec(field, &spec).map_err(|e| match e {
        CommandError::Invalid { message, .. } => CommandError::invalid(field, message),
        other => other,
    })
}

/// Checks one task of a batch in isolation (existence of dependencies is checked by `apply`).
/// `field` is the prefix naming the task in errors, e.g. `tasks[2]`.
pub fn validate_spec(field: &str, spec: &TaskSpec) -> Result<(), CommandError> {
    let err = |name: &str, msg: String| Err(CommandError::invalid(format!("{field}.{name}"), msg));
    if spec.queue.is_empty() {
        return err("queue", "must not be empty".into());
    }
    if spec.queue.len() > Limits::MAX_QUEUE_NAME_LEN {
        return err(
            "queue",
            format!(
                "{} bytes exceeds limit {}",
                spec.queue.len(),
                Limits::MAX_QUEUE_NAME_LEN
            ),
        );
    }
    if let Some(c) = spec
        .queue
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return err(
            "queue",
            format!("character {c:?} not allowed (use letters, digits, - _ . /)"),
        );
    }
    if spec.payload.len() > Limits::MAX_PAYLOAD_BYTES {
        return err(
            "payload",
            format!(
                "{} bytes exceeds limit {}",
                spec.payload.len(),
                Limits::MAX_PAYLOAD_BYTES
            ),
        );
    }
    if !(Limits::MIN_PRIORITY..=Limits::MAX_PRIORITY).contains(&spec.priority) {
        return err(
            "priority",
            format!(
                "{} out of range {}..={}",
                spec.priority,
                Limits::MIN_PRIORITY,
                Limits::MAX_PRIORITY
            ),
        );
    }
    if let Some(key) = &spec.idempotency_key {
        if key.is_empty() {
            return err("idempotency_key", "must not be empty when given".into());
        }
        if key.len() > Limits::MAX_IDEMPOTENCY_KEY_LEN {
            return err(
                "idempotency_key",
                format!(
                    "{} bytes exceeds limit {}",
                    key.len(),
                    Limits::MAX_IDEMPOTENCY_KEY_LEN
                ),
            );
        }
    }
    if let Some(key) = &spec.concurrency_key {
        if key.is_empty() {
            return err("concurrency_key", "must not be empty when given".into());
        }
        if key.len() > Limits::MAX_CONCURRENCY_KEY_LEN {
            return err(
                "concurrency_key",
                format!(
                    "{} bytes exceeds limit {}",
                    key.len(),
                    Limits::MAX_CONCURRENCY_KEY_LEN
                ),
            );
        }
    }
    if spec.depends_on.len() > Limits::MAX_DEPENDENCIES {
        return err(
            "depends_on",
            format!(
                "{} dependencies exceed limit {}",
                spec.depends_on.len(),
                Limits::MAX_DEPENDENCIES
            ),
        );
    }
    if spec.labels.len() > Limits::MAX_LABELS {
        return err(
            "labels",
            format!(
                "{} labels exceed limit {}",
                spec.labels.len(),
                Limits::MAX_LABELS
            ),
        );
    }
    for (k, v) in &spec.labels {
        if k.is_empty() || k.len() > Limits::MAX_LABEL_LEN || v.len() > Limits::MAX_LABEL_LEN {
            return err(
                "labels",
                format!(
                    "label {k:?} must have a key of 1..={} bytes and a value of at most {} bytes",
                    Limits::MAX_LABEL_LEN,
                    Limits::MAX_LABEL_LEN
                ),
            );
        }
    }
    if spec.max_attempts == 0 || spec.max_attempts > Limits::MAX_ATTEMPTS {
        return err(
            "max_attempts",
            format!(
                "{} out of range 1..={}",
                spec.max_attempts,
                Limits::MAX_ATTEMPTS
            ),
        );
    }
    if spec.resources.cpu_millis > Limits::MAX_CPU_MILLIS {
        return err(
            "resources.cpu_millis",
            format!(
                "{} exceeds limit {}",
                spec.resources.cpu_millis,
                Limits::MAX_CPU_MILLIS
            ),
        );
    }
    if spec.resources.mem_mb > Limits::MAX_MEM_MB {
        return err(
            "resources.mem_mb",
            format!(
                "{} exceeds limit {}",
                spec.resources.mem_mb,
                Limits::MAX_MEM_MB
            ),
        );
    }
    Ok(())
}
