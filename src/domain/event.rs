//! From message bytes to a link request: parse, don't validate.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::identifiers::{AnonymousId, Blocklist, IdentifierError, JsonPointers, UserId};
use super::outcome::{DeadLetterReason, SkipReason};

/// What the broker tells us about a message besides its body.
#[derive(Debug, Clone, Default)]
pub struct EventMeta {
    /// AMQP `message_id`, if the producer set one.
    pub message_id: Option<String>,
}

/// A message that should be linked: the pair plus what logs and metrics need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub anonymous: AnonymousId,
    pub user: UserId,
}

/// A message that will not be linked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Skip(SkipReason),
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

/// Everything parsing yields; `event_id` and `occurred_at` are kept even when
/// the message is rejected, for logs and the event-age histogram.
#[derive(Debug, Clone)]
pub struct ParsedEvent {
    pub event_id: Option<String>,
    pub occurred_at: Option<SystemTime>,
    pub result: Result<LinkEvent, Rejection>,
}

/// Parses a message body. Never panics, whatever the bytes.
pub fn parse_event(
    body: &[u8],
    meta: &EventMeta,
    anonymous_pointers: &JsonPointers,
    user_pointers: &JsonPointers,
    blocklist: &Blocklist,
) -> ParsedEvent {
    let mut parsed = ParsedEvent {
        event_id: meta.message_id.clone().filter(|id| !id.is_empty()),
        occurred_at: None,
        result: Err(Rejection::Skip(SkipReason::NoAnonymousIdentifier)),
    };
    let root = match serde_json::from_slice::<Value>(body) {
        Ok(root @ Value::Object(_)) => root,
        Ok(other) => {
            parsed.result = Err(malformed(format!(
                "body is JSON but not an object (found {})",
                kind(&other)
            )));
            return parsed;
        }
        Err(e) => {
            let what = if std::str::from_utf8(body).is_err() {
                "body is not valid UTF-8".to_owned()
            } else {
                format!("body is not valid JSON: {e}")
            };
            parsed.result = Err(malformed(what));
            return parsed;
        }
    };
    if parsed.event_id.is_none() {
        parsed.event_id =
            ["/id", "/eventId", "/event_id"]
                .iter()
                .find_map(|p| match root.pointer(p) {
                    Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                });
    }
    parsed.occurred_at = ["/occurredAt", "/occurred_at", "/timestamp"]
        .iter()
        .find_map(|p| root.pointer(p).and_then(event_time));
    parsed.result = decide(&root, anonymous_pointers, user_pointers, blocklist);
    parsed
}

fn decide(
    root: &Value,
    anonymous_pointers: &JsonPointers,
    user_pointers: &JsonPointers,
    blocklist: &Blocklist,
) -> Result<LinkEvent, Rejection> {
    let user = first_match(root, user_pointers, UserId::from_json)
        .map_err(invalid)?
        .ok_or_else(|| Rejection::DeadLetter {
            reason: DeadLetterReason::MissingUserIdentifier,
            error: "no user identifier at any configured pointer".to_owned(),
        })?;
    let anonymous = first_match(root, anonymous_pointers, AnonymousId::from_json)
        .map_err(invalid)?
        .ok_or(Rejection::Skip(SkipReason::NoAnonymousIdentifier))?;
    if blocklist.contains(anonymous.as_str()) || blocklist.contains(user.as_str()) {
        return Err(Rejection::Skip(SkipReason::BlockedIdentifier));
    }
    if anonymous.as_str() == user.as_str() {
        return Err(Rejection::Skip(SkipReason::SameIdentifier));
    }
    Ok(LinkEvent { anonymous, user })
}

/// The first pointer whose value is present and non-empty decides.
fn first_match<T>(
    root: &Value,
    pointers: &JsonPointers,
    convert: impl Fn(&str, &Value) -> Result<Option<T>, IdentifierError>,
) -> Result<Option<T>, IdentifierError> {
    for pointer in pointers.iter() {
        if let Some(value) = root.pointer(pointer)
            && let Some(found) = convert(pointer, value)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn invalid(error: IdentifierError) -> Rejection {
    Rejection::DeadLetter {
        reason: DeadLetterReason::InvalidIdentifier,
        error: error.to_string(),
    }
}

fn malformed(error: String) -> Rejection {
    Rejection::DeadLetter {
        reason: DeadLetterReason::Malformed,
        error,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// RFC 3339 text, or epoch seconds / milliseconds (told apart by size).
fn event_time(value: &Value) -> Option<SystemTime> {
    match value {
        Value::String(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()?;
            let nanos = t.unix_timestamp_nanos();
            let nanos = u64::try_from(nanos).ok()?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
        }
        Value::Number(n) => {
            let v = n.as_f64()?;
            if !v.is_finite() || v <= 0.0 {
                return None;
            }
            // Epoch seconds stay below 1e11 until the year 5138.
            let secs = if v >= 1e11 { v / 1000.0 } else { v };
            Duration::try_from_secs_f64(secs)
                .ok()
                .map(|d| SystemTime::UNIX_EPOCH + d)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DEFAULT_ANONYMOUS_ID_POINTERS, DEFAULT_BLOCKED_IDENTIFIERS, DEFAULT_USER_ID_POINTERS,
    };
    use serde_json::json;

    fn pointers(list: &str) -> JsonPointers {
        let items: Vec<String> = list.split(',').map(str::to_owned).collect();
        JsonPointers::parse(&items).unwrap()
    }

    fn parse(body: &[u8]) -> ParsedEvent {
        parse_event(
            body,
            &EventMeta::default(),
            &pointers(DEFAULT_ANONYMOUS_ID_POINTERS),
            &pointers(DEFAULT_USER_ID_POINTERS),
            &Blocklist::new(DEFAULT_BLOCKED_IDENTIFIERS.split(',')),
        )
    }

    fn pair(body: serde_json::Value) -> (String, String) {
        let event = parse(body.to_string().as_bytes()).result.unwrap();
        (
            event.anonymous.as_str().to_owned(),
            event.user.as_str().to_owned(),
        )
    }

    fn rejection(body: &[u8]) -> Rejection {
        parse(body).result.unwrap_err()
    }

    fn dead(reason: DeadLetterReason) -> impl Fn(&Rejection) -> bool {
        move |r| matches!(r, Rejection::DeadLetter { reason: got, .. } if *got == reason)
    }

    #[test]
    fn pointer_variants() {
        let want = ("a1".to_owned(), "u1".to_owned());
        assert_eq!(
            pair(json!({"anonymousIdentifier":"a1","userIdentifier":"u1"})),
            want
        );
        assert_eq!(pair(json!({"anonymousId":"a1","userId":"u1"})), want);
        assert_eq!(pair(json!({"anonymous_id":"a1","user_id":"u1"})), want);
        assert_eq!(
            pair(json!({"data":{"anonymousId":"a1","user_id":"u1"}})),
            want
        );
        assert_eq!(
            pair(json!({"context":{"anonymousId":"a1"},"user":{"id":"u1"}})),
            want
        );
        assert_eq!(pair(json!({"anonymousId":"a1","user":{"id":42}})).1, "42");
    }

    #[test]
    fn first_non_empty_pointer_wins() {
        let body =
            json!({"anonymousIdentifier":"","anonymousId":null,"anonymous_id":"a2","userId":"u"});
        assert_eq!(pair(body).0, "a2");
    }

    #[test]
    fn malformed_bodies() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"\"s\"",
            b"\xff\xfe",
            b"",
            b"{\"a\":",
        ] {
            assert!(
                dead(DeadLetterReason::Malformed)(&rejection(body)),
                "{body:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(dead(DeadLetterReason::Malformed)(&rejection(
            deep.as_bytes()
        )));
    }

    #[test]
    fn dead_letter_reasons() {
        assert!(dead(DeadLetterReason::MissingUserIdentifier)(&rejection(
            br#"{"anonymousId":"a"}"#
        )));
        assert!(dead(DeadLetterReason::InvalidIdentifier)(&rejection(
            br#"{"anonymousId":"a","userId":"  "}"#
        )));
        assert!(dead(DeadLetterReason::InvalidIdentifier)(&rejection(
            br#"{"anonymousId":7,"userId":"u"}"#
        )));
        assert!(dead(DeadLetterReason::InvalidIdentifier)(&rejection(
            br#"{"anonymousId":"a","userId":{"x":1}}"#
        )));
        assert!(dead(DeadLetterReason::InvalidIdentifier)(&rejection(
            br#"{"anonymousId":"a\u0000","userId":"u"}"#
        )));
        let long = format!(r#"{{"anonymousId":"{}","userId":"u"}}"#, "a".repeat(513));
        assert!(dead(DeadLetterReason::InvalidIdentifier)(&rejection(
            long.as_bytes()
        )));
    }

    #[test]
    fn skip_reasons() {
        let skip = |body: &[u8]| match rejection(body) {
            Rejection::Skip(reason) => reason,
            other => panic!("expected a skip, got {other:?}"),
        };
        assert_eq!(
            skip(br#"{"userId":"u"}"#),
            SkipReason::NoAnonymousIdentifier
        );
        assert_eq!(
            skip(br#"{"anonymousId":"  ","userId":"u"}"#),
            SkipReason::NoAnonymousIdentifier
        );
        assert_eq!(
            skip(br#"{"anonymousId":"Undefined ","userId":"u"}"#),
            SkipReason::BlockedIdentifier
        );
        assert_eq!(
            skip(br#"{"anonymousId":"a","userId":"null"}"#),
            SkipReason::BlockedIdentifier
        );
        assert_eq!(
            skip(br#"{"anonymousId":"same","userId":"same"}"#),
            SkipReason::SameIdentifier
        );
    }

    #[test]
    fn event_id_and_time() {
        let parsed = parse(br#"{"eventId":"e-1","occurredAt":"2026-01-02T03:04:05Z","anonymousId":"a","userId":"u"}"#);
        let epoch_secs = |parsed: &ParsedEvent| {
            parsed
                .occurred_at
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(parsed.event_id.as_deref(), Some("e-1"));
        assert_eq!(epoch_secs(&parsed), 1_767_323_045);
        let ms = parse(br#"{"timestamp":1767323045000,"anonymousId":"a","userId":"u"}"#);
        assert_eq!(epoch_secs(&ms), 1_767_323_045);
        let meta = EventMeta {
            message_id: Some("m-9".into()),
        };
        let with_meta = parse_event(
            br#"{"id":"e-2"}"#,
            &meta,
            &pointers(DEFAULT_ANONYMOUS_ID_POINTERS),
            &pointers(DEFAULT_USER_ID_POINTERS),
            &Blocklist::new([]),
        );
        assert_eq!(with_meta.event_id.as_deref(), Some("m-9"));
    }
}
