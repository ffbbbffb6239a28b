//! The leader's calendar: cron expressions read by `croner`, in UTC.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) as in a crontab, or six with
//! seconds first; names (`MON`, `JAN`), ranges, steps, lists, `L`, `#` and `W` as croner reads
//! them; day-of-month and day-of-week combine as in Vixie cron (either matches). The core only
//! sees the ticks this computes, stamped into commands by the leader.

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use flotilla_core::Calendar;

/// Reads `expr`, or says what is wrong with it.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))
}

/// `ms` down to its whole second: croner keeps a time's fraction in the ticks it finds, and
/// ticks fall on whole seconds.
fn at(ms: u64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(i64::try_from(ms / 1000).ok()?, 0)
        .single()
}

fn ms(t: DateTime<Utc>) -> Option<u64> {
    u64::try_from(t.timestamp_millis()).ok()
}

/// Cron expressions in UTC (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct CronCalendar;

impl Calendar for CronCalendar {
    fn next_after(&self, cron: &str, after_ms: u64) -> Option<u64> {
        let c = parse_cron(cron).ok()?;
        let t = c.find_next_occurrence(&at(after_ms)?, false).ok()?;
        ms(t).filter(|t| *t > after_ms)
    }

    fn latest_at_or_before(&self, cron: &str, at_ms: u64) -> Option<u64> {
        let c = parse_cron(cron).ok()?;
        let t = c.find_previous_occurrence(&at(at_ms)?, true).ok()?;
        ms(t).filter(|t| *t <= at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28T10:07:30.250Z
    const T: u64 = 1_795_860_450_250;

    fn utc(s: &str) -> u64 {
        ms(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)).unwrap()
    }

    #[test]
    fn ticks_are_computed_in_utc_from_five_or_six_fields() {
        assert_eq!(T, utc("2026-11-28T10:07:30.250Z"));
        let c = CronCalendar;
        let next = |e: &str, t| c.next_after(e, t);
        assert_eq!(next("*/5 * * * *", T), Some(utc("2026-11-28T10:10:00Z")));
        assert_eq!(next("0 3 * * *", T), Some(utc("2026-11-29T03:00:00Z")));
        assert_eq!(next("*/10 * * * * *", T), Some(utc("2026-11-28T10:07:40Z")));
        assert_eq!(next("0 0 1 JAN *", T), Some(utc("2027-01-01T00:00:00Z")));
        // Strictly after: from a tick, the next one.
        let tick = utc("2026-11-28T10:10:00Z");
        assert_eq!(next("*/5 * * * *", tick), Some(utc("2026-11-28T10:15:00Z")));
        // The latest at or before: a tick itself counts.
        let latest = |e: &str, t| c.latest_at_or_before(e, t);
        assert_eq!(latest("*/5 * * * *", T), Some(utc("2026-11-28T10:05:00Z")));
        assert_eq!(latest("*/5 * * * *", tick), Some(tick));
        assert_eq!(
            latest("*/10 * * * * *", T),
            Some(utc("2026-11-28T10:07:30Z"))
        );
    }

    #[test]
    fn the_catch_up_rule_on_the_real_calendar() {
        // Every minute; the due tick was 10:01 and the leader looks at 10:07:30.25.
        let due = utc("2026-11-28T10:01:00Z");
        let (tick, next, missed) =
            flotilla_core::schedule::due_tick(&CronCalendar, "* * * * *", due, T);
        assert_eq!(tick, utc("2026-11-28T10:07:00Z"));
        assert_eq!(next, Some(utc("2026-11-28T10:08:00Z")));
        assert_eq!(missed, 6, "10:01 to 10:06");
    }

    #[test]
    fn bad_expressions_are_refused_saying_which() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * * * *",
            "nonsense",
            "*/0 * * * *",
        ] {
            let err = parse_cron(bad).unwrap_err();
            assert!(err.contains("is not a cron expression"), "{bad:?}: {err}");
        }
        assert_eq!(CronCalendar.next_after("nonsense", T), None);
    }
}
