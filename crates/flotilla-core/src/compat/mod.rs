//! Earlier shapes of what the replicated log and snapshots hold, frozen, with conversions to
//! the current types. A replica of a later release decodes entries and snapshots written by
//! an earlier one through these (see `flotilla-store`'s `codec` for which format version uses
//! which shapes). Never change a frozen type: add a new module for a new version.
//!
//! - [`v1`]: format 1's commands and snapshot image.
//! - [`v6`]: format 6's log entry app data (proposals and commands).
//! - [`v6_image`]: format 6's snapshot image records that format 7 changed.

pub mod v1;
pub mod v6;
pub mod v6_image;
