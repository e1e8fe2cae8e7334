//! What a token request claims, checked against the user's current record (SPEC 3.5), and how
//! the record is updated afterwards (SPEC 3.6).

use super::TokenserverError;

/// From the OAuth token and X-KeyID; zero values are already `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub generation: Option<i64>,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
}

/// The current user row and the client states of its older rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    pub generation: i64,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
    pub old_client_states: Vec<String>,
}

/// `a > b` / `a <= b` where an absent side makes the comparison false.
fn gt(a: Option<i64>, b: Option<i64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a > b)
}
fn le(a: Option<i64>, b: Option<i64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a <= b)
}

/// SPEC 3.5, in its order: the first rule that fails decides the error.
pub fn validate(a: &Claims, u: &UserRecord) -> Result<(), TokenserverError> {
    let u_generation = Some(u.generation);
    if gt(a.keys_changed_at, u.keys_changed_at) && gt(a.keys_changed_at, a.generation) {
        return Err(TokenserverError::invalid_keys_changed_at()
            .because("keys_changed_at: newer than generation"));
    }
    if !u.client_state.is_empty() && a.client_state.is_empty() {
        return Err(TokenserverError::unacceptable_client_state("empty string")
            .because("client state: empty"));
    }
    if u.old_client_states.contains(&a.client_state) {
        return Err(TokenserverError::unacceptable_client_state("stale value")
            .because("client state: stale"));
    }
    let changed = a.client_state != u.client_state;
    if changed && le(a.generation, u_generation) {
        return Err(TokenserverError::unacceptable_client_state(
            "new value with no generation change",
        )
        .because("client state: changed without generation"));
    }
    if changed && le(a.keys_changed_at, u.keys_changed_at) {
        return Err(TokenserverError::unacceptable_client_state(
            "new value with no keys_changed_at change",
        )
        .because("client state: changed without keys_changed_at"));
    }
    if gt(u_generation, a.generation) {
        return Err(TokenserverError::invalid_generation());
    }
    if gt(u.keys_changed_at, a.keys_changed_at) {
        return Err(TokenserverError::invalid_keys_changed_at()
            .because("keys_changed_at: older than known"));
    }
    if a.keys_changed_at.is_none() && u.keys_changed_at.is_some_and(|k| k != 0) {
        return Err(TokenserverError::invalid_keys_changed_at().because("keys_changed_at: missing"));
    }
    Ok(())
}

/// The generation and keys_changed_at the record holds after a valid request (SPEC 3.6).
pub fn updated(a: &Claims, u: &UserRecord) -> (i64, Option<i64>) {
    let keys_changed_at = a.keys_changed_at.or(u.keys_changed_at);
    let generation = match (a.generation, a.keys_changed_at) {
        (Some(g), _) => g,
        (None, Some(k)) if u.keys_changed_at.is_none_or(|uk| k > uk) && k > u.generation => k,
        _ => u.generation,
    };
    (generation, keys_changed_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(generation: Option<i64>, kca: Option<i64>, cs: &str) -> Claims {
        Claims {
            generation,
            keys_changed_at: kca,
            client_state: cs.into(),
        }
    }

    fn user(generation: i64, kca: Option<i64>, cs: &str) -> UserRecord {
        UserRecord {
            generation,
            keys_changed_at: kca,
            client_state: cs.into(),
            old_client_states: vec![],
        }
    }

    fn status(r: Result<(), TokenserverError>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.status)
    }

    // SPEC 6.100
    #[test]
    fn keys_changed_at_rules() {
        let u = user(1232, Some(1234), "aaaa");
        assert_eq!(
            status(validate(&claims(Some(1235), Some(1236), "aaaa"), &u)),
            "invalid-keysChangedAt"
        );
        assert_eq!(
            status(validate(&claims(Some(1236), Some(1236), "aaaa"), &u)),
            "ok"
        );
        assert_eq!(
            status(validate(&claims(Some(1233), Some(1236), "aaaa"), &u)),
            "invalid-keysChangedAt"
        );
        assert_eq!(
            status(validate(&claims(Some(1233), Some(1234), "aaaa"), &u)),
            "ok"
        );
        assert_eq!(
            status(validate(&claims(None, Some(1235), "aaaa"), &u)),
            "ok"
        );
        assert_eq!(
            status(validate(&claims(Some(1236), Some(1235), "aaaa"), &u)),
            "ok"
        );
        assert_eq!(
            status(validate(&claims(Some(1236), Some(1233), "aaaa"), &u)),
            "invalid-keysChangedAt"
        );
        assert_eq!(
            status(validate(&claims(Some(1236), None, "aaaa"), &u)),
            "invalid-keysChangedAt"
        );
    }

    // SPEC 6.101-6.103
    #[test]
    fn client_state_rules() {
        let mut u = user(1234, None, "bbbb");
        u.old_client_states = vec!["aaaa".into()];
        let e = validate(&claims(Some(1235), Some(1235), "aaaa"), &u).unwrap_err();
        assert_eq!(e.description, "Unacceptable client-state value stale value");
        assert_eq!(
            status(validate(&claims(Some(1235), Some(1235), "cccc"), &u)),
            "ok"
        );
        let u = user(1234, None, "aaaa");
        let e = validate(&claims(Some(1234), None, "bbbb"), &u).unwrap_err();
        assert_eq!(
            e.description,
            "Unacceptable client-state value new value with no generation change"
        );
        assert_eq!(
            status(validate(&claims(None, Some(1235), "bbbb"), &u)),
            "ok"
        );
        let u = user(0, Some(1234), "aaaa");
        let e = validate(&claims(Some(1235), Some(1234), "bbbb"), &u).unwrap_err();
        assert_eq!(
            e.description,
            "Unacceptable client-state value new value with no keys_changed_at change"
        );
        assert_eq!(
            status(validate(&claims(Some(1235), Some(1235), "bbbb"), &u)),
            "ok"
        );
        let e = validate(&claims(Some(1235), Some(1235), ""), &u).unwrap_err();
        assert_eq!(
            e.description,
            "Unacceptable client-state value empty string"
        );
    }

    // SPEC 6.104
    #[test]
    fn generation_rules() {
        let u = user(1234, None, "aaaa");
        assert_eq!(
            status(validate(&claims(Some(1233), None, "aaaa"), &u)),
            "invalid-generation"
        );
        for g in [None, Some(1234), Some(1235)] {
            assert_eq!(
                status(validate(&claims(g, None, "aaaa"), &u)),
                "ok",
                "{g:?}"
            );
        }
        // SPEC 6.113: a retired user accepts only generation = i64::MAX.
        let retired = user(i64::MAX, None, "aaaa");
        assert_eq!(
            status(validate(&claims(Some(1235), None, "aaaa"), &retired)),
            "invalid-generation"
        );
        assert_eq!(
            status(validate(&claims(Some(i64::MAX), None, "aaaa"), &retired)),
            "ok"
        );
    }

    // SPEC 6.102, 6.105, 6.106
    #[test]
    fn updates() {
        assert_eq!(
            updated(&claims(None, Some(1234), "a"), &user(0, Some(1234), "a")),
            (0, Some(1234))
        );
        assert_eq!(
            updated(&claims(None, Some(1235), "a"), &user(0, Some(1234), "a")),
            (1235, Some(1235))
        );
        assert_eq!(
            updated(&claims(None, Some(1234), "a"), &user(0, None, "a")),
            (1234, Some(1234))
        );
        assert_eq!(
            updated(&claims(None, Some(1235), "b"), &user(1234, None, "a")),
            (1235, Some(1235))
        );
        assert_eq!(
            updated(&claims(Some(7), None, "a"), &user(5, Some(3), "a")),
            (7, Some(3))
        );
        assert_eq!(
            updated(&claims(None, None, "a"), &user(5, Some(0), "a")),
            (5, Some(0))
        );
    }
}
