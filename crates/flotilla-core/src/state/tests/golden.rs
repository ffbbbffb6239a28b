//! Golden bytes: the encodings of commands and image records are pinned, so that an
//! accidental change of shape fails here. A deliberate change bumps the format version
//! (`flotilla-store`'s codec for commands, [`STATE_IMAGE_VERSION`] for images), freezes the old
//! shapes in `crate::compat`, and updates these bytes.

use super::*;
use crate::compat::v6;
use crate::{
    AdmissionLimits, Capacity, QueuePolicy, QueueSetting, RateLimit, Resources, WorkerSpec,
    STATE_IMAGE_VERSION,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// One command of every kind, with every optional field set.
pub(super) fn sample_commands() -> Vec<Command> {
    let mut spec = TaskSpec::new("builds", b"make".to_vec());
    spec.priority = -7;
    spec.idempotency_key = Some("k".into());
    spec.estimate_ms = Some(1500);
    spec.resources = Resources {
        cpu_millis: 250,
        mem_mb: 64,
    };
    spec.labels = [("gpu".to_string(), "yes".to_string())].into();
    spec.depends_on = vec![TaskId(1)];
    spec.max_attempts = 4;
    spec.not_before_ms = Some(9);
    spec.timeout_ms = Some(60_000);
    let worker = WorkerSpec {
        id: "w1".into(),
        session: "s1".into(),
        capacity: Capacity {
            slots: 4,
            cpu_millis: 4000,
            mem_mb: 8192,
        },
        labels: [("gpu".to_string(), "yes".to_string())].into(),
        queues: vec!["builds".into()],
    };
    vec![
        Command::Submit {
            now_ms: 1,
            tasks: vec![spec],
            limits: AdmissionLimits {
                max_pending: Some(10),
                max_pending_per_queue: None,
            },
        },
        Command::Cancel {
            now_ms: 2,
            task_id: TaskId(3),
        },
        Command::Tick { now_ms: 3 },
        Command::RegisterWorker { now_ms: 4, worker },
        Command::ExpireWorker {
            now_ms: 5,
            worker_id: "w1".into(),
            reason: "lease".into(),
        },
        Command::Assign {
            now_ms: 6,
            task_id: TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
        },
        Command::Complete {
            now_ms: 7,
            task_id: TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
            result: b"ok".to_vec(),
        },
        Command::Fail {
            now_ms: 8,
            task_id: TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
            error: "e".into(),
            retryable: true,
        },
        Command::SaveCheckpoint {
            now_ms: 9,
            task_id: TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
            progress_permille: 5,
            data: b"c".to_vec(),
        },
        Command::SetQueue {
            now_ms: 10,
            queue: "q".into(),
            setting: QueueSetting::Policy(QueuePolicy::Priority { aging_ms: 100 }),
            create: true,
        },
        Command::SetQueue {
            now_ms: 11,
            queue: "q".into(),
            setting: QueueSetting::RetentionMs(Some(5)),
            create: false,
        },
        Command::Sweep {
            now_ms: 12,
            retention_ms: 13,
            key_retention_ms: 14,
            max_removals: 15,
        },
        // Format 3: settings appended to `QueueSetting`; the 12 above encode as in format 2.
        Command::SetQueue {
            now_ms: 16,
            queue: "q".into(),
            setting: QueueSetting::MaxRunning(Some(3)),
            create: false,
        },
        Command::SetQueue {
            now_ms: 17,
            queue: "q".into(),
            setting: QueueSetting::Weight(2),
            create: false,
        },
        Command::SetQueue {
            now_ms: 18,
            queue: "q".into(),
            setting: QueueSetting::Rate(Some(RateLimit {
                per_sec: 5,
                burst: 10,
            })),
            create: false,
        },
        // Format 4: workflows.
        Command::SubmitWorkflow {
            now_ms: 19,
            tasks: vec![
                crate::WorkflowTask {
                    name: "a".into(),
                    spec: TaskSpec::new("q", b"x".to_vec()),
                    after: vec![],
                },
                crate::WorkflowTask {
                    name: "b".into(),
                    spec: TaskSpec::new("q", b"y".to_vec()),
                    after: vec![0],
                },
            ],
            limits: AdmissionLimits::default(),
        },
        Command::CancelWorkflow {
            now_ms: 20,
            workflow: TaskId(21),
        },
        Command::AddSchedule {
            now_ms: 22,
            schedule: Box::new(crate::ScheduleSpec {
                name: "n".into(),
                cron: "0 3 * * *".into(),
                task: TaskSpec::new("q", b"z".to_vec()),
                overlap: crate::Overlap::Allow,
            }),
            next_tick_ms: Some(23),
        },
        Command::PauseSchedule {
            now_ms: 24,
            name: "n".into(),
            paused: true,
            next_tick_ms: None,
        },
        Command::DeleteSchedule {
            now_ms: 25,
            name: "n".into(),
        },
        Command::FireSchedule {
            now_ms: 26,
            name: "n".into(),
            tick_ms: 27,
            next_tick_ms: Some(28),
            missed: 3,
            limits: AdmissionLimits {
                max_pending: None,
                max_pending_per_queue: Some(29),
            },
        },
    ]
}

/// The format 6 bytes of [`sample_commands`] (each spec without a concurrency key).
const FORMAT_6_COMMANDS: [&str; 21] = [
    "000000000100000000000000010000000000000006000000000000006275696c647304000000000000006d616b65f9ffffff0101000000000000006b01dc05000000000000fa0000004000000001000000000000000300000000000000677075030000000000000079657301000000000000000100000000000000040000000109000000000000000160ea000000000000010a0000000000000000",
    "0100000002000000000000000300000000000000",
    "020000000300000000000000",
    "030000000400000000000000020000000000000077310200000000000000733104000000a00f000000200000010000000000000003000000000000006770750300000000000000796573010000000000000006000000000000006275696c6473",
    "0400000005000000000000000200000000000000773105000000000000006c65617365",
    "05000000060000000000000001000000000000000200000000000000773101000000",
    "0600000007000000000000000100000000000000020000000000000077310100000002000000000000006f6b",
    "0700000008000000000000000100000000000000020000000000000077310100000001000000000000006501",
    "0800000009000000000000000100000000000000020000000000000077310100000005000000010000000000000063",
    "090000000a000000000000000100000000000000710000000001000000640000000000000001",
    "090000000b000000000000000100000000000000710100000001050000000000000000",
    "0a0000000c000000000000000d000000000000000e000000000000000f000000",
    "09000000100000000000000001000000000000007102000000010300000000",
    "090000001100000000000000010000000000000071030000000200000000",
    "0900000012000000000000000100000000000000710400000001050000000a00000000",
    "0b0000001300000000000000020000000000000001000000000000006101000000000000007101000000000000007800000000000000000000000000000000000000000000000000000000000003000000000000000000000000000100000000000000620100000000000000710100000000000000790000000000000000000000000000000000000000000000000000000000000300000000000100000000000000000000000000",
    "0c00000014000000000000001500000000000000",
    "0d000000160000000000000001000000000000006e0900000000000000302033202a202a202a01000000000000007101000000000000007a00000000000000000000000000000000000000000000000000000000000003000000000001000000011700000000000000",
    "0e000000180000000000000001000000000000006e0100",
    "0f000000190000000000000001000000000000006e",
    "100000001a0000000000000001000000000000006e1b00000000000000011c000000000000000300000000011d00000000000000",
];

/// [`sample_commands`] with what format 7 added: the submitted task's concurrency key, and the
/// queue setting that limits it.
fn format_7_commands() -> Vec<Command> {
    let mut cmds = sample_commands();
    let Command::Submit { tasks, .. } = &mut cmds[0] else {
        unreachable!("the first sample is a submit")
    };
    tasks[0].concurrency_key = Some("cust".into());
    cmds.push(Command::SetQueue {
        now_ms: 30,
        queue: "q".into(),
        setting: QueueSetting::MaxPerKey(Some(2)),
        create: true,
    });
    cmds
}

const COMMANDS: [&str; 22] = [
    "000000000100000000000000010000000000000006000000000000006275696c647304000000000000006d616b65f9ffffff0101000000000000006b01dc05000000000000fa0000004000000001000000000000000300000000000000677075030000000000000079657301000000000000000100000000000000040000000109000000000000000160ea00000000000001040000000000000063757374010a0000000000000000",
    "0100000002000000000000000300000000000000",
    "020000000300000000000000",
    "030000000400000000000000020000000000000077310200000000000000733104000000a00f000000200000010000000000000003000000000000006770750300000000000000796573010000000000000006000000000000006275696c6473",
    "0400000005000000000000000200000000000000773105000000000000006c65617365",
    "05000000060000000000000001000000000000000200000000000000773101000000",
    "0600000007000000000000000100000000000000020000000000000077310100000002000000000000006f6b",
    "0700000008000000000000000100000000000000020000000000000077310100000001000000000000006501",
    "0800000009000000000000000100000000000000020000000000000077310100000005000000010000000000000063",
    "090000000a000000000000000100000000000000710000000001000000640000000000000001",
    "090000000b000000000000000100000000000000710100000001050000000000000000",
    "0a0000000c000000000000000d000000000000000e000000000000000f000000",
    "09000000100000000000000001000000000000007102000000010300000000",
    "090000001100000000000000010000000000000071030000000200000000",
    "0900000012000000000000000100000000000000710400000001050000000a00000000",
    "0b00000013000000000000000200000000000000010000000000000061010000000000000071010000000000000078000000000000000000000000000000000000000000000000000000000000030000000000000000000000000000010000000000000062010000000000000071010000000000000079000000000000000000000000000000000000000000000000000000000000030000000000000100000000000000000000000000",
    "0c00000014000000000000001500000000000000",
    "0d000000160000000000000001000000000000006e0900000000000000302033202a202a202a01000000000000007101000000000000007a0000000000000000000000000000000000000000000000000000000000000300000000000001000000011700000000000000",
    "0e000000180000000000000001000000000000006e0100",
    "0f000000190000000000000001000000000000006e",
    "100000001a0000000000000001000000000000006e1b00000000000000011c000000000000000300000000011d00000000000000",
    "090000001e0000000000000001000000000000007105000000010200000001",
];

#[test]
fn command_encodings_are_pinned() {
    let cmds = format_7_commands();
    let actual: Vec<String> = cmds
        .iter()
        .map(|c| hex(&bincode::serialize(c).unwrap()))
        .collect();
    assert_eq!(actual.len(), COMMANDS.len());
    for (i, (a, want)) in actual.iter().zip(COMMANDS).enumerate() {
        assert_eq!(
            a,
            want,
            "command {i} ({:?}) encodes differently:\n{}",
            cmds[i],
            actual
                .iter()
                .map(|h| format!("    \"{h}\","))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for c in &cmds {
        let back: Command = bincode::deserialize(&bincode::serialize(c).unwrap()).unwrap();
        assert_eq!(&back, c);
    }
    // What format 7 added, derived by hand: the key after the spec's timeout, and the setting.
    let key = concat!(
        "0160ea000000000000", // timeout_ms: Some(60,000)
        "01",                 // concurrency_key: Some
        "0400000000000000",   // 4 bytes
        "63757374",           // "cust"
    );
    assert!(COMMANDS[0].contains(key), "{}", COMMANDS[0]);
    let setting = concat!(
        "09000000",         // SetQueue
        "1e00000000000000", // now 30
        "0100000000000000", // queue: 1 byte
        "71",               // "q"
        "05000000",         // MaxPerKey
        "0102000000",       // Some(2)
        "01",               // create
    );
    assert_eq!(COMMANDS[21], setting);
}

/// Commands whose inner variants [`sample_commands`] does not reach: queue policies FIFO and
/// shortest job first, the settings that remove a limit, overlap skip.
fn format_6_extra_commands() -> Vec<Command> {
    let set = |now_ms, setting| Command::SetQueue {
        now_ms,
        queue: "q".into(),
        setting,
        create: false,
    };
    vec![
        set(30, QueueSetting::Policy(QueuePolicy::Fifo)),
        set(31, QueueSetting::Policy(QueuePolicy::ShortestJobFirst)),
        set(32, QueueSetting::RetentionMs(None)),
        set(33, QueueSetting::MaxRunning(None)),
        set(34, QueueSetting::Rate(None)),
        Command::AddSchedule {
            now_ms: 35,
            schedule: Box::new(crate::ScheduleSpec {
                name: "m".into(),
                cron: "every:5".into(),
                task: TaskSpec::new("q", b"s".to_vec()),
                overlap: crate::Overlap::Skip,
            }),
            next_tick_ms: None,
        },
    ]
}

/// The format 6 bytes of [`format_6_extra_commands`], derived by hand.
const FORMAT_6_EXTRA_COMMANDS: [&str; 6] = [
    "090000001e00000000000000010000000000000071000000000000000000",
    "090000001f00000000000000010000000000000071000000000200000000",
    "090000002000000000000000010000000000000071010000000000",
    "090000002100000000000000010000000000000071020000000000",
    "090000002200000000000000010000000000000071040000000000",
    "0d000000230000000000000001000000000000006d070000000000000065766572793a350100000000000000710100000000000000730000000000000000000000000000000000000000000000000000000000000300000000000000000000",
];

/// The variant of a format 6 command, and of the queue setting, queue policy and overlap it
/// holds. The matches that name them have no wildcard: every frozen variant is listed.
fn format_6_variants(c: &v6::Command) -> Vec<&'static str> {
    use v6::Command as C;
    let mut out = vec![match c {
        C::Submit { .. } => "Submit",
        C::Cancel { .. } => "Cancel",
        C::Tick { .. } => "Tick",
        C::RegisterWorker { .. } => "RegisterWorker",
        C::ExpireWorker { .. } => "ExpireWorker",
        C::Assign { .. } => "Assign",
        C::Complete { .. } => "Complete",
        C::Fail { .. } => "Fail",
        C::SaveCheckpoint { .. } => "SaveCheckpoint",
        C::SetQueue { .. } => "SetQueue",
        C::Sweep { .. } => "Sweep",
        C::SubmitWorkflow { .. } => "SubmitWorkflow",
        C::CancelWorkflow { .. } => "CancelWorkflow",
        C::AddSchedule { .. } => "AddSchedule",
        C::PauseSchedule { .. } => "PauseSchedule",
        C::DeleteSchedule { .. } => "DeleteSchedule",
        C::FireSchedule { .. } => "FireSchedule",
    }];
    match c {
        C::SetQueue { setting, .. } => out.push(match setting {
            v6::QueueSetting::Policy(p) => match p {
                v6::QueuePolicy::Fifo => "Policy(Fifo)",
                v6::QueuePolicy::Priority { .. } => "Policy(Priority)",
                v6::QueuePolicy::ShortestJobFirst => "Policy(ShortestJobFirst)",
            },
            v6::QueueSetting::RetentionMs(Some(_)) => "RetentionMs(Some)",
            v6::QueueSetting::RetentionMs(None) => "RetentionMs(None)",
            v6::QueueSetting::MaxRunning(Some(_)) => "MaxRunning(Some)",
            v6::QueueSetting::MaxRunning(None) => "MaxRunning(None)",
            v6::QueueSetting::Weight(_) => "Weight",
            v6::QueueSetting::Rate(Some(_)) => "Rate(Some)",
            v6::QueueSetting::Rate(None) => "Rate(None)",
        }),
        C::AddSchedule { schedule, .. } => out.push(match schedule.overlap {
            v6::Overlap::Skip => "Overlap::Skip",
            v6::Overlap::Allow => "Overlap::Allow",
        }),
        _ => {}
    }
    out
}

/// Format 6 log entries (the pinned bytes) decode through `compat::v6`'s frozen shapes, encode
/// back to the same bytes, and convert to the commands that wrote them; together they reach
/// every frozen command, queue setting, policy and overlap variant.
#[test]
fn format_6_commands_decode_through_the_frozen_shapes() {
    let mut cases: Vec<(Command, &str)> = sample_commands()
        .into_iter()
        .zip(FORMAT_6_COMMANDS)
        .collect();
    cases.extend(
        format_6_extra_commands()
            .into_iter()
            .zip(FORMAT_6_EXTRA_COMMANDS),
    );
    let mut frozen = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, (want, pinned)) in cases.iter().enumerate() {
        let old: v6::Command = bincode::deserialize(&unhex(pinned))
            .unwrap_or_else(|e| panic!("case {i} does not decode as format 6: {e}"));
        assert_eq!(
            hex(&bincode::serialize(&old).unwrap()),
            *pinned,
            "case {i} ({old:?}) encodes back differently"
        );
        seen.extend(format_6_variants(&old));
        assert_eq!(
            &Command::from(old.clone()),
            want,
            "case {i} converts wrongly"
        );
        frozen.push(old);
    }
    // 17 commands, 10 queue settings (policies; limits set and removed), 2 overlaps.
    assert_eq!(
        seen.len(),
        17 + 10 + 2,
        "a frozen variant is not decoded: {seen:?}"
    );
    // A whole entry: the frozen proposal reads back and converts to today's proposal of the
    // same commands, which encodes differently (format 7 added a field to each task spec).
    let old = v6::Proposal { commands: frozen };
    let bytes = bincode::serialize(&old).unwrap();
    let today = Proposal {
        commands: cases.into_iter().map(|(c, _)| c).collect(),
    };
    assert_ne!(bytes, bincode::serialize(&today).unwrap());
    let back: v6::Proposal = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, old);
    assert_eq!(Proposal::from(back), today);
}

/// A state that exercises every record kind: settings, a worker, tasks in several states,
/// a tombstone.
pub(super) fn sample_state() -> State {
    let mut s = State::new();
    let mut cmds = sample_commands();
    cmds.truncate(4); // submit (task 3, after task 1), cancel 3, tick, register
    let mut a = TaskSpec::new("q", b"a".to_vec());
    a.idempotency_key = Some("ka".into());
    let b = TaskSpec::new("q", b"b".to_vec());
    cmds.insert(0, Command::submit(0, vec![a, b]));
    cmds.extend([
        Command::Cancel {
            now_ms: 20,
            task_id: TaskId(1),
        },
        Command::SetQueue {
            now_ms: 21,
            queue: "q".into(),
            setting: QueueSetting::Policy(QueuePolicy::ShortestJobFirst),
            create: false,
        },
        Command::Sweep {
            now_ms: 100,
            retention_ms: 10,
            key_retention_ms: 1000,
            max_removals: 10,
        },
    ]);
    for c in &cmds {
        s.apply(c);
    }
    assert_eq!((s.task_count(), s.tombstone_count()), (1, 2));
    s
}

/// The image of [`sample_state`] as version 2 wrote it (no flow records).
const IMAGE_V2: &str = "000000000200000004000000000000006400000000000000010000000000000001000000000000000100000000000000020000000000000001000000010000000000000071020000000002000000020000000000000077310200000000000000733104000000a00f000000200000010000000000000003000000000000006770750300000000000000796573010000000000000006000000000000006275696c6473040000000000000004000000010000000000000001000000000000007102000000000000006b61050000000000000000000000000000001400000000000000fc030000000000000001090000000000000063616e63656c6c6564030000000200000000000000010000000000000000000000000000000000000000000000010000000000000071010000000000000062000000000003000000000000000000000000000004000000030000000000000006000000000000006275696c647301000000000000006b050000000000000001000000000000000200000000000000ea030000000000000001090000000000000063616e63656c6c6564";

/// [`sample_state`] with flow limits on its queue, set at an earlier `now_ms` than its clock
/// (100), so the bucket dates from 100.
fn sample_state_v3() -> State {
    let mut s = sample_state();
    for c in sample_commands().into_iter().skip(12).take(3) {
        let Command::SetQueue { setting, .. } = c else {
            unreachable!()
        };
        let r = s.apply(&Command::SetQueue {
            now_ms: 50,
            queue: "q".into(),
            setting,
            create: false,
        });
        assert_eq!(r, Response::QueueSet);
    }
    s
}

/// Version 3: the version 2 image with version 3 in its header, then the flow record.
fn image_v3() -> String {
    let flow = concat!(
        "05000000",           // Flow
        "0100000000000000",   // name: 1 byte
        "71",                 // "q"
        "0103000000",         // max_running: Some(3)
        "02000000",           // weight 2
        "01050000000a000000", // rate: Some(5/s, burst 10)
        "01",                 // bucket: Some
        "1027000000000000",   // 10,000 thousandths: full
        "6400000000000000",   // at 100
    );
    format!("0000000003000000{}{flow}", &IMAGE_V2[16..])
}

/// [`sample_state_v3`] with a workflow: "a", then "b" after it (tasks 4 and 5), at 200.
fn sample_state_v4() -> State {
    let mut s = sample_state_v3();
    let tasks = crate::workflow::resolve(vec![
        crate::NamedTask {
            name: "b".into(),
            spec: TaskSpec::new("q", b"b".to_vec()),
            after: vec!["a".into()],
        },
        crate::NamedTask {
            name: "a".into(),
            spec: TaskSpec::new("q", b"a".to_vec()),
            after: vec![],
        },
    ])
    .unwrap()
    .0;
    let r = s.apply(&Command::SubmitWorkflow {
        now_ms: 200,
        tasks,
        limits: AdmissionLimits::default(),
    });
    assert!(matches!(r, Response::WorkflowSubmitted { .. }), "{r:?}");
    s
}

/// Version 4: version 3 with the two tasks of [`sample_state_v4`]'s workflow and the workflow
/// record at the end.
const IMAGE_V4: &str = "00000000040000000600000000000000c800000000000000010000000000000001000000000000000300000000000000020000000000000001000000010000000000000071020000000002000000020000000000000077310200000000000000733104000000a00f000000200000010000000000000003000000000000006770750300000000000000796573010000000000000006000000000000006275696c6473040000000000000004000000010000000000000001000000000000007102000000000000006b61050000000000000000000000000000001400000000000000fc030000000000000001090000000000000063616e63656c6c6564030000000200000000000000010000000000000000000000000000000000000000000000010000000000000071010000000000000062000000000003000000000000000000000000000004000000030000000000000006000000000000006275696c647301000000000000006b050000000000000001000000000000000200000000000000ea030000000000000001090000000000000063616e63656c6c65640300000004000000000000000100000000000000c800000000000000c80000000000000001000000000000007101000000000000006100000000000300000000000000000000000000000300000005000000000000000000000000000000c800000000000000c800000000000000010000000000000071010000000000000062000000000003000000000000000000000000010000000000000000010000000000000004000000000000000000000500000001000000000000007101030000000200000001050000000a0000000110270000000000006400000000000000060000000400000000000000c800000000000000020000000000000001000000000000006104000000000000000100000000000000620500000000000000";

/// [`sample_state_v4`] with a schedule "n" added at 300, its tick 400 fired (task 6).
fn sample_state_v5() -> State {
    let mut s = sample_state_v4();
    let r = s.apply(&Command::AddSchedule {
        now_ms: 300,
        schedule: Box::new(crate::ScheduleSpec {
            name: "n".into(),
            cron: "0 3 * * *".into(),
            task: TaskSpec::new("q", b"z".to_vec()),
            overlap: crate::Overlap::Allow,
        }),
        next_tick_ms: Some(400),
    });
    assert_eq!(r, Response::ScheduleSet { name: "n".into() });
    let r = s.apply(&Command::FireSchedule {
        now_ms: 400,
        name: "n".into(),
        tick_ms: 400,
        next_tick_ms: Some(500),
        missed: 2,
        limits: AdmissionLimits::default(),
    });
    assert!(matches!(r, Response::ScheduleFired { .. }), "{r:?}");
    s
}

const IMAGE_V5: &str = "000000000500000007000000000000009001000000000000010000000000000001000000000000000400000000000000020000000000000001000000010000000000000071020000000002000000020000000000000077310200000000000000733104000000a00f000000200000010000000000000003000000000000006770750300000000000000796573010000000000000006000000000000006275696c6473040000000000000004000000010000000000000001000000000000007102000000000000006b61050000000000000000000000000000001400000000000000fc030000000000000001090000000000000063616e63656c6c6564030000000200000000000000010000000000000000000000000000000000000000000000010000000000000071010000000000000062000000000003000000000000000000000000000004000000030000000000000006000000000000006275696c647301000000000000006b050000000000000001000000000000000200000000000000ea030000000000000001090000000000000063616e63656c6c65640300000004000000000000000100000000000000c800000000000000c80000000000000001000000000000007101000000000000006100000000000300000000000000000000000000000300000005000000000000000000000000000000c800000000000000c8000000000000000100000000000000710100000000000000620000000000030000000000000000000000000100000000000000000100000000000000040000000000000000000003000000060000000000000001000000000000009001000000000000900100000000000001000000000000007101000000000000007a010e000000000000007363686564756c653a6e3a343030000000000300000000000000000000000000000500000001000000000000007101030000000200000001050000000a0000000110270000000000006400000000000000060000000400000000000000c8000000000000000200000000000000010000000000000061040000000000000001000000000000006205000000000000000700000001000000000000006e0900000000000000302033202a202a202a01000000000000007101000000000000007a000000000000000000000000000000000000000000000000000000000000030000000000010000002c010000000000000001f401000000000000019001000000000000010600000000000000010000000000000000000000000000000200000000000000";

/// [`sample_state_v5`] with task 7 in queue "builds": attempt 1 on w1 from 510 failed at 520
/// ("boom"), retried after its backoff (at 1,020).
fn sample_state_v6() -> State {
    let mut s = sample_state_v5();
    let r = s.apply(&Command::submit(
        500,
        vec![TaskSpec::new("builds", b"y".to_vec())],
    ));
    assert!(
        matches!(&r, Response::Submitted { ids, .. } if ids == &[TaskId(7)]),
        "{r:?}"
    );
    let r = s.apply(&Command::Assign {
        now_ms: 510,
        task_id: TaskId(7),
        worker_id: "w1".into(),
        attempt: 1,
    });
    assert_eq!(
        r,
        Response::Assigned {
            task_id: TaskId(7),
            attempt: 1
        }
    );
    let r = s.apply(&Command::Fail {
        now_ms: 520,
        task_id: TaskId(7),
        worker_id: "w1".into(),
        attempt: 1,
        error: "boom".into(),
        retryable: true,
    });
    assert_eq!(
        r,
        Response::AttemptFailed {
            task_id: TaskId(7),
            retry_at_ms: Some(1020)
        }
    );
    s
}

/// The image of [`sample_state_v6`] as version 6 wrote it (shared with `flotilla-store`'s
/// snapshot file test).
const IMAGE_V6: &str = include_str!("../../../testdata/image_v6.hex");

/// [`sample_state_v6`] with what version 7 added: a per-key limit on queue "builds" and a
/// pending task there with a concurrency key (task 8), at 600.
fn sample_state_v7() -> State {
    let mut s = sample_state_v6();
    let r = s.apply(&Command::SetQueue {
        now_ms: 600,
        queue: "builds".into(),
        setting: QueueSetting::MaxPerKey(Some(1)),
        create: false,
    });
    assert_eq!(r, Response::QueueSet);
    let mut t = TaskSpec::new("builds", b"c".to_vec());
    t.concurrency_key = Some("cust".into());
    let r = s.apply(&Command::submit(600, vec![t]));
    assert!(
        matches!(&r, Response::Submitted { ids, .. } if ids == &[TaskId(8)]),
        "{r:?}"
    );
    s
}

const IMAGE_V7: &str = "000000000700000009000000000000005802000000000000010000000000000001000000000000000600000000000000020000000000000001000000010000000000000071020000000002000000020000000000000077310200000000000000733104000000a00f000000200000010000000000000003000000000000006770750300000000000000796573010000000000000006000000000000006275696c6473040000000000000004000000010000000000000001000000000000007102000000000000006b61050000000000000000000000000000001400000000000000fc030000000000000001090000000000000063616e63656c6c6564030000000200000000000000010000000000000000000000000000000000000000000000010000000000000071010000000000000062000000000003000000000000000000000000000004000000030000000000000006000000000000006275696c647301000000000000006b050000000000000001000000000000000200000000000000ea030000000000000001090000000000000063616e63656c6c65640300000004000000000000000100000000000000c800000000000000c80000000000000001000000000000007101000000000000006100000000000300000000000000000000000000000300000005000000000000000000000000000000c800000000000000c800000000000000010000000000000071010000000000000062000000000003000000000000000000000000010000000000000000010000000000000004000000000000000000000003000000060000000000000001000000000000009001000000000000900100000000000001000000000000007101000000000000007a010e000000000000007363686564756c653a6e3a343030000000000300000000000000000000000000000300000007000000000000000000000001000000f401000000000000080200000000000006000000000000006275696c6473010000000000000079000000000003000000000000000000000000010000000000000000000000000000000001fc030000000000000000010001fe0100000000000000010400000000000000626f6f6d00010200000000000000773103000000080000000000000001000000000000005802000000000000580200000000000006000000000000006275696c64730100000000000000630000000000030000000000000000000000000100000000000000000000000000000000000001040000000000000063757374000500000006000000000000006275696c64730001000000000101000000000500000001000000000000007101030000000200000001050000000a000000000110270000000000006400000000000000060000000400000000000000c8000000000000000200000000000000010000000000000061040000000000000001000000000000006205000000000000000700000001000000000000006e0900000000000000302033202a202a202a01000000000000007101000000000000007a00000000000000000000000000000000000000000000000000000000000003000000000000010000002c010000000000000001f40100000000000001900100000000000001060000000000000001000000000000000000000000000000020000000000000008000000070000000000000001000000000000000100000002000000000000007731fe0100000000000008020000000000000400000000000000626f6f6d01fc03000000000000";

#[test]
fn image_encoding_is_pinned() {
    assert_eq!(STATE_IMAGE_VERSION, 7);
    let state = sample_state_v7();
    let bytes = hex(&image_bytes(&state));
    assert_eq!(bytes, IMAGE_V7, "the image encodes differently:\n{bytes}");
    // What version 7 added, derived by hand: task 8's spec extras with its key, and the
    // per-key limit closing the flow record of "builds".
    let extra = concat!(
        "01",               // extra: Some
        "0000000000000000", // labels: none
        "0000000000000000", // depends_on: none
        "00",               // not_before_ms: None
        "00",               // timeout_ms: None
        "01",               // concurrency_key: Some
        "0400000000000000", // 4 bytes
        "63757374",         // "cust"
        "00",               // run: None
    );
    assert!(bytes.contains(extra), "{bytes}");
    let flow = concat!(
        "05000000",         // Flow
        "0600000000000000", // name: 6 bytes
        "6275696c6473",     // "builds"
        "00",               // max_running: None
        "01000000",         // weight 1
        "00",               // rate: None
        "0101000000",       // max_per_key: Some(1)
        "00",               // bucket: None
    );
    assert!(bytes.contains(flow), "{bytes}");
    assert_eq!(image_bytes(&restore(&state)), image_bytes(&state));
    assert_eq!(restore(&state).key_room("builds", Some("cust")), 1);
}

/// A version 6 image (the previous release's snapshot) is read through the frozen version 6
/// records: the same state, written as version 7.
#[test]
fn a_version_6_image_is_read() {
    let state = State::from_records(decode_image_v6(IMAGE_V6)).unwrap();
    let bytes = hex(&image_bytes(&state));
    assert!(bytes.starts_with("0000000007000000"), "{bytes}");
    assert_eq!(image_bytes(&state), image_bytes(&sample_state_v6()));
    assert_eq!(state.ended_attempts(TaskId(7)).len(), 1);
    // Today's decoder misreads or refuses the version 6 bytes: the frozen shapes are needed.
    let today: Result<Vec<ImageRecord>, _> = try_decode_image(IMAGE_V6);
    assert!(
        today.map_or(true, |r| State::from_records(r)
            .ok()
            .map(|s| image_bytes(&s))
            != Some(image_bytes(&sample_state_v6()))),
        "version 6 bytes read as today's records"
    );
}

/// The pinned version 6 bytes hold the attempts record as derived by hand.
#[test]
fn the_version_6_image_is_what_version_6_wrote() {
    let attempts = concat!(
        "08000000",           // Attempts
        "0700000000000000",   // task 7
        "0100000000000000",   // 1 ended attempt
        "01000000",           // attempt 1
        "0200000000000000",   // worker: 2 bytes
        "7731",               // "w1"
        "fe01000000000000",   // started at 510
        "0802000000000000",   // ended at 520
        "0400000000000000",   // error: 4 bytes
        "626f6f6d",           // "boom"
        "01fc03000000000000", // retry at: Some(1,020)
    );
    assert!(IMAGE_V6.ends_with(attempts), "{IMAGE_V6}");
    assert!(IMAGE_V6.starts_with("0000000006000000"));
}

/// A version 5 image is read through the frozen version 6 records: the same state.
#[test]
fn a_version_5_image_is_read() {
    let state = State::from_records(decode_image_v6(IMAGE_V5)).unwrap();
    assert!(hex(&image_bytes(&state)).starts_with("0000000007000000"));
    assert_eq!(image_bytes(&state), image_bytes(&sample_state_v5()));
    // An attempts record has no place in a version 5 image.
    let mut records = decode_image_v6(IMAGE_V5);
    records.push(ImageRecord::Attempts {
        task: TaskId(6),
        ended: vec![crate::EndedAttempt {
            attempt: 1,
            worker: "w1".into(),
            started_at_ms: 1,
            ended_at_ms: 2,
            error: "e".into(),
            retry_at_ms: None,
        }],
    });
    let err = State::from_records(records).unwrap_err();
    assert!(err.contains("older than version 6"), "{err}");
}

#[test]
fn the_version_5_image_is_what_version_5_wrote() {
    let state = sample_state_v5();
    let bytes = IMAGE_V5;
    // The schedule record, derived by hand.
    let schedule = concat!(
        "07000000",           // Schedule
        "0100000000000000",   // name: 1 byte
        "6e",                 // "n"
        "0900000000000000",   // cron: 9 bytes
        "302033202a202a202a", // "0 3 * * *"
        "0100000000000000",   // task.queue: 1 byte
        "71",                 // "q"
        "0100000000000000",   // task.payload: 1 byte
        "7a",                 // "z"
        "00000000",           // priority 0
        "00",                 // idempotency_key: None
        "00",                 // estimate_ms: None
        "0000000000000000",   // resources: 0 cpu, 0 mem
        "0000000000000000",   // labels: none
        "0000000000000000",   // depends_on: none
        "03000000",           // max_attempts 3
        "00",                 // not_before_ms: None
        "00",                 // timeout_ms: None
        "01000000",           // overlap: Allow
        "2c01000000000000",   // created at 300
        "00",                 // not paused
        "01f401000000000000", // next tick: Some(500)
        "019001000000000000", // last tick: Some(400)
        "010600000000000000", // last task: Some(6)
        "0100000000000000",   // fired 1
        "0000000000000000",   // skipped 0
        "0200000000000000",   // missed 2
    );
    assert!(bytes.ends_with(schedule), "{bytes}");
    assert_eq!(image_bytes(&restore(&state)), image_bytes(&state));
}

/// A version 4 image is read through the frozen version 6 records: the same state.
#[test]
fn a_version_4_image_is_read() {
    let state = State::from_records(decode_image_v6(IMAGE_V4)).unwrap();
    assert!(hex(&image_bytes(&state)).starts_with("0000000007000000"));
    assert_eq!(image_bytes(&state), image_bytes(&sample_state_v4()));
}

#[test]
fn the_version_4_image_is_what_version_4_wrote() {
    let state = sample_state_v4();
    let bytes = IMAGE_V4;
    // The workflow record, derived by hand.
    let workflow = concat!(
        "06000000",         // Workflow
        "0400000000000000", // id: task 4
        "c800000000000000", // submitted at 200
        "0200000000000000", // 2 members
        "0100000000000000", // name: 1 byte
        "61",               // "a"
        "0400000000000000", // task 4
        "0100000000000000", // name: 1 byte
        "62",               // "b"
        "0500000000000000", // task 5
    );
    assert!(bytes.ends_with(workflow), "{bytes}");
    assert_eq!(image_bytes(&restore(&state)), image_bytes(&state));
}

/// The records of an image of version 2 to 6 given in hex, decoded through the frozen version 6
/// records and converted, as a snapshot file of those versions is read.
fn decode_image_v6(hex: &str) -> Vec<ImageRecord> {
    let bytes = unhex(hex);
    let mut cursor = std::io::Cursor::new(&bytes[..]);
    let mut records: Vec<ImageRecord> = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        let r: crate::compat::v6_image::ImageRecordV6 =
            bincode::deserialize_from(&mut cursor).unwrap();
        records.push(r.into());
    }
    records
}

/// The records of an image given in hex, decoded as today's records.
fn try_decode_image(hex: &str) -> bincode::Result<Vec<ImageRecord>> {
    let bytes = unhex(hex);
    let mut cursor = std::io::Cursor::new(&bytes[..]);
    let mut records: Vec<ImageRecord> = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        records.push(bincode::deserialize_from(&mut cursor)?);
    }
    Ok(records)
}

/// A version 3 image is read through the frozen version 6 records: the same state.
#[test]
fn a_version_3_image_is_read() {
    let state = State::from_records(decode_image_v6(&image_v3())).unwrap();
    assert!(hex(&image_bytes(&state)).starts_with("0000000007000000"));
    assert_eq!(image_bytes(&state), image_bytes(&sample_state_v3()));
}

/// A version 2 image is read through the frozen version 6 records: the same state.
#[test]
fn a_version_2_image_is_read() {
    let mut records = decode_image_v6(IMAGE_V2);
    let state = State::from_records(records.clone()).unwrap();
    assert!(hex(&image_bytes(&state)).starts_with("0000000007000000"));
    assert_eq!(image_bytes(&state), image_bytes(&sample_state()));
    // A flow record has no place in a version 2 image.
    records.push(ImageRecord::Flow {
        name: "q".into(),
        limits: crate::FlowLimits {
            weight: 2,
            ..Default::default()
        },
        bucket: None,
    });
    let err = State::from_records(records).unwrap_err();
    assert!(err.contains("version 2"), "{err}");
}
