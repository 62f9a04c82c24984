//! The watch checker: what a watcher received must be the committed history of its key range,
//! in revision order, with no gap and no duplicate, from its start revision on.

use std::collections::HashSet;

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Received {
    pub revision: i64,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchViolation {
    /// A revision came after a later one.
    OutOfOrder {
        after: i64,
        got: i64,
    },
    Duplicate {
        revision: i64,
        key: String,
    },
    /// A committed event in range that the watcher never received.
    Missing {
        revision: i64,
        key: String,
    },
    /// An event the store never committed.
    Phantom {
        revision: i64,
        key: String,
    },
}

/// Compares what a watcher received with the committed events of its range from its start
/// revision to the run's end marker (both as (revision, key), the committed list in order):
/// every committed event must have been received, once, in order.
pub fn check(received: &[Received], committed: &[Received]) -> Result<(), Vec<WatchViolation>> {
    let mut v = Vec::new();
    for w in received.windows(2) {
        if w[1].revision < w[0].revision {
            v.push(WatchViolation::OutOfOrder { after: w[0].revision, got: w[1].revision });
        }
        if w[1] == w[0] {
            v.push(WatchViolation::Duplicate { revision: w[1].revision, key: w[1].key.clone() });
        }
    }
    // The whole committed range, not just up to the watcher's last event: a watcher that
    // stopped early has missed the rest.
    let got: HashSet<&Received> = received.iter().collect();
    for c in committed {
        if !got.contains(c) {
            v.push(WatchViolation::Missing { revision: c.revision, key: c.key.clone() });
        }
    }
    let history: HashSet<&Received> = committed.iter().collect();
    for r in received {
        if !history.contains(r) {
            v.push(WatchViolation::Phantom { revision: r.revision, key: r.key.clone() });
        }
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(revision: i64, key: &str) -> Received {
        Received { revision, key: key.into() }
    }

    #[test]
    fn the_whole_history_passes_and_a_prefix_of_it_does_not() {
        let committed = [r(5, "a"), r(6, "b"), r(7, "a")];
        assert!(check(&committed, &committed).is_ok());
        assert_eq!(
            check(&committed[..2], &committed).unwrap_err(),
            [WatchViolation::Missing { revision: 7, key: "a".into() }],
            "a watcher that stopped early missed the rest"
        );
    }

    #[test]
    fn reordering_gaps_duplicates_and_phantoms_are_caught() {
        let committed = [r(5, "a"), r(6, "b"), r(7, "a")];
        assert!(matches!(
            check(&[r(6, "b"), r(5, "a"), r(7, "a")], &committed).unwrap_err()[0],
            WatchViolation::OutOfOrder { .. }
        ));
        assert!(matches!(
            check(&[r(5, "a"), r(7, "a")], &committed).unwrap_err()[0],
            WatchViolation::Missing { revision: 6, .. }
        ));
        assert!(matches!(
            check(&[r(5, "a"), r(5, "a"), r(6, "b"), r(7, "a")], &committed).unwrap_err()[0],
            WatchViolation::Duplicate { .. }
        ));
        assert!(matches!(
            check(&[r(5, "a"), r(6, "b"), r(7, "a"), r(9, "z")], &committed).unwrap_err().last().unwrap(),
            WatchViolation::Phantom { .. }
        ));
    }
}
