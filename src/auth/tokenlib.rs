//! tokenlib v1 tokens and derived secrets (SPEC 2.1-2.3), byte-compatible with Mozilla's
//! tokenserver and storage nodes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const SIGNING_INFO: &[u8] = b"services.mozilla.com/tokenlib/v1/signing";
const DERIVE_INFO: &str = "services.mozilla.com/tokenlib/v1/derive/";
const SIGNATURE_LEN: usize = 32;

/// The JSON inside a token. Required: uid, node, expires, salt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenPayload {
    pub uid: u64,
    pub node: String,
    pub expires: f64,
    pub salt: String,
    #[serde(default)]
    pub fxa_uid: String,
    #[serde(default)]
    pub fxa_kid: String,
    #[serde(default)]
    pub hashed_fxa_uid: String,
    #[serde(default)]
    pub hashed_device_id: String,
    #[serde(default)]
    pub tokenserver_origin: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Decode,
    TooShort,
    Signature,
    Json,
}

fn hkdf32(secret: &[u8], salt: Option<&[u8]>, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(salt, secret)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// Keys derived once from the master secret.
#[derive(Clone)]
pub struct Secrets {
    master: Vec<u8>,
    signing_key: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    pub fn new(master_secret: &str) -> Self {
        let master = master_secret.as_bytes().to_vec();
        let signing_key = hkdf32(&master, None, SIGNING_INFO);
        Secrets {
            master,
            signing_key,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.signing_key).expect("HMAC takes any key length")
    }

    /// Signs `payload` into a token string.
    pub fn make_token(&self, payload: &TokenPayload) -> String {
        let mut bytes = serde_json::to_vec(payload).expect("token payload serializes");
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE.encode(bytes)
    }

    /// Checks the signature (constant time) and parses the payload.
    pub fn parse_token(&self, token: &str) -> Result<TokenPayload, TokenError> {
        let bytes = URL_SAFE.decode(token).map_err(|_| TokenError::Decode)?;
        if bytes.len() <= SIGNATURE_LEN {
            return Err(TokenError::TooShort);
        }
        let (payload, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(signature)
            .map_err(|_| TokenError::Signature)?;
        serde_json::from_slice(payload).map_err(|_| TokenError::Json)
    }

    /// The Hawk key string for a token: base64url (padded) of HKDF(master, salt, derive+token).
    pub fn derived_secret(&self, token: &str, salt: &str) -> String {
        let info = format!("{DERIVE_INFO}{token}");
        URL_SAFE.encode(hkdf32(&self.master, Some(salt.as_bytes()), info.as_bytes()))
    }

    /// Hawk credentials (token id, key) for `uid` on `node` until `expires` (Unix seconds), as
    /// a tokenserver sharing this master secret issues them (`syncserver token`, the bench).
    pub fn credentials(&self, uid: u64, node: &str, expires: u64) -> (String, String) {
        let payload = TokenPayload {
            uid,
            node: node.to_owned(),
            expires: expires as f64,
            salt: new_salt(),
            // Spanner keys users by these: a stable identity per uid, as a tokenserver gives.
            fxa_uid: format!("{uid:032x}"),
            fxa_kid: "0000000000000-".into(),
            hashed_fxa_uid: String::new(),
            hashed_device_id: String::new(),
            tokenserver_origin: Some("rust".into()),
        };
        let id = self.make_token(&payload);
        let key = self.derived_secret(&id, &payload.salt);
        (id, key)
    }
}

/// 3 random bytes as 6 lowercase hex characters.
pub fn new_salt() -> String {
    let mut b = [0u8; 3];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> TokenPayload {
        TokenPayload {
            uid: 42,
            node: "http://localhost:8000".into(),
            expires: 2_000_000_000.0,
            salt: "abc123".into(),
            fxa_uid: "f".repeat(32),
            fxa_kid: "0000000001234-qqo".into(),
            hashed_fxa_uid: String::new(),
            hashed_device_id: String::new(),
            tokenserver_origin: Some("rust".into()),
        }
    }

    #[test]
    fn round_trip() {
        let s = Secrets::new("secret");
        let token = s.make_token(&payload());
        assert_eq!(s.parse_token(&token).unwrap(), payload());
        assert!(token.ends_with('=') || token.len().is_multiple_of(4));
    }

    #[test]
    fn rejects_tampering_and_wrong_secret() {
        let s = Secrets::new("secret");
        let token = s.make_token(&payload());
        assert_eq!(
            Secrets::new("other").parse_token(&token).unwrap_err(),
            TokenError::Signature
        );
        let mut bytes = URL_SAFE.decode(&token).unwrap();
        bytes[3] ^= 1;
        assert_eq!(
            s.parse_token(&URL_SAFE.encode(bytes)).unwrap_err(),
            TokenError::Signature
        );
        assert_eq!(s.parse_token("!!!").unwrap_err(), TokenError::Decode);
        assert_eq!(
            s.parse_token(&URL_SAFE.encode([0u8; 32])).unwrap_err(),
            TokenError::TooShort
        );
        // Unpadded base64 is not the canonical form.
        assert_eq!(
            s.parse_token(token.trim_end_matches('=')).unwrap_err(),
            TokenError::Decode
        );
    }

    #[test]
    fn missing_required_fields() {
        let s = Secrets::new("secret");
        let body = br#"{"uid": 1, "node": "x", "expires": 5}"#.to_vec();
        let mut mac = s.mac();
        mac.update(&body);
        let mut bytes = body.clone();
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(
            s.parse_token(&URL_SAFE.encode(bytes)).unwrap_err(),
            TokenError::Json
        );
    }

    /// Cross-checked against Python tokenlib: HKDF-SHA256 with no salt for the signing key,
    /// the salt's ASCII text for the derived secret, and 44-character padded base64url keys.
    #[test]
    fn derived_secret_shape() {
        let s = Secrets::new("secret");
        let key = s.derived_secret("token", "abc123");
        assert_eq!(key.len(), 44);
        assert!(key.ends_with('='));
        assert_ne!(key, s.derived_secret("token", "abc124"));
        assert_ne!(key, s.derived_secret("token2", "abc123"));
        assert_eq!(new_salt().len(), 6);
    }

    /// A token minted by Python tokenlib 2.0 (`make_token(..., secret="test-secret")`) and
    /// the derived secret it computed: wire compatibility with Mozilla's implementation.
    #[test]
    fn python_tokenlib_known_answer() {
        let token = "eyJ1aWQiOiA0MiwgIm5vZGUiOiAiaHR0cDovL2xvY2FsaG9zdDo4MDAwIiwgImV4cGlyZXMiOiAyMDAwMDAwMDAwLCAiZnhhX3VpZCI6ICJhYmMiLCAiZnhhX2tpZCI6ICIwMDAwMDAwMDAxMjM0LXFxbyIsICJoYXNoZWRfZnhhX3VpZCI6ICJoIiwgImhhc2hlZF9kZXZpY2VfaWQiOiAiZCIsICJzYWx0IjogIjNjMTgwMCJ9FEg7a2sRydrVtM_3nvheYzfd2Y9CGRflzvh2jG-Lmr8=";
        let s = Secrets::new("test-secret");
        let p = s.parse_token(token).unwrap();
        assert_eq!(
            (p.uid, p.node.as_str(), p.expires, p.salt.as_str()),
            (42, "http://localhost:8000", 2e9, "3c1800")
        );
        assert_eq!(
            (p.fxa_uid.as_str(), p.fxa_kid.as_str()),
            ("abc", "0000000001234-qqo")
        );
        assert_eq!(
            s.derived_secret(token, &p.salt),
            "rFuHoYdmKlZOXVv9sol05FYBVIj_9gn8mE2kdcw8jNA="
        );
        assert_eq!(
            Secrets::new("other").parse_token(token).unwrap_err(),
            TokenError::Signature
        );
    }

    /// RFC 5869 test case 3 (no salt, no info) pins the HKDF construction.
    #[test]
    fn hkdf_matches_rfc5869() {
        let ikm = [0x0bu8; 22];
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(&[], &mut okm)
            .unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }
}
