//! Parsing of the command line's rates, durations and sizes.

use std::time::Duration;

/// A rate such as `10/s`, `600/min` or `1000/h`: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) count: u32,
    pub(crate) period: Duration,
}

pub(crate) fn parse_rate(s: &str) -> Result<Rate, String> {
    let (count, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("rate `{s}` needs a unit: write it as N/s, N/min or N/h"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("rate `{s}`: `{count}` is not a whole number"))?;
    if count == 0 {
        return Err(format!("rate `{s}` must be at least 1 per period"));
    }
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => {
            return Err(format!(
                "rate `{s}`: unknown unit `{other}` (use s, min or h)"
            ));
        }
    };
    Ok(Rate { count, period })
}

/// A duration such as `8s`, `500ms`, `2m` or `1h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{s}` needs a unit: ms, s, m or h (e.g. 8s)"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration `{s}`: `{number}` is not a number"))?;
    let seconds = match unit.trim_start() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "duration `{s}`: unknown unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    // Checked after the conversion too: a value below a nanosecond is zero.
    let duration = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO);
    if !(seconds > 0.0 && seconds < 86_400.0 * 365.0) || duration.is_zero() {
        return Err(format!(
            "duration `{s}` must be more than zero and less than a year"
        ));
    }
    Ok(duration)
}

/// A size such as `10MiB`, `512KiB`, `1MB` or a plain number of bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("size `{s}`: `{number}` is not a whole number"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "size `{s}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let bytes = value
        .checked_mul(scale)
        .ok_or_else(|| format!("size `{s}` is too large"))?;
    if bytes == 0 {
        return Err(format!("size `{s}` must be more than zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("10/s").unwrap(),
            Rate {
                count: 10,
                period: Duration::from_secs(1)
            }
        );
        assert_eq!(
            parse_rate("600/min").unwrap().period,
            Duration::from_secs(60)
        );
        assert_eq!(parse_rate("5/h").unwrap().period, Duration::from_secs(3600));
        assert!(parse_rate("10").unwrap_err().contains("needs a unit"));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("3/day").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8s").unwrap(), Duration::from_secs(8));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        // A space before the unit, as sizes and rates take it.
        assert_eq!(parse_duration("8 s").unwrap(), Duration::from_secs(8));
        assert_eq!(
            parse_duration("250 ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("8759h").unwrap(),
            Duration::from_secs(8759 * 3600)
        );
        // A year (365 days) and more is refused: surely a typo.
        for long in ["8760h", "9000h", "31536000s"] {
            assert!(
                parse_duration(long)
                    .unwrap_err()
                    .contains("less than a year"),
                "{long}"
            );
        }
        assert!(parse_duration("0.0000000001s").is_err());
        assert!(parse_duration("8").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("3kB").unwrap(), 3000);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("7 B").unwrap(), 7);
        assert!(parse_size("0").is_err());
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
