//! Sync timestamps: integer milliseconds, always a multiple of 10, shown as seconds with
//! exactly two decimals (SPEC 1.2). Client values are parsed from their decimal text without
//! floats so that `1700000000.10` never becomes `...099999`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A point in time with 10 ms resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SyncTimestamp(u64);

/// "No ttl" lasts this long after the write (SPEC 1.15).
pub const DEFAULT_TTL_SECONDS: u64 = 2_100_000_000;

impl SyncTimestamp {
    pub const ZERO: SyncTimestamp = SyncTimestamp(0);

    /// Truncates to the 10 ms grid.
    pub fn from_millis(ms: u64) -> Self {
        SyncTimestamp(ms - ms % 10)
    }

    /// From a stored (possibly signed) database value; negatives clamp to zero.
    pub fn from_i64(ms: i64) -> Self {
        Self::from_millis(ms.max(0) as u64)
    }

    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::from_millis(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    pub fn as_seconds(self) -> u64 {
        self.0 / 1000
    }

    /// The next tick on the 10 ms grid.
    pub fn next_tick(self) -> Self {
        SyncTimestamp(self.0 + 10)
    }

    /// Expiry in ms for a write at `self` with an optional ttl in seconds.
    pub fn expiry_after(self, ttl_seconds: Option<u64>) -> i64 {
        let ttl = ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        (self.0 + ttl * 1000) as i64
    }

    /// Parses a client-supplied decimal number of seconds (`newer`, `older`, `X-If-*`).
    /// Accepts `123`, `123.4`, `123.456` (digits beyond ms are dropped); rejects signs,
    /// exponents, empty text and values that overflow.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let text = text.trim();
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, f),
            None => (text, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(TimestampError);
        }
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok(int_part) || !digits_ok(frac_part) {
            return Err(TimestampError);
        }
        let seconds: u64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| TimestampError)?
        };
        let mut ms_frac = 0u64;
        for (i, b) in frac_part.bytes().take(3).enumerate() {
            ms_frac += u64::from(b - b'0') * 10u64.pow(2 - i as u32);
        }
        let ms = seconds
            .checked_mul(1000)
            .and_then(|v| v.checked_add(ms_frac))
            .ok_or(TimestampError)?;
        // Stored values are signed 64-bit; anything larger cannot be a real timestamp.
        if ms > i64::MAX as u64 {
            return Err(TimestampError);
        }
        Ok(Self::from_millis(ms))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampError;

impl fmt::Display for SyncTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 1000, (self.0 % 1000) / 10)
    }
}

/// Serialized as a JSON number that keeps both decimals (`1700000000.10`).
impl Serialize for SyncTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_ten_ms() {
        assert_eq!(SyncTimestamp::from_millis(1234567).as_millis(), 1234560);
        assert_eq!(SyncTimestamp::from_i64(-5), SyncTimestamp::ZERO);
    }

    #[test]
    fn formats_two_decimals() {
        assert_eq!(
            SyncTimestamp::from_millis(1_700_000_000_100).to_string(),
            "1700000000.10"
        );
        assert_eq!(SyncTimestamp::ZERO.to_string(), "0.00");
        assert_eq!(
            SyncTimestamp::from_millis(1_388_635_807_419).to_string(),
            "1388635807.41"
        );
    }

    #[test]
    fn serializes_as_number_with_two_decimals() {
        let v =
            serde_json::to_string(&vec![SyncTimestamp::from_millis(1_700_000_000_100)]).unwrap();
        assert_eq!(v, "[1700000000.10]");
    }

    #[test]
    fn parses_decimal_text_exactly() {
        assert_eq!(
            SyncTimestamp::parse("1700000000.10").unwrap().as_millis(),
            1_700_000_000_100
        );
        assert_eq!(SyncTimestamp::parse("1.239").unwrap().as_millis(), 1230);
        assert_eq!(SyncTimestamp::parse("12").unwrap().as_millis(), 12000);
        assert_eq!(SyncTimestamp::parse("0").unwrap(), SyncTimestamp::ZERO);
        assert_eq!(SyncTimestamp::parse(".5").unwrap().as_millis(), 500);
        assert_eq!(SyncTimestamp::parse("3.").unwrap().as_millis(), 3000);
        assert_eq!(SyncTimestamp::parse("2.22").unwrap().as_millis(), 2220);
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            ".",
            "-3",
            "-0.5",
            "abc",
            "1e5",
            "NaN",
            "1.2.3",
            "+1",
            "99999999999999999999",
        ] {
            assert!(SyncTimestamp::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn expiry() {
        let t = SyncTimestamp::from_millis(1000);
        assert_eq!(t.expiry_after(Some(2)), 3000);
        assert_eq!(t.expiry_after(None), 1000 + 2_100_000_000_000);
    }
}
