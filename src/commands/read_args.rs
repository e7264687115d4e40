//! Options shared by the commands that read subjects: where to start and stop, how to print.

use dcpipe_connectors::bus::ReplayFrom;
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::ops::tail::ReadUntil;

use crate::settings::parse_duration;

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// A table for people.
    Table,
    /// One JSON object a line, for `jq` and log tools.
    Json,
}

/// Parses where a read starts: `beginning`, a sequence or offset (`42`), a time as RFC 3339
/// (`2026-12-07T08:00:00Z`) or a duration ago (`15m`).
pub(crate) fn parse_from(text: &str) -> Result<ReplayFrom, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("beginning") {
        return Ok(ReplayFrom::Beginning);
    }
    if let Ok(offset) = text.parse::<u64>() {
        return Ok(ReplayFrom::Offset(offset));
    }
    time_ms(text).map(ReplayFrom::TimeMs)
}

/// Parses where a read stops (exclusive): `end`, a sequence or offset, an RFC 3339 time or a
/// duration ago.
pub(crate) fn parse_until(text: &str) -> Result<ReadUntil, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("end") {
        return Ok(ReadUntil::End);
    }
    if let Ok(offset) = text.parse::<u64>() {
        return Ok(ReadUntil::Offset(offset));
    }
    time_ms(text).map(ReadUntil::TimeMs)
}

fn time_ms(text: &str) -> Result<i64, String> {
    if text.contains('T') {
        return parse_rfc3339_ms(text);
    }
    let ago = parse_duration(text).map_err(|_| {
        format!(
            "{text:?}: expected a sequence or offset (42), a time (2026-12-07T08:00:00Z) or a \
             duration ago (15m)"
        )
    })?;
    let ago_ms = i64::try_from(ago.as_millis()).map_err(|_| format!("{text:?}: too long ago"))?;
    Ok(system_now_ms().saturating_sub(ago_ms))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` into ms since the epoch.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?}: expected RFC 3339, e.g. 2026-12-07T08:00:00Z");
    let (date, rest) = text.split_once(['T', 't']).ok_or_else(bad)?;
    let mut date_parts = date.splitn(3, '-');
    let number = |it: &mut std::str::SplitN<'_, char>| -> Result<i64, String> {
        it.next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (
        number(&mut date_parts)?,
        number(&mut date_parts)?,
        number(&mut date_parts)?,
    );
    let (time, offset_ms) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
        (time, 0)
    } else {
        let split = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (time, offset) = rest.split_at(split);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        (time, sign * (h * 3_600_000 + m * 60_000))
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = hms.splitn(3, ':');
    let (h, m, s) = (
        number(&mut clock)?,
        number(&mut clock)?,
        number(&mut clock)?,
    );
    let millis: i64 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        digits.parse().map_err(|_| bad())?
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400_000 + h * 3_600_000 + m * 60_000 + s * 1000 + millis - offset_ms)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_and_round_trip() {
        for ms in [0, 1_728_000_060_123, 951_782_400_000, -1] {
            let text = dcpipe_schemas::rfc3339_of_ms(ms);
            assert_eq!(parse_rfc3339_ms(&text), Ok(ms), "{text}");
        }
        assert_eq!(
            parse_rfc3339_ms("2024-10-04T08:00:00+08:00"),
            Ok(1_728_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-10-04T00:00:00.5Z"),
            Ok(1_728_000_000_500)
        );
        assert!(parse_rfc3339_ms("2024-13-04T00:00:00Z").is_err());
        assert!(parse_rfc3339_ms("yesterday").is_err());
    }

    #[test]
    fn a_start_is_the_beginning_an_offset_or_a_time() {
        assert_eq!(parse_from("beginning"), Ok(ReplayFrom::Beginning));
        assert_eq!(parse_from("42"), Ok(ReplayFrom::Offset(42)));
        assert_eq!(
            parse_from("2024-10-04T00:00:00Z"),
            Ok(ReplayFrom::TimeMs(1_728_000_000_000))
        );
        let before = system_now_ms();
        let Ok(ReplayFrom::TimeMs(ms)) = parse_from("15m") else {
            panic!("a duration ago is a time");
        };
        assert!((before - 15 * 60_000 - 1_000..=system_now_ms() - 15 * 60_000).contains(&ms));
        assert!(parse_from("soon").is_err());
        assert_eq!(parse_until("end"), Ok(ReadUntil::End));
        assert_eq!(parse_until("7"), Ok(ReadUntil::Offset(7)));
    }
}
