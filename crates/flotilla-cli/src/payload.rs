//! The payload of a command task: the worker crate's [`CommandPayload`] (argv as JSON).

pub use flotilla_worker::CommandPayload;
