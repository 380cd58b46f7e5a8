//! Lengths of time given by people (`72h`, `30m`, `7d`, `1h30m`, or ISO 8601 `PT72H`), parsed
//! with jiff's friendly duration format, never by hand. A day is 24 hours here: lifetimes are
//! spans of elapsed time, not calendar dates.

use std::time::Duration;

use super::InvalidInput;

/// Parses a non-negative length of time of at most `max`.
///
/// # Errors
/// `InvalidInput` naming `field` (never echoing the text) if it is not a duration in units up
/// to weeks, is negative, or is longer than `max`.
pub fn parse_duration(text: &str, field: &str, max: Duration) -> Result<Duration, InvalidInput> {
    let bad = || {
        InvalidInput::new(
            field,
            "must be a length of time such as 72h, 30m, 7d or 1h30m (units up to weeks)",
        )
    };
    let span: jiff::Span = text.trim().parse().map_err(|_| bad())?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    let duration =
        Duration::try_from(signed).map_err(|_| InvalidInput::new(field, "must not be negative"))?;
    if duration > max {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {}", friendly(max)),
        ));
    }
    Ok(duration)
}

/// A length of time for people, in jiff's friendly format (`168h`, `1h 30m`).
pub fn friendly(d: Duration) -> String {
    jiff::SignedDuration::try_from(d)
        .map_or_else(|_| format!("{} s", d.as_secs()), |d| format!("{d:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn friendly_durations_parse_and_bad_ones_are_refused_without_echo() {
        let ok = |s: &str| parse_duration(s, "expires_in", WEEK).map(|d| d.as_secs());
        assert_eq!(ok("72h"), Ok(72 * 3600));
        assert_eq!(ok("30m"), Ok(1800));
        assert_eq!(ok("7d"), Ok(7 * 24 * 3600));
        assert_eq!(ok("1h30m"), Ok(5400));
        assert_eq!(ok("PT2H"), Ok(7200));
        assert_eq!(ok("0s"), Ok(0));
        for bad in ["", "73", "soon", "1y", "2mo", "-1h", "8d", "123-45-6789"] {
            let e = parse_duration(bad, "expires_in", WEEK)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.field, "expires_in");
            if !bad.is_empty() {
                assert!(!e.problem.contains(bad), "{bad:?} echoed: {}", e.problem);
            }
        }
        assert!(
            parse_duration("8d", "expires_in", WEEK)
                .err()
                .is_some_and(|e| e.problem.contains("168h"))
        );
    }
}
