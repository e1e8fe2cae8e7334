//! Node choice for new users (SPEC 3.7): least loaded by `log(load)/log(capacity)`, ties by
//! the lowest node id, with capacity released when every node is full.

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: i64,
    pub available: i64,
    pub current_load: i64,
    pub capacity: i64,
    pub downed: bool,
    pub backoff: bool,
}

/// Rounds of "release capacity, try again" before giving up.
const MAX_RELEASE_ROUNDS: usize = 5;
/// `node_capacity_release_rate` when unset.
pub const DEFAULT_RELEASE_RATE: f64 = 0.1;

fn load_ratio(n: &Node) -> f64 {
    if n.current_load <= 0 {
        -1.0
    } else {
        (n.current_load as f64).ln() / (n.capacity as f64).ln()
    }
}

/// The best candidate's index.
pub fn pick(nodes: &[Node]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.available > 0 && n.capacity > n.current_load && !n.downed && !n.backoff)
        .min_by(|(_, a), (_, b)| {
            load_ratio(a)
                .total_cmp(&load_ratio(b))
                .then(a.id.cmp(&b.id))
        })
        .map(|(i, _)| i)
}

/// Gives full-but-not-at-capacity nodes some availability back; false when nothing changed.
/// Backed-off nodes are released too (they are skipped only when picking).
pub fn release_capacity(nodes: &mut [Node], rate: f64) -> bool {
    let mut changed = false;
    for n in nodes
        .iter_mut()
        .filter(|n| n.available <= 0 && n.capacity > n.current_load && !n.downed)
    {
        let released = ((n.capacity as f64 * rate).round() as i64).min(n.capacity - n.current_load);
        if released != n.available {
            n.available = released;
            changed = true;
        }
    }
    changed
}

/// Picks a node and charges it one user; `None` when no node can take one (503).
pub fn assign(nodes: &mut [Node], rate: f64) -> Option<i64> {
    for _ in 0..=MAX_RELEASE_ROUNDS {
        if let Some(i) = pick(nodes) {
            let n = &mut nodes[i];
            n.current_load += 1;
            n.available = (n.available - 1).max(0);
            return Some(n.id);
        }
        if !release_capacity(nodes, rate) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, available: i64, current_load: i64, capacity: i64) -> Node {
        Node {
            id,
            available,
            current_load,
            capacity,
            downed: false,
            backoff: false,
        }
    }

    /// SPEC 3.7's worked example.
    #[test]
    fn release_then_pick() {
        let mut nodes = vec![
            node(1, 0, 99, 100),
            node(2, 0, 90, 100),
            node(3, 0, 80, 81),
            Node {
                backoff: true,
                ..node(4, 0, 70, 71)
            },
            Node {
                downed: true,
                ..node(5, 0, 60, 61)
            },
        ];
        assert_eq!(assign(&mut nodes, DEFAULT_RELEASE_RATE), Some(2));
        let available: Vec<i64> = nodes.iter().map(|n| n.available).collect();
        assert_eq!(available, vec![1, 9, 1, 1, 0]);
        assert_eq!(nodes[1].current_load, 91);
    }

    #[test]
    fn all_full_is_none() {
        let mut nodes = vec![node(1, 0, 10, 10), node(2, 5, 3, 3)];
        assert_eq!(assign(&mut nodes, DEFAULT_RELEASE_RATE), None);
    }

    #[test]
    fn empty_nodes_first_and_ties_by_lowest_id() {
        let nodes = vec![node(7, 5, 10, 100), node(3, 5, 0, 100), node(2, 5, 0, 100)];
        assert_eq!(nodes[pick(&nodes).unwrap()].id, 2);
        let nodes = vec![node(9, 5, 10, 100), node(4, 5, 10, 100)];
        assert_eq!(nodes[pick(&nodes).unwrap()].id, 4);
    }

    #[test]
    fn skips_backoff_and_downed() {
        let nodes = vec![
            Node {
                backoff: true,
                ..node(1, 5, 0, 10)
            },
            Node {
                downed: true,
                ..node(2, 5, 0, 10)
            },
        ];
        assert_eq!(pick(&nodes), None);
    }
}
