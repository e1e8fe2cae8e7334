//! Local verification of FxA OAuth access tokens (SPEC 3.4, native verifier): RS256 JWTs with
//! `typ` at+jwt, checked against the configured or fetched JWKs; `exp` with 60 s leeway; `aud`
//! not checked; the oldsync scope required. A token that is not a JWT, or no usable key, is
//! left to the remote verify endpoint.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::TokenserverError;

pub const SYNC_SCOPE: &str = "https://identity.mozilla.com/apps/oldsync";

/// The RSA public key fields of a JWK (`kty`, `n`, `e`; other members are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub n: String,
    pub e: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// Who the token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub fxa_uid: String,
    /// `fxa-generation`; 0 means absent.
    pub generation: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    Verified(VerifiedToken),
    Rejected(TokenserverError),
    /// Not a JWT, or no key to check it with: ask the remote verifier.
    Undecidable,
}

#[derive(Deserialize)]
struct AccessClaims {
    sub: String,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(rename = "fxa-generation", default)]
    generation: Option<i64>,
}

/// FxA writes scope as a space-separated string; a list is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

/// The scope check: exactly the oldsync scope among the token's scopes.
pub fn has_sync_scope(scopes: &[String]) -> bool {
    scopes
        .iter()
        .flat_map(|s| s.split([' ', ',']))
        .any(|s| s == SYNC_SCOPE)
}

pub fn verify_locally(token: &str, keys: &[Jwk]) -> LocalOutcome {
    let Ok(header) = decode_header(token) else {
        return LocalOutcome::Undecidable;
    };
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok || header.alg != Algorithm::RS256 {
        return LocalOutcome::Rejected(
            TokenserverError::invalid_credentials().because("oauth: bad jwt header"),
        );
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    validation.leeway = 60;
    validation.set_required_spec_claims(&["exp"]);
    let mut usable = false;
    for key in keys.iter().filter(|k| k.kty == "RSA") {
        let Ok(decoding) = DecodingKey::from_rsa_components(&key.n, &key.e) else {
            continue;
        };
        usable = true;
        match decode::<AccessClaims>(token, &decoding, &validation) {
            Ok(data) => {
                let scopes = match data.claims.scope {
                    Some(ScopeClaim::Text(s)) => vec![s],
                    Some(ScopeClaim::List(l)) => l,
                    None => vec![],
                };
                if !has_sync_scope(&scopes) {
                    return LocalOutcome::Rejected(
                        TokenserverError::invalid_credentials().because("oauth: bad scope"),
                    );
                }
                return LocalOutcome::Verified(VerifiedToken {
                    fxa_uid: data.claims.sub,
                    generation: data.claims.generation.filter(|g| *g != 0),
                });
            }
            // The next key may be the one that signed it.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            Err(e) => {
                let reason = match e.kind() {
                    ErrorKind::ExpiredSignature => "oauth: expired",
                    _ => "oauth: invalid jwt",
                };
                return LocalOutcome::Rejected(
                    TokenserverError::invalid_credentials().because(reason),
                );
            }
        }
    }
    if usable {
        LocalOutcome::Rejected(
            TokenserverError::invalid_credentials().because("oauth: bad signature"),
        )
    } else {
        LocalOutcome::Undecidable
    }
}

/// A Security Event Token from FxA's webhook (SPEC 3.9): whose account, and the events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SecurityEvent {
    pub sub: String,
    #[serde(default)]
    pub events: serde_json::Map<String, serde_json::Value>,
}

/// Verifies a webhook token: RS256 with one of `keys`, the expected audience and issuer; `exp`
/// is not required. Every failure is `invalid-credentials`.
pub fn verify_security_event(
    token: &str,
    keys: &[Jwk],
    audience: &str,
    issuer: &str,
) -> Result<SecurityEvent, TokenserverError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["aud", "iss"]);
    for key in keys.iter().filter(|k| k.kty == "RSA") {
        let Ok(decoding) = DecodingKey::from_rsa_components(&key.n, &key.e) else {
            continue;
        };
        if let Ok(data) = decode::<SecurityEvent>(token, &decoding, &validation) {
            return Ok(data.claims);
        }
    }
    Err(TokenserverError::invalid_credentials().because("webhook: bad token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use serde_json::json;

    /// A key pair generated here, as FxA's would be: its signing key and public JWK.
    fn keypair() -> (EncodingKey, Jwk) {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        let jwk = Jwk {
            kty: "RSA".into(),
            n: URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
            kid: Some("test".into()),
        };
        (EncodingKey::from_rsa_der(der.as_bytes()), jwk)
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(key: &EncodingKey, typ: &str, claims: serde_json::Value) -> String {
        let header = Header {
            typ: Some(typ.into()),
            ..Header::new(Algorithm::RS256)
        };
        encode(&header, &claims, key).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "f".repeat(32), "scope": format!("profile {SYNC_SCOPE}"), "fxa-generation": 1234, "exp": now() + 300})
    }

    #[test]
    fn verifies_and_rejects() {
        let (key, jwk) = keypair();
        let (other_key, other_jwk) = keypair();
        let ok = token(&key, "at+jwt", good_claims());
        let expected = VerifiedToken {
            fxa_uid: "f".repeat(32),
            generation: Some(1234),
        };
        assert_eq!(
            verify_locally(&ok, std::slice::from_ref(&jwk)),
            LocalOutcome::Verified(expected.clone())
        );
        // The secondary key signed it: the primary's mismatch moves on to it.
        assert_eq!(
            verify_locally(&ok, &[other_jwk.clone(), jwk.clone()]),
            LocalOutcome::Verified(expected)
        );
        let rejected = |t: &str, keys: &[Jwk]| matches!(verify_locally(t, keys), LocalOutcome::Rejected(e) if e.status == "invalid-credentials");
        assert!(rejected(&ok, std::slice::from_ref(&other_jwk)), "wrong key");
        assert!(rejected(
            &token(&other_key, "at+jwt", good_claims()),
            std::slice::from_ref(&jwk)
        ));
        assert!(
            rejected(
                &token(&key, "JWT", good_claims()),
                std::slice::from_ref(&jwk)
            ),
            "typ"
        );
        let mut expired = good_claims();
        expired["exp"] = json!(now() - 120);
        assert!(
            rejected(&token(&key, "at+jwt", expired), std::slice::from_ref(&jwk)),
            "expired"
        );
        let mut within_leeway = good_claims();
        within_leeway["exp"] = json!(now() - 30);
        assert!(matches!(
            verify_locally(
                &token(&key, "application/AT+JWT", within_leeway),
                std::slice::from_ref(&jwk)
            ),
            LocalOutcome::Verified(_)
        ));
        let mut no_scope = good_claims();
        no_scope["scope"] = json!("profile");
        assert!(
            rejected(&token(&key, "at+jwt", no_scope), std::slice::from_ref(&jwk)),
            "scope"
        );
        let mut prefix_scope = good_claims();
        prefix_scope["scope"] = json!(format!("{SYNC_SCOPE}:extra"));
        assert!(
            rejected(
                &token(&key, "at+jwt", prefix_scope),
                std::slice::from_ref(&jwk)
            ),
            "scope must match exactly"
        );
    }

    #[test]
    fn undecidable_goes_to_the_remote_verifier() {
        let (key, _) = keypair();
        assert_eq!(
            verify_locally("an-opaque-token", &[]),
            LocalOutcome::Undecidable
        );
        assert_eq!(
            verify_locally(&token(&key, "at+jwt", good_claims()), &[]),
            LocalOutcome::Undecidable
        );
    }

    #[test]
    fn zero_generation_is_absent() {
        let (key, jwk) = keypair();
        let mut claims = good_claims();
        claims["fxa-generation"] = json!(0);
        let LocalOutcome::Verified(v) = verify_locally(&token(&key, "at+jwt", claims), &[jwk])
        else {
            panic!()
        };
        assert_eq!(v.generation, None);
    }
}
