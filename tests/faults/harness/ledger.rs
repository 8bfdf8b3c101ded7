//! Events, what should become of each, and the ledger that counts what did
//! (from the simulator's store and the dead-letter queue).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::ShortString;
use mos_sim::MosSim;

use super::Scenario;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    /// The pair must be linked (created once, maybe confirmed more often).
    Link { anonymous: String, user: String },
    /// Acked without a call, for this reason; never linked.
    Skip(&'static str),
    /// In the dead-letter queue with this `x-linker-reason`.
    Dead(&'static str),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub routing_key: &'static str,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub expect: Expect,
}

impl Event {
    pub fn pair(routing_key: &'static str, anonymous: &str, user: &str) -> Self {
        let body = serde_json::json!({"anonymousId": anonymous, "userId": user});
        Self {
            routing_key,
            body: body.to_string().into_bytes(),
            message_id: Some(uuid::Uuid::new_v4().to_string()),
            expect: Expect::Link {
                anonymous: anonymous.to_owned(),
                user: user.to_owned(),
            },
        }
    }

    pub fn properties(&self) -> BasicProperties {
        let p = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        match &self.message_id {
            Some(id) => p.with_message_id(ShortString::from(id.clone())),
            None => p,
        }
    }
}

/// The mix used under load: mostly new pairs, some repeated logins of pairs
/// already sent (no second link allowed), and some events to skip.
pub fn mixed_load(tag: &str, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let event = match i % 20 {
            // 5 % repeats of an earlier pair (a login after the sign-up).
            7 if i >= 20 => {
                let j = i - 13;
                Event::pair(
                    "user.logged_in",
                    &format!("a.{tag}.{j}"),
                    &format!("u.{tag}.{j}"),
                )
            }
            // 5 % placeholders from a buggy client: skipped, never linked.
            11 => Event {
                expect: Expect::Skip("blocked_identifier"),
                ..Event::pair("user.logged_in", "undefined", &format!("u.{tag}.{i}"))
            },
            // 5 % without an anonymous identifier.
            13 => Event {
                routing_key: "user.signed_up",
                body: serde_json::json!({"userId": format!("u.{tag}.{i}")})
                    .to_string()
                    .into_bytes(),
                message_id: Some(uuid::Uuid::new_v4().to_string()),
                expect: Expect::Skip("no_anonymous_identifier"),
            },
            k => Event::pair(
                if k % 2 == 0 {
                    "user.signed_up"
                } else {
                    "user.logged_in"
                },
                &format!("a.{tag}.{i}"),
                &format!("u.{tag}.{i}"),
            ),
        };
        events.push(event);
    }
    events
}

/// What became of the events, from the simulator's store and the
/// dead-letter queue (the only places an outcome is durable).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub sent: usize,
    /// Events expected to link whose pair is linked.
    pub linked: usize,
    /// Events expected to be skipped (none of them linked).
    pub skipped: usize,
    /// Messages in the dead-letter queue.
    pub dead_lettered: usize,
    /// Events whose expected outcome is not there (pair not linked, dead
    /// letter missing), with nothing left in any queue.
    pub lost: usize,
    /// Second links of a pair already linked (mos-sim `duplicates`).
    pub duplicates: u64,
    /// Links the scenario never asked for (a skipped event linked, a wrong pair).
    pub unexpected_links: usize,
    /// Link calls that found the pair already linked, or repeated it.
    pub repeated_calls: u64,
}

/// The pairs `events` must link.
pub fn expected_links(events: &[Event]) -> HashSet<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.expect {
            Expect::Link { anonymous, user } => Some((anonymous.clone(), user.clone())),
            _ => None,
        })
        .collect()
}

pub fn tally(events: &[Event], sim: &MosSim, dead: &BTreeMap<String, usize>) -> Tally {
    let links = sim.links();
    let mut per_pair: HashMap<(String, String), usize> = HashMap::new();
    for l in &links {
        *per_pair
            .entry((l.anonymous_identifier.clone(), l.user_identifier.clone()))
            .or_default() += 1;
    }
    let expected = expected_links(events);
    let mut t = Tally {
        sent: events.len(),
        ..Tally::default()
    };
    let mut want_dead: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        match &e.expect {
            Expect::Link { anonymous, user } => {
                if per_pair.contains_key(&(anonymous.clone(), user.clone())) {
                    t.linked += 1;
                } else {
                    t.lost += 1;
                }
            }
            Expect::Skip(_) => t.skipped += 1,
            Expect::Dead(reason) => *want_dead.entry(reason).or_default() += 1,
        }
    }
    for (reason, want) in want_dead {
        let got = dead.get(reason).copied().unwrap_or(0);
        t.lost += want.saturating_sub(got);
    }
    t.dead_lettered = dead.values().sum();
    t.unexpected_links = per_pair.keys().filter(|p| !expected.contains(*p)).count();
    let stats = sim.stats();
    t.duplicates = stats.duplicates;
    // Each pair needs one create; every other 2xx call was a repeat.
    t.repeated_calls = stats.status(200).saturating_sub(stats.creates);
    t
}

/// Dead letters by `x-linker-reason` (or the broker's own reason), counted
/// with the worker's own `dlq stats` code.
pub async fn dead_letters(scenario: &Scenario) -> BTreeMap<String, usize> {
    let connection =
        testkit::broker::broker_within_at(&scenario.amqp_url, Duration::from_secs(60)).await;
    let stats = identity_link_worker::broker::dlq::stats(&connection, &scenario.topology)
        .await
        .expect("dlq stats");
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(
        stats.scanned, stats.messages as usize,
        "every dead letter was looked at"
    );
    stats.by_reason
}
