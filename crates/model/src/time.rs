//! The API's date format: `yyyy-mm-dd hh:mm:ss +00:00`.

use chrono::{DateTime, Utc};

use crate::{Error, Result};

const API_DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S %:z";

/// Parses an API date string into a UTC instant. Offsets other than `+00:00`
/// are honoured and converted.
pub fn parse_api_datetime(field: &'static str, value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_str(value, API_DATE_FORMAT)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| Error::Date {
            field,
            value: value.chars().take(64).collect(),
        })
}

/// Formats a UTC instant the way the API does.
pub fn format_api_datetime(value: DateTime<Utc>) -> String {
    value.format("%Y-%m-%d %H:%M:%S +00:00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_and_formats_api_dates() {
        let d = parse_api_datetime("first_seen", "2021-03-04 05:06:07 +00:00").unwrap();
        assert_eq!(d, Utc.with_ymd_and_hms(2021, 3, 4, 5, 6, 7).unwrap());
        assert_eq!(format_api_datetime(d), "2021-03-04 05:06:07 +00:00");
        let shifted = parse_api_datetime("first_seen", "2021-03-04 07:06:07 +02:00").unwrap();
        assert_eq!(shifted, d);
    }

    #[test]
    fn names_the_field_on_bad_dates() {
        let err = parse_api_datetime("lost_date", "yesterday").unwrap_err();
        assert!(err.to_string().contains("lost_date"), "{err}");
    }
}
