//! `X-KeyID` and `X-Client-State` (SPEC 3.2).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::TokenserverError;

/// What X-KeyID says: keys_changed_at (0 means absent) and the client state as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
}

/// The longest client state (16 bytes: the users.client_state column holds 32 hex digits).
pub const MAX_CLIENT_STATE_BYTES: usize = 16;

/// `<keys_changed_at>-<base64url-nopad(client state bytes)>`, split at the first `-`.
pub fn parse_key_id(header: Option<&str>) -> Result<KeyId, TokenserverError> {
    let header =
        header.ok_or_else(|| TokenserverError::invalid_key_id("Missing X-KeyID header"))?;
    if !header.is_ascii() {
        return Err(TokenserverError::invalid_key_id("Invalid X-KeyID header"));
    }
    let (kca, state) = header
        .split_once('-')
        .ok_or_else(|| TokenserverError::invalid_credentials().because("keyid: invalid"))?;
    let kca: i64 = kca
        .parse()
        .map_err(|_| TokenserverError::invalid_credentials().because("keyid: invalid"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(state)
        .map_err(|_| TokenserverError::invalid_credentials().because("keyid: invalid"))?;
    // client_state is at most 32 hex characters in every tokenserver database.
    if bytes.len() > MAX_CLIENT_STATE_BYTES {
        return Err(TokenserverError::invalid_credentials().because("keyid: invalid"));
    }
    Ok(KeyId {
        keys_changed_at: (kca != 0).then_some(kca),
        client_state: hex::encode(bytes),
    })
}

/// The legacy X-Client-State header, when sent, must be well formed and agree with X-KeyID.
pub fn check_client_state_header(
    header: Option<&str>,
    key_id_state: &str,
) -> Result<(), TokenserverError> {
    let Some(value) = header else { return Ok(()) };
    let well_formed = (1..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !well_formed {
        return Err(TokenserverError::bad_client_state_header());
    }
    if value != key_id_state {
        return Err(TokenserverError::client_state_mismatch());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            parse_key_id(Some("1234-qqo")).unwrap(),
            KeyId {
                keys_changed_at: Some(1234),
                client_state: "aaaa".into()
            }
        );
        assert_eq!(parse_key_id(Some("0-qqo")).unwrap().keys_changed_at, None);
        assert_eq!(parse_key_id(Some("5-")).unwrap().client_state, "");
        // Split at the first '-': base64url may itself contain '-'.
        assert_eq!(
            parse_key_id(Some("7-_-8")).unwrap().client_state,
            hex::encode(URL_SAFE_NO_PAD.decode("_-8").unwrap())
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(parse_key_id(None).unwrap_err().status, "invalid-key-id");
        assert_eq!(
            parse_key_id(Some("12é-qqo")).unwrap_err().description,
            "Invalid X-KeyID header"
        );
        // 17 bytes of client state: longer than any tokenserver database stores.
        let too_long = format!("1-{}", URL_SAFE_NO_PAD.encode([0xaa; 17]));
        assert_eq!(
            parse_key_id(Some(&too_long)).unwrap_err().status,
            "invalid-credentials"
        );
        let longest = format!("1-{}", URL_SAFE_NO_PAD.encode([0xaa; 16]));
        assert_eq!(parse_key_id(Some(&longest)).unwrap().client_state.len(), 32);
        for bad in ["1234-state!", "nodash", "abc-qqo", "1234-q"] {
            let e = parse_key_id(Some(bad)).unwrap_err();
            assert_eq!(
                (e.http_status, e.status),
                (401, "invalid-credentials"),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_state_header() {
        assert!(check_client_state_header(None, "aaaa").is_ok());
        assert!(check_client_state_header(Some("aaaa"), "aaaa").is_ok());
        assert_eq!(
            check_client_state_header(Some("state!"), "aaaa")
                .unwrap_err()
                .http_status,
            400
        );
        let e = check_client_state_header(Some("bbbb"), "aaaa").unwrap_err();
        assert_eq!(
            (e.http_status, e.status, e.location),
            (401, "invalid-client-state", "body")
        );
    }
}
