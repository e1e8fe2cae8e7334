//! Syntax rules for names and ids (SPEC 0, 1.1, 1.3). The router applies the same patterns;
//! these functions are the one place the rules are written as code.

/// The router pattern for `{collection}` (actix syntax).
pub const COLLECTION_ROUTE_PATTERN: &str = r"[a-zA-Z0-9._-]{1,32}";
/// The router pattern for `{uid}`.
pub const UID_ROUTE_PATTERN: &str = r"[0-9]{1,10}";

/// `[a-zA-Z0-9._-]{1,32}`
pub fn valid_collection_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `^[ -~]{1,64}$`: printable ASCII including space; no tab or newline, not empty.
pub fn valid_bso_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names() {
        for ok in ["bookmarks", "a", "xxx_col2", "my.coll-1", &"x".repeat(32)] {
            assert!(valid_collection_name(ok), "{ok}");
        }
        for bad in ["", "has space", "slash/", "é", &"x".repeat(33), "a+b"] {
            assert!(!valid_collection_name(bad), "{bad}");
        }
    }

    #[test]
    fn bso_ids() {
        for ok in [
            "a",
            "{uuid-1234}",
            "6820f3ca-6e8a-4dd8-8b3625d7d650",
            "with space",
            "~!@#",
            &"X".repeat(64),
        ] {
            assert!(valid_bso_id(ok), "{ok}");
        }
        for bad in [
            "",
            "A\nB",
            "A\n",
            "\nN",
            "A\tB",
            &"X".repeat(65),
            "é",
            "\u{7f}",
        ] {
            assert!(!valid_bso_id(bad), "{bad:?}");
        }
    }
}
