//! The `x-linker-*` headers (docs/interface.md, "Headers").

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub const ATTEMPTS: &str = "x-linker-attempts";
pub const REASON: &str = "x-linker-reason";
pub const ERROR: &str = "x-linker-error";
pub const ORIGINAL_EXCHANGE: &str = "x-linker-original-exchange";
pub const ORIGINAL_ROUTING_KEY: &str = "x-linker-original-routing-key";
pub const FAILED_AT: &str = "x-linker-failed-at";
pub const HAND_BACKS: &str = "x-linker-hand-backs";
/// Every header of ours starts with this.
const OURS: &str = "x-linker-";
/// Reason shown for messages the broker dead-lettered itself (`x-delivery-limit`).
pub const DELIVERY_LIMIT_REASON: &str = "delivery_limit";

/// `x-linker-error` is at most 1 KiB.
pub const MAX_ERROR_BYTES: usize = 1024;

pub fn get<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

pub fn get_str(props: &BasicProperties, name: &str) -> Option<String> {
    match get(props, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Any integer type, or digits in a string; `None` when the header is
/// missing or holds anything else, so a caller decides what absence means.
pub fn get_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let value = match get(props, name)? {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()?,
        _ => return None,
    };
    Some(u32::try_from(value.max(0)).unwrap_or(u32::MAX))
}

/// A producer's message, with what only the worker or the broker may write
/// taken out: a producer could otherwise skip the retry ladder
/// (`x-linker-attempts`), pick where a replay publishes
/// (`x-linker-original-*`), or forge the broker's `x-death` history.
/// Applied to every delivery that comes from the producers' exchange.
pub fn from_producer(props: &BasicProperties) -> BasicProperties {
    let Some(table) = props.headers() else {
        return props.clone();
    };
    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = table
        .inner()
        .iter()
        .filter(|(name, _)| !written_by_us_or_the_broker(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if kept.len() == table.inner().len() {
        return props.clone();
    }
    props.clone().with_headers(FieldTable::from(kept))
}

fn written_by_us_or_the_broker(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with(OURS)
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// Where the message first came from: our headers if it already went round
/// a retry queue, else the delivery's own exchange and routing key.
pub fn original_route(
    props: &BasicProperties,
    exchange: &str,
    routing_key: &str,
) -> (String, String) {
    match (
        get_str(props, ORIGINAL_EXCHANGE),
        get_str(props, ORIGINAL_ROUTING_KEY),
    ) {
        (Some(e), Some(r)) => (e, r),
        _ => (exchange.to_owned(), routing_key.to_owned()),
    }
}

/// From the broker's own dead-lettering (`x-death`), the first queue's origin.
pub fn x_death_route(props: &BasicProperties) -> Option<(String, String)> {
    let AMQPValue::FieldArray(deaths) = get(props, "x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().last()? else {
        return None;
    };
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let exchange = first.inner().get("exchange").and_then(text)?;
    let routing_key = match first.inner().get("routing-keys")? {
        AMQPValue::FieldArray(keys) => keys.as_slice().first().and_then(text)?,
        _ => return None,
    };
    Some((exchange, routing_key))
}

pub fn x_death_reason(props: &BasicProperties) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = get(props, "x-death")? else {
        return None;
    };
    deaths.as_slice().iter().find_map(|d| match d {
        AMQPValue::FieldTable(t) => match t.inner().get("reason") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        },
        _ => None,
    })
}

/// Cuts at a character boundary so the header stays valid UTF-8.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// A copy of the original properties with headers set; persistent.
pub fn with_headers(
    props: &BasicProperties,
    set: &[(&str, AMQPValue)],
    remove: &[&str],
) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    let mut map = table.inner().clone();
    for name in remove {
        map.remove(*name);
    }
    for (name, value) in set {
        map.insert(ShortString::from(*name), value.clone());
    }
    table = FieldTable::from(map);
    props.clone().with_headers(table).with_delivery_mode(2)
}

pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

pub fn int(value: u32) -> AMQPValue {
    AMQPValue::LongLongInt(i64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            table.insert(ShortString::from(*name), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn a_producer_cannot_write_our_headers_or_the_brokers() {
        let props = with(&[
            (ATTEMPTS, int(99)),
            (HAND_BACKS, int(99)),
            ("X-Linker-Original-Exchange", text("elsewhere")),
            (ORIGINAL_ROUTING_KEY, text("anything")),
            ("x-death", AMQPValue::FieldArray(Default::default())),
            ("x-first-death-queue", text("q")),
            ("traceparent", text("00-abc")),
        ]);
        let cleaned = from_producer(&props);
        assert_eq!(get_u32(&cleaned, ATTEMPTS), None);
        assert_eq!(get_u32(&cleaned, HAND_BACKS), None);
        assert_eq!(
            original_route(&cleaned, "auth.events", "user.logged_in").0,
            "auth.events"
        );
        assert!(get(&cleaned, "x-death").is_none());
        assert!(get(&cleaned, "x-first-death-queue").is_none());
        assert_eq!(get_str(&cleaned, "traceparent").as_deref(), Some("00-abc"));
    }

    #[test]
    fn a_missing_or_unreadable_count_is_none() {
        assert_eq!(get_u32(&with(&[]), ATTEMPTS), None);
        assert_eq!(get_u32(&with(&[(ATTEMPTS, text("x"))]), ATTEMPTS), None);
        assert_eq!(
            get_u32(&with(&[(ATTEMPTS, text(" 3 "))]), ATTEMPTS),
            Some(3)
        );
        assert_eq!(get_u32(&with(&[(ATTEMPTS, int(2))]), ATTEMPTS), Some(2));
    }
}
