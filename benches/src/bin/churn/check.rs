//! The checker: what producers were told, what live readers were given, and what a final read
//! of every stream through two nodes shows, turned into counts of broken promises. Each count
//! is one message (or one pair of reads) that breaks one promise; a correct cluster scores 0
//! on every line.

use std::collections::{HashMap, HashSet};

/// One producer's sends to one stream, in the order it sent them (each waited for its
/// answer before the next).
#[derive(Debug, Default, Clone)]
pub struct Produced {
    pub stream: String,
    /// Message ids answered 200, in send order.
    pub acked: Vec<String>,
    /// For each acknowledged id, the node that answered and when (ms into the run), to
    /// explain a broken promise.
    pub via: Vec<String>,
}

/// What one live reader of one stream was given, in order.
#[derive(Debug, Default, Clone)]
pub struct Followed {
    pub stream: String,
    pub received: Vec<String>,
    /// For each message given, its position and the node that gave it and when, to explain
    /// a broken promise.
    pub via: Vec<String>,
}

/// The counts of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Acknowledged, and absent from the final read.
    pub lost: usize,
    /// Present more than once in the final read.
    pub duplicated: usize,
    /// Placed by the final read before a position a live reader had reached, yet never
    /// given to that reader.
    pub skipped: usize,
    /// Given to a live reader after one the final read places later, or one producer's
    /// acknowledged messages out of their send order in the final read.
    pub reordered: usize,
    /// Streams whose final reads through two nodes differ.
    pub disagreeing: usize,
    /// Messages given to a live reader that the final read does not hold.
    pub vanished: usize,
    /// Acknowledged messages whose TTL had not run out on the clock of the node that
    /// accepted them, missing from a read through some node (counted once per read).
    pub expired_early: usize,
}

impl Counts {
    /// True when no promise was broken.
    pub fn clean(&self) -> bool {
        *self == Self::default()
    }
}

/// The acknowledged messages absent from the final read, each with the node that answered
/// it and when: the evidence a failed run prints.
pub fn lost(produced: &[Produced], finals: &HashMap<String, [Vec<String>; 2]>) -> Vec<String> {
    let mut out = Vec::new();
    for producer in produced {
        let Some([first, _]) = finals.get(&producer.stream) else {
            continue;
        };
        let held: HashSet<&str> = first.iter().map(String::as_str).collect();
        for (id, via) in producer.acked.iter().zip(&producer.via) {
            if !held.contains(id.as_str()) {
                out.push(format!("{} {id} acknowledged by {via}", producer.stream));
            }
        }
    }
    out
}

/// The messages live readers skipped (see [`Counts::skipped`]), each with where the final read
/// places it (`positions` maps each stream's ids to their positions), the producer's evidence,
/// and the message the reader was given first above it: the evidence a failed run prints.
pub fn skipped(
    produced: &[Produced],
    followed: &[Followed],
    finals: &HashMap<String, [Vec<String>; 2]>,
    positions: &HashMap<String, HashMap<String, String>>,
) -> Vec<String> {
    let acked_via: HashMap<&str, &str> = produced
        .iter()
        .flat_map(|p| p.acked.iter().zip(&p.via))
        .map(|(id, via)| (id.as_str(), via.as_str()))
        .collect();
    let mut out = Vec::new();
    for reader in followed {
        let Some([order, _]) = finals.get(&reader.stream) else {
            continue;
        };
        let at: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let given: HashSet<&str> = reader.received.iter().map(String::as_str).collect();
        let position = |id: &str| {
            positions
                .get(&reader.stream)
                .and_then(|p| p.get(id))
                .map_or("?", String::as_str)
                .to_owned()
        };
        let mut reached: Option<usize> = None;
        for (id, via) in reader.received.iter().zip(&reader.via) {
            let Some(&here) = at.get(id.as_str()) else {
                continue;
            };
            let from = reached.map_or(0, |r| r + 1);
            for missed in order.get(from..here).into_iter().flatten() {
                if !given.contains(missed.as_str()) {
                    out.push(format!(
                        "{} {missed} at {} (acknowledged by {}) skipped: the reader was given \
                         {id} at {} by {via} first",
                        reader.stream,
                        position(missed),
                        acked_via.get(missed.as_str()).unwrap_or(&"nobody"),
                        position(id),
                    ));
                }
            }
            reached = Some(reached.map_or(here, |r| r.max(here)));
        }
    }
    out
}

/// How many of `acked` each read in `reads` misses, summed.
pub fn missing(acked: &[String], reads: &[Vec<String>]) -> usize {
    reads
        .iter()
        .map(|read| {
            let held: HashSet<&str> = read.iter().map(String::as_str).collect();
            acked
                .iter()
                .filter(|id| !held.contains(id.as_str()))
                .count()
        })
        .sum()
}

/// Compares everything: `finals` holds, per stream, the final read through each of two nodes.
pub fn check(
    produced: &[Produced],
    followed: &[Followed],
    finals: &HashMap<String, [Vec<String>; 2]>,
) -> Counts {
    let mut counts = Counts::default();
    let mut index: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    for (stream, [first, second]) in finals {
        if first != second {
            counts.disagreeing += 1;
        }
        let mut positions = HashMap::new();
        for (i, id) in first.iter().enumerate() {
            if positions.insert(id.as_str(), i).is_some() {
                counts.duplicated += 1;
            }
        }
        index.insert(stream.as_str(), positions);
    }
    let empty = HashMap::new();
    for producer in produced {
        let positions = index.get(producer.stream.as_str()).unwrap_or(&empty);
        let mut last = None;
        for id in &producer.acked {
            match positions.get(id.as_str()) {
                None => counts.lost += 1,
                Some(&at) => {
                    if last.is_some_and(|last| at < last) {
                        counts.reordered += 1;
                    }
                    last = Some(at);
                }
            }
        }
    }
    for reader in followed {
        let Some(positions) = index.get(reader.stream.as_str()) else {
            continue;
        };
        let final_order = &finals[&reader.stream][0];
        let given: HashSet<&str> = reader.received.iter().map(String::as_str).collect();
        let mut reached: Option<usize> = None;
        for id in &reader.received {
            match positions.get(id.as_str()) {
                None => counts.vanished += 1,
                Some(&at) => {
                    if reached.is_some_and(|r| at < r) {
                        counts.reordered += 1;
                    }
                    reached = Some(reached.map_or(at, |r| r.max(at)));
                }
            }
        }
        if let Some(reached) = reached {
            counts.skipped += final_order[..reached]
                .iter()
                .filter(|id| !given.contains(id.as_str()))
                .count();
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn finals(order: &str) -> HashMap<String, [Vec<String>; 2]> {
        HashMap::from([("s".to_owned(), [ids(order), ids(order)])])
    }

    fn produced(acked: &str) -> Vec<Produced> {
        let acked = ids(acked);
        vec![Produced {
            stream: "s".into(),
            via: acked.iter().map(|_| "n0 at 0 ms".to_owned()).collect(),
            acked,
        }]
    }

    fn followed(received: &str) -> Vec<Followed> {
        let received = ids(received);
        vec![Followed {
            stream: "s".into(),
            via: received.iter().map(|_| "n1 at 5 ms".to_owned()).collect(),
            received,
        }]
    }

    #[test]
    fn every_read_missing_a_message_counts() {
        assert_eq!(missing(&ids("a b c"), &[ids("a b c"), ids("c")]), 2);
        assert_eq!(missing(&ids("a b"), &[ids("b a"), ids("a b")]), 0);
    }

    #[test]
    fn a_clean_run_counts_nothing() {
        let c = check(&produced("a b c"), &followed("a b c"), &finals("a b c"));
        assert!(c.clean(), "{c:?}");
        // A reader that stopped early skipped nothing.
        let c = check(&produced("a b c"), &followed("a"), &finals("a b c"));
        assert!(c.clean(), "{c:?}");
    }

    #[test]
    fn a_message_committed_below_a_readers_position_is_a_skip() {
        // The reader went a → c; b was committed between them afterwards.
        let c = check(&produced("a b c"), &followed("a c"), &finals("a b c"));
        assert_eq!(c.skipped, 1, "{c:?}");
        let positions = HashMap::from([(
            "s".to_owned(),
            HashMap::from([
                ("b".to_owned(), "1:2".to_owned()),
                ("c".to_owned(), "1:3".to_owned()),
            ]),
        )]);
        let evidence = skipped(
            &produced("a b c"),
            &followed("a c"),
            &finals("a b c"),
            &positions,
        );
        assert_eq!(
            evidence,
            [
                "s b at 1:2 (acknowledged by n0 at 0 ms) skipped: the reader was given c at 1:3 \
              by n1 at 5 ms first"
            ]
        );
        assert!(
            skipped(
                &produced("a b c"),
                &followed("a b c"),
                &finals("a b c"),
                &positions
            )
            .is_empty()
        );
    }

    #[test]
    fn lost_duplicated_reordered_disagreeing_and_vanished_are_counted() {
        let c = check(&produced("a b c d"), &followed("a x"), &finals("b a a c"));
        assert_eq!(c.lost, 1, "d: {c:?}");
        let lost = lost(&produced("a b c d"), &finals("b a a c"));
        assert_eq!(lost, ["s d acknowledged by n0 at 0 ms"]);
        assert_eq!(c.duplicated, 1, "a twice: {c:?}");
        assert_eq!(c.reordered, 1, "a after b: {c:?}");
        assert_eq!(c.vanished, 1, "x: {c:?}");
        let mut two = finals("a b");
        two.get_mut("s").expect("s")[1] = ids("a");
        assert_eq!(check(&[], &[], &two).disagreeing, 1);
    }
}
