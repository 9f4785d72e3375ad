//! Dates without a date crate: RFC 2822 timestamps of Release files, civil dates for FAT
//! entries and benchmark records (Howard Hinnant's algorithms, exact over the proleptic
//! Gregorian calendar). Pure: the caller says what time it is.

/// Parses `Sat, 10 Aug 2024 09:36:41 UTC` (the form Release files use; `+0000`, `GMT` and
/// `UTC` zones) into seconds since the epoch.
pub fn parse_rfc2822(s: &str) -> Option<u64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut parts = s.split_whitespace();
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|x| x.parse::<u64>());
    let (h, m, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    match parts.next() {
        None | Some("UTC") | Some("GMT") | Some("+0000") | Some("Z") => {}
        Some(_) => return None,
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86400 + h * 3600 + m * 60 + sec)
}

/// The civil date (year, month, day) of a count of days since 1970-01-01 (the inverse of
/// [`parse_rfc2822`]'s arithmetic), from the boot server's one copy.
pub use netboot::date::civil_from_days;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_parse() {
        assert_eq!(
            parse_rfc2822("Sat, 10 Aug 2024 09:36:41 UTC"),
            Some(1723282601)
        );
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(parse_rfc2822("Tue, 29 Feb 2000 12:00:00 +0100"), None);
    }

    #[test]
    fn days_map_back_to_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19945), (2024, 8, 10));
        assert_eq!(civil_from_days(11016), (2000, 2, 29));
    }
}
