//! Metrics hashes and the token's fxa_kid (SPEC 2.2, 3.3, 3.7).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn hmac_hex(secret: &str, data: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The full 64-hex HMAC of the FxA uid (logged as `uid`).
pub fn metrics_uid(secret: &str, fxa_uid: &str) -> String {
    hmac_hex(secret, fxa_uid)
}

/// First 32 hex characters of HMAC-SHA256(secret, fxa_uid).
pub fn hashed_fxa_uid(secret: &str, fxa_uid: &str) -> String {
    metrics_uid(secret, fxa_uid)[..32].to_owned()
}

/// Device ids no longer exist with OAuth: upstream hashes the fixed "none".
pub fn hashed_device_id(secret: &str, hashed_fxa_uid: &str) -> String {
    hmac_hex(secret, &format!("{hashed_fxa_uid}none"))[..32].to_owned()
}

/// `<13-digit zero-padded keys_changed_at or generation>-<base64url-nopad(client state)>`.
pub fn fxa_kid(keys_changed_at_or_generation: i64, client_state_hex: &str) -> String {
    let bytes = hex::decode(client_state_hex).unwrap_or_default();
    format!(
        "{keys_changed_at_or_generation:013}-{}",
        URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid() {
        assert_eq!(fxa_kid(1234, "aaaa"), "0000000001234-qqo");
        assert_eq!(fxa_kid(2345, "bbbb"), "0000000002345-u7s");
    }

    /// RFC 4231 test case 2 pins the HMAC; the prefixes are its first 32 characters.
    #[test]
    fn hashes() {
        let full = metrics_uid("Jefe", "what do ya want for nothing?");
        assert_eq!(
            full,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hashed_fxa_uid("Jefe", "what do ya want for nothing?"),
            full[..32]
        );
        let h = hashed_fxa_uid("secret", "abc");
        assert_eq!(
            hashed_device_id("secret", &h),
            hmac_hex("secret", &format!("{h}none"))[..32]
        );
        assert_eq!(hashed_device_id("secret", &h).len(), 32);
    }
}
