//! A follower's own election trigger beside openraft's timer.
//!
//! openraft 0.9 remembers that one of this node's vote requests was refused for a shorter log
//! and adds `smaller_log_timeout` (2 × `election_timeout_max`) to its election timer until this
//! node next starts an election itself — also after it has caught up as a follower of the
//! leader that won. A master that lost one election that way waited about 1.5 s instead of
//! 0.6–0.8 s when that leader died later (openraft's pull request 2087 keeps the penalty only
//! while the log is still behind; 0.9.25 does not have it). This trigger starts an election
//! when openraft's timer would have without the stale penalty: no accepted AppendEntries and
//! no granted vote for `leader lease + election_timeout_max`, and no refusal for a shorter log
//! since — a refusal after the last contact is the penalty working as meant, and is left to
//! openraft.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Marks {
    /// The last accepted AppendEntries or snapshot chunk, or vote this node granted.
    contact: Instant,
    /// The last time a vote request of this node was refused for a shorter log.
    refused_for_log: Option<Instant>,
    /// The last election this trigger started.
    triggered: Option<Instant>,
}

#[derive(Debug)]
pub struct ElectionWatch {
    marks: Mutex<Marks>,
}

impl Default for ElectionWatch {
    fn default() -> Self {
        ElectionWatch { marks: Mutex::new(Marks { contact: Instant::now(), refused_for_log: None, triggered: None }) }
    }
}

impl ElectionWatch {
    /// A leader's AppendEntries or snapshot was accepted, or this node granted a vote.
    pub fn contact(&self) {
        self.marks.lock().expect("not poisoned").contact = Instant::now();
    }

    /// A vote request of this node was refused by a peer with a greater log.
    pub fn refused_for_shorter_log(&self) {
        self.marks.lock().expect("not poisoned").refused_for_log = Some(Instant::now());
    }

    /// Whether a follower should start an election at `now` after `quiet` without contact, and
    /// `retry` after the last one this trigger started (a split vote: openraft's candidate
    /// timer carries the same stale penalty); records the election when it says yes.
    pub fn due(&self, now: Instant, quiet: Duration, retry: Duration) -> bool {
        let mut m = self.marks.lock().expect("not poisoned");
        let silent = now.saturating_duration_since(m.contact) >= quiet;
        let penalty_is_current = m.refused_for_log.is_some_and(|r| r >= m.contact);
        let recently_triggered = m.triggered.is_some_and(|t| now.saturating_duration_since(t) < retry);
        let due = silent && !penalty_is_current && !recently_triggered;
        if due {
            m.triggered = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(800);
    const RETRY: Duration = Duration::from_millis(300);

    fn watch_at(contact: Instant) -> ElectionWatch {
        let w = ElectionWatch::default();
        w.marks.lock().unwrap().contact = contact;
        w
    }

    #[test]
    fn a_silent_follower_elects_and_retries_a_split_vote() {
        let t = Instant::now();
        let w = watch_at(t);
        assert!(!w.due(t + Duration::from_millis(700), QUIET, RETRY), "within the quiet period");
        assert!(w.due(t + QUIET, QUIET, RETRY));
        assert!(!w.due(t + QUIET + Duration::from_millis(100), QUIET, RETRY), "one election per retry period");
        assert!(w.due(t + QUIET + RETRY, QUIET, RETRY));
    }

    #[test]
    fn a_refusal_before_the_last_contact_is_stale_and_one_after_it_is_left_to_openraft() {
        let t = Instant::now();
        let w = watch_at(t);
        w.marks.lock().unwrap().refused_for_log = Some(t - Duration::from_secs(5));
        assert!(w.due(t + QUIET, QUIET, RETRY), "refused in an earlier election, since caught up: not penalized");

        let w = watch_at(t);
        w.marks.lock().unwrap().refused_for_log = Some(t + Duration::from_millis(100));
        assert!(!w.due(t + QUIET, QUIET, RETRY), "refused since the leader went quiet: openraft's back-off stands");
        w.marks.lock().unwrap().contact = t + Duration::from_millis(200);
        assert!(w.due(t + Duration::from_millis(200) + QUIET, QUIET, RETRY), "a new leader's contact clears it");
    }
}
