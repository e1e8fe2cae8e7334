//! The `Authorization: Hawk ...` attributes, parsed and bounded here before any dependency sees
//! them: the `hawk` crate's own parser panics on a `ts` beyond `SystemTime`'s range (issue 13),
//! so every value is checked (names, lengths, characters, `ts` range, base64) and the crate only
//! gets a `Header` built from checked parts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hawk::{Header, mac::Mac};

/// The longest value accepted for any attribute: a tokenlib id is ~300 characters.
pub const MAX_VALUE_LEN: usize = 4096;
/// Seconds since the epoch; far beyond any real clock (year ~36,800) and far inside what
/// `SystemTime` can hold.
pub const MAX_TS: u64 = 1 << 40;
const NAMES: [&str; 8] = ["id", "ts", "nonce", "mac", "hash", "ext", "app", "dlg"];

/// Why a header was refused (logged at debug, never echoed with the value).
pub type Reason = &'static str;

/// Parses `id="…", ts="…", nonce="…", mac="…"[, hash="…"][, ext="…"]` (the part after
/// `Hawk `). Separators are commas and whitespace; values are quoted, printable ASCII without
/// `"` or `\`; each name at most once.
pub fn parse(attrs: &str) -> Result<Header, Reason> {
    let mut values: [Option<&str>; 8] = [None; 8];
    let mut rest = attrs;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            break;
        }
        let (name, after) = rest.split_once('=').ok_or("expected '='")?;
        let slot = NAMES
            .iter()
            .position(|n| *n == name.trim())
            .ok_or("unknown attribute")?;
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or("expected opening quote")?;
        let (value, after) = after.split_once('"').ok_or("expected closing quote")?;
        if value.len() > MAX_VALUE_LEN {
            return Err("attribute too long");
        }
        if !value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
        {
            return Err("invalid character");
        }
        if values[slot].replace(value).is_some() {
            return Err("duplicate attribute");
        }
        // Attributes are separated; `a="1"b="2"` is not a header.
        if !(after.is_empty() || after.starts_with([',', ' ', '\t'])) {
            return Err("expected separator");
        }
        rest = after;
    }
    let [id, ts, nonce, mac, hash, ext, app, dlg] = values;
    let ts = ts.map(parse_ts).transpose()?;
    let mac = mac.map(|m| decode(m).map(Mac::from)).transpose()?;
    let hash = hash.map(decode).transpose()?;
    Header::new(id, ts, nonce, mac, ext, hash, app, dlg).map_err(|_| "invalid attribute")
}

fn parse_ts(text: &str) -> Result<SystemTime, Reason> {
    if text.is_empty() || text.len() > 15 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid ts");
    }
    let secs: u64 = text.parse().map_err(|_| "invalid ts")?;
    if secs > MAX_TS {
        return Err("ts out of range");
    }
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn decode(text: &str) -> Result<Vec<u8>, Reason> {
    // A SHA-256 MAC or hash is 44 base64 characters; allow other digests' sizes.
    if text.len() > 128 {
        return Err("mac or hash too long");
    }
    STANDARD.decode(text).map_err(|_| "invalid base64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_header() {
        let h =
            parse(r#"id="abc", ts="1353832234", nonce="j4h3g2", mac="AAAA", ext="x y""#).unwrap();
        assert_eq!(h.id.as_deref(), Some("abc"));
        assert_eq!(h.ts, Some(UNIX_EPOCH + Duration::from_secs(1_353_832_234)));
        assert_eq!(h.nonce.as_deref(), Some("j4h3g2"));
        assert_eq!(h.ext.as_deref(), Some("x y"));
        // Messy but valid separators, as the crate accepts them.
        assert!(parse(r#", id = "a",ts="1"  nonce="n",  mac="AAAA","#).is_ok());
        assert!(parse("").is_ok());
    }

    #[test]
    fn hostile_headers_are_refused_without_panicking() {
        for bad in [
            r#"id="x", ts="18446744073709551615", nonce="n", mac="AAAA""#,
            r#"id="x", ts="9223372036854775808", nonce="n", mac="AAAA""#,
            r#"id="x", ts="1099511627777", nonce="n", mac="AAAA""#,
            r#"id="x", ts="-1", nonce="n", mac="AAAA""#,
            r#"id="x", ts="", nonce="n", mac="AAAA""#,
            r#"id="x", ts="1 ", nonce="n", mac="AAAA""#,
            r#"id="x", ts="1", nonce="n", mac="!!!!""#,
            r#"id="x", id="y""#,
            r#"id="x"ts="1""#,
            r#"id="x", bogus="1""#,
            r#"id="x"#,
            r#"id=x"#,
            "id",
            "id=\"a\u{e9}\"",
            "id=\"a\tb\"",
            r#"id="a\b""#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let long = format!(r#"id="{}""#, "a".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(parse(&long).unwrap_err(), "attribute too long");
        assert!(parse(&format!(r#"id="{}""#, "a".repeat(MAX_VALUE_LEN))).is_ok());
        assert!(parse(&format!(r#"ts="{MAX_TS}""#)).is_ok());
    }
}
