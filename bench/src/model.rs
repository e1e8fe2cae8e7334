//! What the server acknowledged, per user and collection, and the checks of what it reads back
//! against it.
//!
//! A client owns a user while it runs a session for it (see `workload.rs`), so nothing else
//! writes that user's data meanwhile: every read must show exactly the acknowledged state. A
//! write whose outcome is unknown (a 5xx or a transport error: the server may have committed it,
//! or may still commit it later, since a unit of work outlives an abandoned request) marks what
//! it touched as uncertain. Checks skip uncertain records (and the touched collections'
//! timestamps) until a session re-reads them once the write has had time to settle, and adopts
//! what the server holds for them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Milliseconds since the epoch, on the server's 10 ms grid.
pub type Ms = i64;

/// A payload's fingerprint (SipHash with fixed keys: stable within one process).
pub fn payload_hash(payload: &str) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// A Sync timestamp (seconds with two decimals) as integer ms.
pub fn seconds_to_ms(seconds: f64) -> Ms {
    // Round to the 10 ms grid: the decimal text is exact, its f64 nearly so.
    ((seconds * 100.0).round() as i64) * 10
}

/// Parses `X-Last-Modified` and friends.
pub fn parse_ts(text: &str) -> Option<Ms> {
    text.trim().parse::<f64>().ok().map(seconds_to_ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub hash: u64,
    pub modified: Ms,
}

/// Which records of a collection a failed write may or may not have changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Dirty {
    #[default]
    Clean,
    Ids(HashSet<String>),
    All,
}

impl Dirty {
    fn covers(&self, id: &str) -> bool {
        match self {
            Dirty::Clean => false,
            Dirty::Ids(ids) => ids.contains(id),
            Dirty::All => true,
        }
    }
    fn is_clean(&self) -> bool {
        matches!(self, Dirty::Clean)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Coll {
    pub records: HashMap<String, Rec>,
    /// The collection's last-modified time as acknowledged.
    pub modified: Ms,
}

static CLEAN: Dirty = Dirty::Clean;
static ALL: Dirty = Dirty::All;

/// One record as read back.
#[derive(Debug, Clone, Deserialize)]
pub struct WireBso {
    pub id: String,
    pub modified: f64,
    #[serde(default)]
    pub payload: String,
}

/// A read that does not match what was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: &'static str,
    pub detail: String,
}

fn problem(kind: &'static str, detail: String) -> Problem {
    Problem { kind, detail }
}

/// One user's acknowledged storage.
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub collections: BTreeMap<String, Coll>,
    /// What writes of unknown outcome may have changed, by collection. Kept apart from the
    /// records: acknowledged writes and deletes after such a write do not make it certain.
    pub dirty: BTreeMap<String, Dirty>,
    /// A DELETE of the whole storage whose outcome is unknown.
    pub storage_dirty: bool,
    /// When the last write of unknown outcome was given up.
    pub last_uncertain: Option<Instant>,
}

impl Account {
    /// Something is uncertain.
    pub fn is_uncertain(&self) -> bool {
        self.storage_dirty || !self.dirty.is_empty()
    }

    /// Something is uncertain and the last write of unknown outcome was given up at least
    /// `settle` ago: time to re-read and adopt.
    pub fn needs_resync(&self, now: Instant, settle: Duration) -> bool {
        self.is_uncertain()
            && self
                .last_uncertain
                .is_none_or(|t| now.saturating_duration_since(t) >= settle)
    }

    /// How long until `needs_resync` (zero when it already does, or when nothing is uncertain).
    pub fn settles_in(&self, now: Instant, settle: Duration) -> Duration {
        match self.last_uncertain {
            Some(t) if self.is_uncertain() => {
                settle.saturating_sub(now.saturating_duration_since(t))
            }
            _ => Duration::ZERO,
        }
    }

    fn dirty_of(&self, coll: &str) -> &Dirty {
        if self.storage_dirty {
            return &ALL;
        }
        self.dirty.get(coll).unwrap_or(&CLEAN)
    }

    /// No write of unknown outcome touched `coll` since its last resync.
    pub fn is_clean(&self, coll: &str) -> bool {
        self.dirty_of(coll).is_clean()
    }

    pub fn has_record(&self, coll: &str, id: &str) -> bool {
        self.collections
            .get(coll)
            .is_some_and(|c| c.records.contains_key(id))
    }

    /// Records `ids` (with their payload hashes) acknowledged at `modified`.
    pub fn ack_write<'a>(
        &mut self,
        coll: &str,
        records: impl IntoIterator<Item = (&'a str, u64)>,
        modified: Ms,
    ) {
        let c = self.collections.entry(coll.to_owned()).or_default();
        for (id, hash) in records {
            c.records.insert(id.to_owned(), Rec { hash, modified });
        }
        c.modified = modified;
    }

    pub fn ack_delete_record(&mut self, coll: &str, id: &str, modified: Ms) {
        let c = self.collections.entry(coll.to_owned()).or_default();
        c.records.remove(id);
        c.modified = modified;
    }

    pub fn ack_delete_collection(&mut self, coll: &str) {
        self.collections.remove(coll);
    }

    pub fn ack_delete_storage(&mut self) {
        self.collections.clear();
    }

    /// A write to `ids` of `coll` may or may not have happened (or may happen later).
    pub fn uncertain<'a>(&mut self, coll: &str, ids: impl IntoIterator<Item = &'a str>) {
        self.last_uncertain = Some(Instant::now());
        match self.dirty.entry(coll.to_owned()).or_default() {
            Dirty::All => {}
            Dirty::Ids(set) => set.extend(ids.into_iter().map(str::to_owned)),
            d @ Dirty::Clean => *d = Dirty::Ids(ids.into_iter().map(str::to_owned).collect()),
        }
    }

    pub fn uncertain_collection(&mut self, coll: &str) {
        self.last_uncertain = Some(Instant::now());
        self.dirty.insert(coll.to_owned(), Dirty::All);
    }

    pub fn uncertain_storage(&mut self) {
        self.last_uncertain = Some(Instant::now());
        self.storage_dirty = true;
    }

    /// The collections a resync must read: the uncertain ones, or all there may be.
    pub fn resync_names(&self, listed: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut names: Vec<String> = self.dirty.keys().cloned().collect();
        if self.storage_dirty {
            names.extend(listed);
            names.extend(self.collections.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    /// `GET info/collections` against the acknowledged collection timestamps.
    pub fn check_info_collections(&self, got: &HashMap<String, f64>) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.storage_dirty {
            return out;
        }
        for (name, c) in &self.collections {
            if !self.is_clean(name) {
                continue;
            }
            match got.get(name).map(|s| seconds_to_ms(*s)) {
                None => out.push(problem(
                    "collection missing from info/collections",
                    format!("{name} acknowledged at {}", c.modified),
                )),
                Some(t) if t != c.modified => out.push(problem(
                    "wrong collection timestamp",
                    format!("{name}: info/collections {t}, acknowledged {}", c.modified),
                )),
                Some(_) => {}
            }
        }
        for name in got.keys() {
            if !self.collections.contains_key(name) && self.is_clean(name) {
                out.push(problem(
                    "unexpected collection in info/collections",
                    name.clone(),
                ));
            }
        }
        out
    }

    /// A listing of `coll` with `newer` (0 for all): exactly the acknowledged records modified
    /// after it, with their acknowledged content and times.
    pub fn check_listing(
        &self,
        coll: &str,
        newer: Ms,
        last_modified: Option<Ms>,
        got: &[WireBso],
    ) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.storage_dirty {
            return out;
        }
        let empty = Coll::default();
        let c = self.collections.get(coll).unwrap_or(&empty);
        let dirty = self.dirty_of(coll);
        if let (Some(lm), true, true) = (
            last_modified,
            dirty.is_clean(),
            self.collections.contains_key(coll),
        ) && lm != c.modified
        {
            out.push(problem(
                "wrong collection timestamp",
                format!("{coll}: X-Last-Modified {lm}, acknowledged {}", c.modified),
            ));
        }
        let mut seen = HashSet::with_capacity(got.len());
        for b in got {
            if !seen.insert(b.id.as_str()) {
                out.push(problem("duplicate record", format!("{coll}/{}", b.id)));
                continue;
            }
            if dirty.covers(&b.id) {
                continue;
            }
            let modified = seconds_to_ms(b.modified);
            if modified <= newer {
                out.push(problem(
                    "record not newer than asked",
                    format!("{coll}/{}: {modified} <= newer {newer}", b.id),
                ));
            }
            match c.records.get(&b.id) {
                None => out.push(problem(
                    "unexpected record",
                    format!("{coll}/{} (deleted or never acknowledged)", b.id),
                )),
                Some(r) => out.extend(compare(coll, &b.id, r, modified, &b.payload)),
            }
        }
        for (id, r) in &c.records {
            if r.modified > newer && !seen.contains(id.as_str()) && !dirty.covers(id) {
                out.push(problem(
                    "missing record",
                    format!("{coll}/{id} acknowledged at {}", r.modified),
                ));
            }
        }
        out
    }

    /// `GET storage/coll/id`: `None` for a 404.
    pub fn check_record(&self, coll: &str, id: &str, got: Option<&WireBso>) -> Vec<Problem> {
        if self.dirty_of(coll).covers(id) {
            return Vec::new();
        }
        let Some(c) = self.collections.get(coll) else {
            return match got {
                Some(_) => vec![problem("unexpected record", format!("{coll}/{id}"))],
                None => Vec::new(),
            };
        };
        match (c.records.get(id), got) {
            (None, None) => Vec::new(),
            (None, Some(_)) => vec![problem("unexpected record", format!("{coll}/{id}"))],
            (Some(r), None) => vec![problem(
                "missing record",
                format!("{coll}/{id} acknowledged at {}", r.modified),
            )],
            (Some(r), Some(b)) => compare(coll, id, r, seconds_to_ms(b.modified), &b.payload),
        }
    }

    /// After a full listing of `coll` (no `newer`) and its timestamp in `info/collections`
    /// (`None`: not listed there): checks the records no failed write touched, then adopts
    /// what the server holds for the rest.
    pub fn resync_collection(
        &mut self,
        coll: &str,
        info_ts: Option<Ms>,
        got: &[WireBso],
    ) -> Vec<Problem> {
        let dirty = match self.dirty.remove(coll) {
            _ if self.storage_dirty => Dirty::All,
            Some(d) => d,
            None => Dirty::Clean,
        };
        let c = self.collections.entry(coll.to_owned()).or_default();
        let mut out = Vec::new();
        let mut fresh = HashMap::with_capacity(got.len());
        for b in got {
            let modified = seconds_to_ms(b.modified);
            let rec = Rec {
                hash: payload_hash(&b.payload),
                modified,
            };
            if !dirty.covers(&b.id) {
                match c.records.get(&b.id) {
                    None => out.push(problem(
                        "unexpected record",
                        format!("{coll}/{} (deleted or never acknowledged)", b.id),
                    )),
                    Some(r) => out.extend(compare(coll, &b.id, r, modified, &b.payload)),
                }
            }
            fresh.insert(b.id.clone(), rec);
        }
        for (id, r) in &c.records {
            if !fresh.contains_key(id) && !dirty.covers(id) {
                out.push(problem(
                    "missing record",
                    format!("{coll}/{id} acknowledged at {}", r.modified),
                ));
            }
        }
        c.records = fresh;
        match info_ts {
            Some(t) => c.modified = t,
            None => {
                if !got.is_empty() {
                    out.push(problem(
                        "unexpected collection in info/collections",
                        format!("{coll} has records but is not in info/collections"),
                    ));
                }
                self.collections.remove(coll);
            }
        }
        out
    }

    /// Ends a resync: every collection `resync_names` gave has been re-read.
    pub fn resynced(&mut self) {
        self.storage_dirty = false;
        self.dirty.clear();
        self.last_uncertain = None;
    }
}

fn compare(coll: &str, id: &str, r: &Rec, modified: Ms, payload: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    if payload_hash(payload) != r.hash {
        out.push(problem(
            "wrong payload",
            format!(
                "{coll}/{id}: not the payload acknowledged at {}",
                r.modified
            ),
        ));
    }
    if modified != r.modified {
        out.push(problem(
            "wrong record timestamp",
            format!("{coll}/{id}: {modified}, acknowledged {}", r.modified),
        ));
    }
    out
}

/// Parses a listing body (`full=1`, JSON array) and checks it.
pub fn check_listing_body(
    account: &Account,
    coll: &str,
    newer: Ms,
    last_modified: Option<Ms>,
    body: &[u8],
) -> Result<(Vec<WireBso>, Vec<Problem>), String> {
    let got: Vec<WireBso> =
        serde_json::from_slice(body).map_err(|e| format!("listing is not JSON BSOs: {e}"))?;
    let problems = account.check_listing(coll, newer, last_modified, &got);
    Ok((got, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        let mut a = Account::default();
        a.ack_write(
            "history",
            [("a", payload_hash("pa")), ("b", payload_hash("pb"))],
            1_000_010,
        );
        a.ack_write("history", [("c", payload_hash("pc"))], 1_000_020);
        a
    }

    fn body(records: &[(&str, f64, &str)]) -> Vec<u8> {
        let v: Vec<_> = records
            .iter()
            .map(|(id, m, p)| serde_json::json!({"id": id, "modified": m, "payload": p}))
            .collect();
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn faithful_reads_pass() {
        let a = account();
        let full = body(&[
            ("a", 1000.01, "pa"),
            ("b", 1000.01, "pb"),
            ("c", 1000.02, "pc"),
        ]);
        let (_, p) = check_listing_body(&a, "history", 0, Some(1_000_020), &full).unwrap();
        assert_eq!(p, vec![]);
        let newer = body(&[("c", 1000.02, "pc")]);
        let (_, p) = check_listing_body(&a, "history", 1_000_010, Some(1_000_020), &newer).unwrap();
        assert_eq!(p, vec![]);
        let info = HashMap::from([("history".to_owned(), 1000.02)]);
        assert_eq!(a.check_info_collections(&info), vec![]);
    }

    /// A deliberately corrupted read-back is caught, whichever way it is wrong.
    #[test]
    fn corrupted_reads_are_detected() {
        let a = account();
        let kinds = |b: &[u8], newer: Ms| -> Vec<&'static str> {
            let (_, p) = check_listing_body(&a, "history", newer, Some(1_000_020), b).unwrap();
            p.into_iter().map(|p| p.kind).collect()
        };
        // A lost record.
        assert_eq!(
            kinds(&body(&[("a", 1000.01, "pa"), ("c", 1000.02, "pc")]), 0),
            ["missing record"]
        );
        // Stale content: the payload of an earlier version.
        assert_eq!(
            kinds(
                &body(&[
                    ("a", 1000.01, "pa"),
                    ("b", 1000.01, "old"),
                    ("c", 1000.02, "pc")
                ]),
                0
            ),
            ["wrong payload"]
        );
        // A record missing from a `newer` listing.
        assert_eq!(kinds(&body(&[]), 1_000_010), ["missing record"]);
        // A wrong modified time, and a resurrected record.
        assert_eq!(
            kinds(
                &body(&[("c", 1000.01, "pc"), ("z", 1000.02, "pz")]),
                1_000_000
            ),
            [
                "wrong record timestamp",
                "unexpected record",
                "missing record",
                "missing record"
            ]
        );
        // A single-record read with stale content, and one that lost the record.
        let stale = WireBso {
            id: "c".into(),
            modified: 1000.02,
            payload: "pa".into(),
        };
        assert_eq!(
            a.check_record("history", "c", Some(&stale))[0].kind,
            "wrong payload"
        );
        assert_eq!(
            a.check_record("history", "c", None)[0].kind,
            "missing record"
        );
        // info/collections with a stale timestamp or without the collection.
        let info = HashMap::from([("history".to_owned(), 1000.01)]);
        assert_eq!(
            a.check_info_collections(&info)[0].kind,
            "wrong collection timestamp"
        );
        assert_eq!(
            a.check_info_collections(&HashMap::new())[0].kind,
            "collection missing from info/collections"
        );
    }

    #[test]
    fn uncertain_writes_are_adopted_on_resync() {
        let mut a = account();
        a.uncertain("history", ["b", "d"]);
        let settle = Duration::from_secs(5);
        assert!(
            !a.needs_resync(Instant::now(), settle),
            "not before it settles"
        );
        assert!(a.needs_resync(Instant::now() + settle, settle));
        // An acknowledged delete of the collection does not make the late write certain.
        let mut b = a.clone();
        b.ack_delete_collection("history");
        assert!(!b.is_clean("history"));
        let late = body(&[("b", 1000.05, "pb2")]);
        let (_, p) = check_listing_body(&b, "history", 0, Some(1_000_050), &late).unwrap();
        assert_eq!(p, vec![]);
        // The failed write did land for b and d: a listing showing them is not an error.
        let got = body(&[
            ("a", 1000.01, "pa"),
            ("b", 1000.05, "pb2"),
            ("c", 1000.02, "pc"),
            ("d", 1000.05, "pd"),
        ]);
        let (_, p) = check_listing_body(&a, "history", 0, Some(1_000_050), &got).unwrap();
        assert_eq!(p, vec![]);
        let got: Vec<WireBso> = serde_json::from_slice(&got).unwrap();
        assert_eq!(a.resync_names([]), ["history"]);
        assert_eq!(
            a.resync_collection("history", Some(1_000_050), &got),
            vec![]
        );
        a.resynced();
        assert!(!a.is_uncertain());
        assert_eq!(a.collections["history"].modified, 1_000_050);
        assert_eq!(
            a.collections["history"].records["d"].hash,
            payload_hash("pd")
        );
        // Clean records are still checked during a resync.
        a.uncertain("history", ["d"]);
        let lost: Vec<WireBso> =
            serde_json::from_slice(&body(&[("a", 1000.01, "pa"), ("d", 1000.05, "pd")])).unwrap();
        let p = a.resync_collection("history", Some(1_000_050), &lost);
        assert_eq!(
            p.iter().map(|p| p.kind).collect::<Vec<_>>(),
            ["missing record", "missing record"]
        );
    }

    #[test]
    fn timestamps_parse_exactly() {
        assert_eq!(parse_ts("1700000000.12"), Some(1_700_000_000_120));
        assert_eq!(seconds_to_ms(1_700_000_000.1), 1_700_000_000_100);
        assert_eq!(parse_ts("0.00"), Some(0));
    }
}
