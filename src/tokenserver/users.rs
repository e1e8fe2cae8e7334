//! The get-or-create decision of SPEC 3.6 over a user's rows, as a pure function: which row is
//! current, which other rows need the race repair, and whether a new row must be allocated.

use super::TokenserverError;

/// Generation of a retired (deleted) account.
pub const RETIRED: i64 = i64::MAX;
/// How many of a user's most recent rows are looked at.
pub const MAX_ROWS: i64 = 20;

/// One row of `users`, with its node's URL (`None` when the node row is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub uid: i64,
    pub generation: i64,
    pub client_state: String,
    pub created_at: i64,
    pub replaced_at: Option<i64>,
    pub nodeid: i64,
    pub keys_changed_at: Option<i64>,
    pub node: Option<String>,
}

/// The values a newly allocated row starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    pub generation: i64,
    pub client_state: String,
    pub keys_changed_at: Option<i64>,
}

/// What get-or-create has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The current row stands.
    Use(UserRow),
    /// A new row on a freshly chosen node.
    Allocate(NewRow),
}

/// The decision, plus what holds whichever way it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub plan: Plan,
    /// Client states of the other rows that differ from the current one.
    pub old_client_states: Vec<String>,
    /// Other rows still unreplaced, to be marked replaced at `repair_at` (race repair).
    pub repair: Vec<i64>,
    pub repair_at: i64,
    /// created_at of the oldest row seen (logging).
    pub first_seen_at: Option<i64>,
}

/// Decides from `rows` (any order). `request` is what a brand-new user starts with.
pub fn decide(
    mut rows: Vec<UserRow>,
    request: NewRow,
    allow_new_users: bool,
) -> Result<Decision, TokenserverError> {
    // Current = greatest (generation, created_at); equal pairs keep the newer uid first.
    rows.sort_by(|a, b| {
        (b.generation, b.created_at, b.uid).cmp(&(a.generation, a.created_at, a.uid))
    });
    let first_seen_at = rows.iter().map(|r| r.created_at).min();
    let Some(current) = rows.first().cloned() else {
        if !allow_new_users {
            return Err(TokenserverError::new_users_disabled());
        }
        return Ok(Decision {
            plan: Plan::Allocate(request),
            old_client_states: vec![],
            repair: vec![],
            repair_at: 0,
            first_seen_at,
        });
    };
    let mut old_client_states = Vec::new();
    for row in &rows[1..] {
        if row.client_state != current.client_state
            && !old_client_states.contains(&row.client_state)
        {
            old_client_states.push(row.client_state.clone());
        }
    }
    let repair = rows[1..]
        .iter()
        .filter(|r| r.replaced_at.is_none())
        .map(|r| r.uid)
        .collect();
    let needs_new_row = current.replaced_at.is_some() || current.node.is_none();
    let plan = if !needs_new_row {
        Plan::Use(current.clone())
    } else if current.generation < RETIRED {
        Plan::Allocate(NewRow {
            generation: current.generation,
            client_state: current.client_state.clone(),
            keys_changed_at: current.keys_changed_at,
        })
    } else if current.node.is_some() {
        // A retired user keeps its (replaced) row; it can only present generation = max.
        Plan::Use(current.clone())
    } else {
        return Err(TokenserverError::internal_error(500));
    };
    Ok(Decision {
        plan,
        old_client_states,
        repair,
        repair_at: current.created_at,
        first_seen_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uid: i64, generation: i64, created_at: i64, cs: &str) -> UserRow {
        UserRow {
            uid,
            generation,
            client_state: cs.into(),
            created_at,
            replaced_at: None,
            nodeid: 1,
            keys_changed_at: None,
            node: Some("https://node".into()),
        }
    }

    fn request() -> NewRow {
        NewRow {
            generation: 7,
            client_state: "aa".into(),
            keys_changed_at: Some(7),
        }
    }

    #[test]
    fn current_is_greatest_generation_then_created_at() {
        // SPEC 6.110
        let rows = vec![
            row(1, 1234, 1234, "a"),
            row(2, 1235, 1234, "b"),
            row(3, 1234, 1235, "c"),
            row(4, 1236, 1233, "d"),
        ];
        let d = decide(rows, request(), true).unwrap();
        assert_eq!(d.plan, Plan::Use(row(4, 1236, 1233, "d")));
        assert_eq!(d.repair, vec![2, 3, 1]);
        assert_eq!(d.repair_at, 1233);
        assert_eq!(d.old_client_states, vec!["b", "c", "a"]);
        assert_eq!(d.first_seen_at, Some(1233));
    }

    #[test]
    fn new_users() {
        let d = decide(vec![], request(), true).unwrap();
        assert_eq!(d.plan, Plan::Allocate(request()));
        let e = decide(vec![], request(), false).unwrap_err();
        assert_eq!((e.http_status, e.status), (403, "new-users-disabled"));
    }

    #[test]
    fn replaced_or_nodeless_rows_are_reallocated_with_their_own_values() {
        let mut replaced = row(1, 5, 10, "bb");
        replaced.replaced_at = Some(20);
        replaced.keys_changed_at = Some(4);
        let expected = Plan::Allocate(NewRow {
            generation: 5,
            client_state: "bb".into(),
            keys_changed_at: Some(4),
        });
        assert_eq!(
            decide(vec![replaced], request(), false).unwrap().plan,
            expected
        );
        let mut nodeless = row(1, 5, 10, "bb");
        nodeless.node = None;
        nodeless.keys_changed_at = Some(4);
        assert_eq!(
            decide(vec![nodeless], request(), true).unwrap().plan,
            expected
        );
    }

    #[test]
    fn retired_users() {
        // SPEC 6.114: retired without a node is a server error.
        let mut retired = row(1, RETIRED, 10, "bb");
        retired.replaced_at = Some(11);
        retired.node = None;
        let e = decide(vec![retired.clone()], request(), true).unwrap_err();
        assert_eq!(e.http_status, 500);
        retired.node = Some("https://node".into());
        assert_eq!(
            decide(vec![retired.clone()], request(), true).unwrap().plan,
            Plan::Use(retired)
        );
    }
}
