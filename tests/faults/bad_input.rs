//! Scenario 7: 10 000 generated bodies (seeded, reproducible): random bytes,
//! deep nesting, huge strings, wrong types, unicode edge cases, hostile
//! properties and a few 1 MiB bodies. Each body's expected outcome is known
//! from how it was generated. No panic; exactly one outcome per message; the
//! dead-letter queue holds exactly the dead-lettered ones, by reason; memory
//! stays bounded.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use mos_sim::SimConfig;

use crate::harness::*;

const TOTAL: usize = 10_000;
const MEMORY_BOUND_MIB: u64 = 150;
const MIB: usize = 1 << 20;

/// A generated message and what must become of it.
pub struct Case {
    pub kind: &'static str,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub expect: Expect,
}

fn props() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn link(a: &str, u: &str) -> Expect {
    Expect::Link {
        anonymous: a.to_owned(),
        user: u.to_owned(),
    }
}

const BLOCKED: [&str; 12] = [
    "anonymous",
    "guest",
    "null",
    "undefined",
    "none",
    "nil",
    "nan",
    "0",
    "-1",
    "[object object]",
    "true",
    "false",
];

/// Unicode that is valid in an identifier: not control, not only white space.
const UNICODE_OK: [&str; 14] = [
    "é",
    "\u{1F600}",                                   // emoji (non-BMP)
    "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}", // ZWJ family
    "\u{200F}עברית",                               // RTL mark + Hebrew
    "\u{FEFF}",                                    // BOM inside a value
    "e\u{0301}\u{0301}\u{0301}",                   // stacked combining marks
    "\u{FFFF}",                                    // noncharacter
    "\u{10FFFF}",                                  // last code point
    "\u{2028}x",                                   // line separator
    "\u{00A0}x",                                   // no-break space
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u{202E}gnp.exe", // RTL override
    "中文标识",
    "\\\"'<>&%00",
];

/// Control characters (JSON-escaped in the body): invalid inside an identifier.
const CONTROL: [char; 8] = [
    '\u{0}', '\u{1}', '\u{8}', '\u{1B}', '\u{7F}', '\u{85}', '\u{9F}', '\n',
];

/// `s` padded to exactly `len` bytes, with two-byte characters where they fit.
fn pad(s: &str, len: usize) -> String {
    let mut long = s.to_owned();
    while long.len() + 2 <= len {
        long.push('é');
    }
    while long.len() < len {
        long.push('z');
    }
    long
}

/// `map` with the pair added, as a JSON object.
fn with_pair(mut map: serde_json::Map<String, Value>, a: &str, u: &str) -> String {
    map.insert("anonymousId".into(), json!(a));
    map.insert("userId".into(), json!(u));
    Value::Object(map).to_string()
}

fn random_string(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(b'a'..=b'z') as char,
            1 => char::from_u32(rng.random_range(0x20..0x7f)).unwrap(),
            2 => char::from_u32(rng.random_range(0xA0..0xD7FF)).unwrap_or('x'),
            _ => char::from_u32(rng.random_range(0x1_0000..0x10_FFFF)).unwrap_or('y'),
        })
        .collect()
}

/// Any JSON value, up to `depth` levels.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random_bool(0.5)),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => Value::String(random_string(rng, 40)),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..4))
                .map(|_| (random_string(rng, 8), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A value of the wrong type for an identifier (never a string, never null,
/// and for the user identifier never an integer).
fn wrong_type(rng: &mut StdRng, for_user: bool) -> Value {
    match rng.random_range(0..5) {
        0 => Value::Bool(rng.random_bool(0.5)),
        1 => json!([format!("x{}", rng.random::<u16>())]),
        2 => json!({"id": "x"}),
        3 => json!(1.5),
        _ if for_user => json!(1e300),
        _ => json!(rng.random_range(1..1_000_000)),
    }
}

fn blocked_variant(rng: &mut StdRng) -> String {
    let word = BLOCKED[rng.random_range(0..BLOCKED.len())];
    let cased: String = word
        .chars()
        .map(|c| {
            if rng.random_bool(0.5) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    // Spaces only: a tab is a control character, which makes it invalid instead.
    let pad = [" ", "", "  "][rng.random_range(0..3)];
    format!("{pad}{cased}{pad}")
}

fn is_json_object(bytes: &[u8]) -> bool {
    matches!(serde_json::from_slice::<Value>(bytes), Ok(Value::Object(_)))
}

/// The generator. `i` makes every linkable pair unique.
pub fn generate(seed: u64, tag: &str, n: usize) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cases = Vec::with_capacity(n);
    for i in 0..n {
        let a = format!("a.{tag}.{i}");
        let u = format!("u.{tag}.{i}");
        // A handful of 1 MiB bodies, spread out.
        let case = if i % 1_667 == 1_000 {
            huge_case(&mut rng, i, &a, &u)
        } else {
            small_case(&mut rng, &a, &u)
        };
        cases.push(case);
    }
    cases
}

/// Bodies over the worker's default `LINKER_MAX_BODY_BYTES` are dead-lettered
/// unparsed, whatever they hold.
fn case(kind: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    let body = body.into();
    let expect = if body.len() > identity_link_worker::config::DEFAULT_MAX_BODY_BYTES {
        Expect::Dead("body_too_large")
    } else {
        expect
    };
    Case {
        kind,
        body,
        properties: props(),
        expect,
    }
}

fn huge_case(rng: &mut StdRng, i: usize, a: &str, u: &str) -> Case {
    match (i / 1_667) % 6 {
        0 => case(
            "1MiB valid pair + padding",
            json!({"anonymousId": a, "userId": u, "padding": "p".repeat(MIB)}).to_string(),
            link(a, u),
        ),
        1 => {
            let mut bytes = vec![0u8; MIB];
            rng.fill(&mut bytes[..]);
            bytes[0] = b'#'; // never a JSON object
            case("1MiB random bytes", bytes, Expect::Dead("malformed"))
        }
        2 => case(
            "1MiB identifier",
            json!({"anonymousId": "a".repeat(MIB), "userId": u}).to_string(),
            Expect::Dead("invalid_identifier"),
        ),
        3 => case(
            "1MiB nesting",
            format!("{}{}", "[".repeat(MIB / 2), "]".repeat(MIB / 2)),
            Expect::Dead("malformed"),
        ),
        4 => {
            let mut map = serde_json::Map::new();
            for k in 0..75_000 {
                map.insert(format!("k{k}"), json!(k));
            }
            case("1MiB object, 75k keys", with_pair(map, a, u), link(a, u))
        }
        _ => case(
            "1MiB array",
            json!(vec![json!({"anonymousId": a, "userId": u}); MIB / 40]).to_string(),
            Expect::Dead("malformed"),
        ),
    }
}

fn small_case(rng: &mut StdRng, a: &str, u: &str) -> Case {
    let ctrl = CONTROL[rng.random_range(0..CONTROL.len())];
    match rng.random_range(0..34) {
        0 | 1 => {
            // Random bytes; the rare one that parses as an object is redrawn.
            loop {
                let len = rng.random_range(0..600);
                let mut bytes = vec![0u8; len];
                rng.fill(&mut bytes[..]);
                if !is_json_object(&bytes) {
                    return case("random bytes", bytes, Expect::Dead("malformed"));
                }
            }
        }
        2 => {
            // Random printable ASCII, JSON-ish punctuation included.
            loop {
                let len = rng.random_range(1..300);
                const ALPHABET: &[u8] = b"{}[]\":,0123456789abcdeftrunl \\/";
                let text: String = (0..len)
                    .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                    .collect();
                if !is_json_object(text.as_bytes()) {
                    return case("random json-ish text", text, Expect::Dead("malformed"));
                }
            }
        }
        3 => {
            // Valid pair plus random junk fields (depth <= 4).
            let mut map = serde_json::Map::new();
            for _ in 0..rng.random_range(0..6) {
                let key = format!("x{}", random_string(rng, 6));
                map.insert(key, random_value(rng, 4));
            }
            case("pair + random fields", with_pair(map, a, u), link(a, u))
        }
        4 => {
            let d = rng.random_range(1..=100);
            let body = format!(
                r#"{{"anonymousId":"{a}","userId":"{u}","x":{}1{}}}"#,
                "[".repeat(d),
                "]".repeat(d)
            );
            case("nesting <= 100", body, link(a, u))
        }
        5 => {
            let d = rng.random_range(200..100_000);
            let body = format!(
                r#"{{"anonymousId":"{a}","userId":"{u}","x":{}1{}}}"#,
                "[".repeat(d),
                "]".repeat(d)
            );
            case("nesting >= 200", body, Expect::Dead("malformed"))
        }
        6 => {
            let d = rng.random_range(200..20_000);
            let body = format!(
                r#"{}{{"anonymousId":"{a}","userId":"{u}"}}{}"#,
                r#"{"data":"#.repeat(d),
                "}".repeat(d)
            );
            case("object nesting >= 200", body, Expect::Dead("malformed"))
        }
        7 => case(
            "wrong type anonymous",
            json!({"anonymousId": wrong_type(rng, false), "userId": u}).to_string(),
            Expect::Dead("invalid_identifier"),
        ),
        8 => case(
            "wrong type user",
            json!({"anonymousId": a, "userId": wrong_type(rng, true)}).to_string(),
            Expect::Dead("invalid_identifier"),
        ),
        9 => {
            let n: i64 = match rng.random_range(0..4) {
                0 => rng.random_range(1..i64::MAX),
                1 => -rng.random_range(2..i64::MAX),
                2 => i64::MAX,
                _ => rng.random_range(2..1000),
            };
            case(
                "integer user",
                json!({"anonymousId": a, "userId": n}).to_string(),
                link(a, &n.to_string()),
            )
        }
        10 => case(
            "u64 user",
            json!({"anonymousId": a, "userId": u64::MAX}).to_string(),
            link(a, &u64::MAX.to_string()),
        ),
        11 => case(
            "user too big for u64",
            format!(r#"{{"anonymousId":"{a}","userId":123456789012345678901234567890}}"#),
            Expect::Dead("invalid_identifier"),
        ),
        12 => {
            let body = match rng.random_range(0..4) {
                0 => json!({"anonymousId": a}),
                1 => json!({"anonymousId": a, "userId": null}),
                2 => json!({"anonymousId": a, "userId": ""}),
                _ => json!({"anonymousId": a, "user": {"name": u}, "data": {}}),
            };
            case(
                "no user",
                body.to_string(),
                Expect::Dead("missing_user_identifier"),
            )
        }
        13 => {
            let blank = [" ", "   ", "\u{00A0}", "\u{3000}", "\t", "\n \r"][rng.random_range(0..6)];
            case(
                "blank user",
                json!({"anonymousId": a, "userId": blank}).to_string(),
                Expect::Dead("invalid_identifier"),
            )
        }
        14 => {
            let anon = [json!(null), json!(""), json!(" "), json!("\u{2003}\t")]
                [rng.random_range(0..4)]
            .clone();
            case(
                "no anonymous",
                json!({"anonymousId": anon, "userId": u}).to_string(),
                Expect::Skip("no_anonymous_identifier"),
            )
        }
        15 => {
            let len = rng.random_range(513..200_000);
            let (body, kind) = if rng.random_bool(0.5) {
                (
                    json!({"anonymousId": "a".repeat(len), "userId": u}),
                    "huge anonymous",
                )
            } else {
                (
                    json!({"anonymousId": a, "userId": "u".repeat(len)}),
                    "huge user",
                )
            };
            case(kind, body.to_string(), Expect::Dead("invalid_identifier"))
        }
        16 => {
            // Exactly at the limit: 512 bytes (multi-byte characters) is valid.
            let long_a = pad(a, 512);
            case(
                "512-byte anonymous",
                json!({"anonymousId": long_a, "userId": u}).to_string(),
                link(&long_a, u),
            )
        }
        17 => {
            let long_u = pad(u, 513);
            case(
                "513-byte user",
                json!({"anonymousId": a, "userId": long_u}).to_string(),
                Expect::Dead("invalid_identifier"),
            )
        }
        18 => {
            let (body, kind) = if rng.random_bool(0.5) {
                (
                    json!({"anonymousId": format!("{a}{ctrl}x"), "userId": u}),
                    "control in anonymous",
                )
            } else {
                (
                    json!({"anonymousId": a, "userId": format!("{u}{ctrl}x")}),
                    "control in user",
                )
            };
            case(kind, body.to_string(), Expect::Dead("invalid_identifier"))
        }
        19 => {
            let extra = UNICODE_OK[rng.random_range(0..UNICODE_OK.len())];
            let (anon, user) = if rng.random_bool(0.5) {
                (format!("{a}{extra}"), u.to_owned())
            } else {
                (a.to_owned(), format!("{extra}{u}"))
            };
            case(
                "unicode identifiers",
                json!({"anonymousId": anon, "userId": user}).to_string(),
                link(&anon, &user),
            )
        }
        20 => {
            let body = [
                format!(r#"{{"anonymousId":"{a}\ud800","userId":"{u}"}}"#),
                format!(r#"{{"anonymousId":"{a}","userId":"\udfff{u}"}}"#),
            ][rng.random_range(0..2)]
            .clone();
            case("lone surrogate", body, Expect::Dead("malformed"))
        }
        21 => {
            let mut body = format!(r#"{{"anonymousId":"{a}X","userId":"{u}"}}"#).into_bytes();
            let at = body.iter().position(|b| *b == b'X').unwrap();
            body[at] = [0xff, 0xc0, 0x80, 0xed][rng.random_range(0..4)];
            case("invalid utf-8 in a string", body, Expect::Dead("malformed"))
        }
        22 => {
            let mut body = vec![0xEF, 0xBB, 0xBF];
            body.extend_from_slice(
                json!({"anonymousId": a, "userId": u})
                    .to_string()
                    .as_bytes(),
            );
            case("BOM before the object", body, Expect::Dead("malformed"))
        }
        23 => {
            let body = [
                json!([a, u]).to_string(),
                json!(a).to_string(),
                "42".to_owned(),
                "null".to_owned(),
                "true".to_owned(),
                String::new(),
                "   ".to_owned(),
            ][rng.random_range(0..7)]
            .clone();
            case("not an object", body, Expect::Dead("malformed"))
        }
        24 => {
            let full = json!({"anonymousId": a, "userId": u}).to_string();
            let body = if rng.random_bool(0.5) {
                full[..rng.random_range(1..full.len() - 1)].to_owned()
            } else {
                format!("{full} trailing")
            };
            case("truncated or trailing", body, Expect::Dead("malformed"))
        }
        25 => {
            let (anon, user, reason) = match rng.random_range(0..3) {
                0 => (blocked_variant(rng), u.to_owned(), "blocked_identifier"),
                1 => (
                    a.to_owned(),
                    blocked_variant(rng).trim().to_owned(),
                    "blocked_identifier",
                ),
                _ => (u.to_owned(), u.to_owned(), "same_identifier"),
            };
            case(
                "blocked or same",
                json!({"anonymousId": anon, "userId": user}).to_string(),
                Expect::Skip(reason),
            )
        }
        26 => {
            let body = match rng.random_range(0..4) {
                0 => json!({"data": {"anonymousId": a, "user_id": u}}),
                1 => json!({"context": {"anonymousId": a}, "user": {"id": u}}),
                2 => {
                    json!({"anonymousIdentifier": "", "anonymousId": null, "anonymous_id": a, "userIdentifier": u})
                }
                _ => {
                    json!({"data": {"anonymousIdentifier": a, "userIdentifier": u}, "anonymousId": "  "})
                }
            };
            case("pointer variants", body.to_string(), link(a, u))
        }
        27 => case(
            "wrong type at the first matching pointer",
            json!({"anonymousIdentifier": 7, "anonymousId": a, "userId": u}).to_string(),
            Expect::Dead("invalid_identifier"),
        ),
        28 => case(
            "duplicate keys (last wins)",
            format!(r#"{{"userId":"{u}-first","anonymousId":"{a}","userId":"{u}"}}"#),
            link(a, u),
        ),
        29 => {
            // Hostile event ids and times: they must not change the outcome.
            let id = match rng.random_range(0..5) {
                0 => json!(format!("évènement-{}", rng.random::<u32>())),
                1 => json!(format!("line\nbreak{ctrl}")),
                2 => json!("x".repeat(256)),
                3 => json!(rng.random::<u64>()),
                _ => json!(random_string(rng, 60)),
            };
            let at = [
                json!("not a date"),
                json!(1e308),
                json!(-5),
                json!("9999-12-31T23:59:59Z"),
                json!({"t": 1}),
            ][rng.random_range(0..5)]
            .clone();
            case(
                "hostile id and time",
                json!({"id": id, "eventId": id, "occurredAt": at, "anonymousId": a, "userId": u})
                    .to_string(),
                link(a, u),
            )
        }
        30 => {
            // Hostile AMQP properties on a good body.
            let message_id = match rng.random_range(0..3) {
                0 => format!("msg-é-{}", rng.random::<u32>()),
                1 => format!("ctl{ctrl}id"),
                _ => "m".repeat(255),
            };
            let mut headers = FieldTable::default();
            let attempts = match rng.random_range(0..4) {
                0 => AMQPValue::LongString(LongString::from("abc")),
                1 => AMQPValue::LongLongInt(-5),
                2 => AMQPValue::Boolean(true),
                _ => AMQPValue::LongLongInt(1),
            };
            headers.insert(ShortString::from("x-linker-attempts"), attempts);
            Case {
                kind: "hostile properties",
                body: json!({"anonymousId": a, "userId": u})
                    .to_string()
                    .into_bytes(),
                properties: props()
                    .with_message_id(ShortString::from(message_id))
                    .with_headers(headers)
                    .with_content_type(ShortString::from("text/plain; charset=latin1")),
                expect: link(a, u),
            }
        }
        31 => case(
            "escaped keys and values",
            format!(r#"{{"\u0061nonymousId":"{a}","userId":"{u}","\u0000":"\u0000"}}"#),
            link(a, u),
        ),
        32 => case(
            "whitespace around the object",
            format!(" \n\t{{ \"anonymousId\" : \"{a}\" , \"userId\" : \"{u}\" }}\r\n "),
            link(a, u),
        ),
        _ => case(
            "plain pair",
            json!({"anonymousId": a, "userId": u}).to_string(),
            link(a, u),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_bad_input_one_outcome_each_and_bounded_memory() {
    let seed: u64 = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1d_1234);
    let scenario = Scenario::new("s07-bad-input", SimConfig::default(), &[]).await;
    let cases = generate(seed, &scenario.tag, TOTAL);
    let events: Vec<Event> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Event {
            routing_key: if i % 2 == 0 {
                "user.signed_up"
            } else {
                "user.logged_in"
            },
            body: c.body.clone(),
            message_id: None,
            expect: c.expect.clone(),
        })
        .collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        *kinds.entry(c.kind).or_default() += 1;
    }
    let huge = cases.iter().filter(|c| c.body.len() >= MIB).count();
    let mut want_skip: BTreeMap<String, u64> = BTreeMap::new();
    let mut want_dead: BTreeMap<String, u64> = BTreeMap::new();
    let mut want_linked = 0u64;
    for c in &cases {
        match &c.expect {
            Expect::Link { .. } => want_linked += 1,
            Expect::Skip(r) => *want_skip.entry((*r).to_owned()).or_default() += 1,
            Expect::Dead(r) => *want_dead.entry((*r).to_owned()).or_default() += 1,
        }
    }

    // Queue everything first, then let one worker at it.
    let connection = broker().await;
    let publisher = testkit::broker::publisher(&connection).await;
    {
        use futures_util::StreamExt;
        let exchange = scenario.exchange();
        let results: Vec<_> = futures_util::stream::iter(cases.iter().zip(&events))
            .map(|(c, e)| {
                let publisher = publisher.clone();
                async move {
                    publisher
                        .publish(exchange, e.routing_key, &c.body, c.properties.clone())
                        .await
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok), "all bodies queued");
    }
    let started = Instant::now();
    let mut worker = scenario.spawn_worker("worker");
    let mut peak_kib = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    let metrics = loop {
        if let Some(exit) = worker.try_exit() {
            panic!("the worker exited during bad input: {exit:?}");
        }
        peak_kib = peak_kib.max(worker.vm_hwm_kib());
        if let Some(m) = worker.metrics().await
            && m.settled() >= TOTAL as u64
            && m.in_flight == 0
        {
            break m;
        }
        assert!(Instant::now() < deadline, "bad input not settled in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    peak_kib = peak_kib.max(worker.vm_hwm_kib());
    // Runs show 4.9 s, 16 s on a busy machine; the 240 s deadline above
    // only ends a hang.
    assert_within("settling the bad input", took, Duration::from_secs(120));
    let (status, _) = worker.stop(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "no panic, clean exit");
    assert_queues_empty(&scenario).await;

    let dead = dead_letters(&scenario).await;
    let dlq_depth = depth(&connection, &scenario.topology.dead_letter).await;
    let _ = connection.close(200, "done".into()).await;
    let t = tally(&events, &scenario.sim, &dead);
    let scan = scenario.assert_no_secret_in_output();
    let outcome_sum = metrics.settled();
    Summary {
        scenario: "7 bad input",
        load: format!(
            "{TOTAL} generated bodies (seed {seed:#x}, {} kinds, {huge} of 1 MiB)",
            kinds.len()
        ),
        faults:
            "random bytes, deep nesting, huge strings, wrong types, unicode, hostile properties"
                .to_owned(),
        tally: &t,
        recovery: format!(
            "all settled in {}, peak RSS {} MiB",
            secs(took),
            peak_kib / 1024
        ),
    }
    .print();
    note(&format!(
        "outcomes {:?} (sum {outcome_sum}); skipped {:?}; DLQ by reason {:?}; expected linked {want_linked}, skipped {:?}, dead {:?}; {}",
        metrics.outcomes,
        metrics.skipped,
        dead,
        want_skip,
        want_dead,
        scan.describe()
    ));
    note(&format!("kinds: {kinds:?}"));

    // Exactly one outcome per message, and the right one.
    assert_eq!(
        metrics.outcome("retried"),
        0,
        "no body is a transient failure"
    );
    assert_eq!(outcome_sum, TOTAL as u64, "sum of outcomes == sent");
    assert_eq!(
        u64::from(dlq_depth),
        metrics.outcome("dead_lettered"),
        "DLQ == dead_lettered"
    );
    assert_eq!(
        metrics.outcome("linked") + metrics.outcome("already_linked"),
        want_linked
    );
    assert_eq!(
        metrics
            .skipped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect::<BTreeMap<_, _>>(),
        want_skip
    );
    let dead_u64: BTreeMap<String, u64> =
        dead.iter().map(|(k, v)| (k.clone(), *v as u64)).collect();
    assert_eq!(dead_u64, want_dead, "dead letters by reason");
    assert_eq!(t.lost, 0);
    assert_eq!(t.duplicates, 0);
    assert_eq!(t.unexpected_links, 0, "only the expected pairs were linked");
    let distinct: HashSet<_> = events
        .iter()
        .filter_map(|e| match &e.expect {
            Expect::Link { anonymous, user } => Some((anonymous, user)),
            _ => None,
        })
        .collect();
    assert_eq!(scenario.sim.stats().links as usize, distinct.len());
    assert!(
        peak_kib / 1024 < MEMORY_BOUND_MIB,
        "peak RSS {} MiB >= {MEMORY_BOUND_MIB} MiB",
        peak_kib / 1024
    );
    scenario.cleanup().await;
}
