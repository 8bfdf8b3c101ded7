//! The two identifiers and the rules an identifier must meet.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// Longest identifier accepted, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 512;

/// Why a value found at a pointer cannot be an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("{field} at {pointer} is longer than {MAX_IDENTIFIER_BYTES} bytes ({len} bytes)")]
    TooLong {
        field: &'static str,
        pointer: String,
        len: usize,
    },
    #[error("{field} at {pointer} contains control characters")]
    ControlCharacters {
        field: &'static str,
        pointer: String,
    },
    #[error("{field} at {pointer} is only white space")]
    Blank {
        field: &'static str,
        pointer: String,
    },
    #[error("{field} at {pointer} has JSON type {found}, expected {expected}")]
    WrongType {
        field: &'static str,
        pointer: String,
        found: &'static str,
        expected: &'static str,
    },
}

/// The visitor's pre-login identity.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AnonymousId(Box<str>);

/// The authenticated user's identity.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId(Box<str>);

macro_rules! identifier_common {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        // Debug shows the value: identifiers are not secrets, but logs go
        // through `ops::telemetry::ident`, which hashes them by default.
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }
    };
}
identifier_common!(AnonymousId);
identifier_common!(UserId);

fn check_text(field: &'static str, pointer: &str, text: &str) -> Result<(), IdentifierError> {
    if text.len() > MAX_IDENTIFIER_BYTES {
        return Err(IdentifierError::TooLong {
            field,
            pointer: pointer.to_owned(),
            len: text.len(),
        });
    }
    if text.chars().any(char::is_control) {
        return Err(IdentifierError::ControlCharacters {
            field,
            pointer: pointer.to_owned(),
        });
    }
    Ok(())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl AnonymousId {
    /// `Ok(None)` when the value counts as absent (null, empty or white space),
    /// so the next pointer is tried.
    pub fn from_json(pointer: &str, value: &Value) -> Result<Option<Self>, IdentifierError> {
        const FIELD: &str = "anonymous identifier";
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => {
                check_text(FIELD, pointer, s)?;
                Ok(Some(Self(s.as_str().into())))
            }
            other => Err(IdentifierError::WrongType {
                field: FIELD,
                pointer: pointer.to_owned(),
                found: json_type(other),
                expected: "string",
            }),
        }
    }

    /// For callers that hold a plain string (CLI, tests, benchmarks).
    pub fn parse(text: &str) -> Result<Self, IdentifierError> {
        Self::from_json("(argument)", &Value::String(text.to_owned()))?.ok_or(
            IdentifierError::Blank {
                field: "anonymous identifier",
                pointer: "(argument)".into(),
            },
        )
    }
}

impl UserId {
    /// `Ok(None)` for null or empty (try the next pointer). White space only
    /// is invalid rather than absent: the producer sent something, and wrong.
    pub fn from_json(pointer: &str, value: &Value) -> Result<Option<Self>, IdentifierError> {
        const FIELD: &str = "user identifier";
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) if s.trim().is_empty() => Err(IdentifierError::Blank {
                field: FIELD,
                pointer: pointer.to_owned(),
            }),
            Value::String(s) => {
                check_text(FIELD, pointer, s)?;
                Ok(Some(Self(s.as_str().into())))
            }
            // Integer user ids are common (database keys); written in decimal.
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(Self(n.to_string().into()))),
            other => Err(IdentifierError::WrongType {
                field: FIELD,
                pointer: pointer.to_owned(),
                found: json_type(other),
                expected: "string or integer",
            }),
        }
    }

    pub fn parse(text: &str) -> Result<Self, IdentifierError> {
        Self::from_json("(argument)", &Value::String(text.to_owned()))?.ok_or(
            IdentifierError::Blank {
                field: "user identifier",
                pointer: "(argument)".into(),
            },
        )
    }
}

/// An ordered list of RFC 6901 JSON Pointers; the first non-empty match wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointers(Vec<String>);

impl JsonPointers {
    pub fn parse(items: &[String]) -> Result<Self, String> {
        for item in items {
            if !item.starts_with('/') {
                return Err(format!(
                    "`{item}` is not a JSON Pointer (it must start with `/`)"
                ));
            }
            // RFC 6901: `~` must be followed by 0 or 1.
            let mut chars = item.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.peek(), Some('0') | Some('1')) {
                    return Err(format!("`{item}` has a `~` not followed by 0 or 1"));
                }
            }
        }
        Ok(Self(items.to_vec()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// Values buggy clients send as identifiers; compared trimmed and case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocklist(HashSet<String>);

impl Blocklist {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            values
                .into_iter()
                .map(fold)
                .filter(|v| !v.is_empty())
                .collect(),
        )
    }

    /// Compared after NFKC and lowercasing, so full-width, ligature or
    /// upper-case spellings of a placeholder match it too. Only the
    /// comparison folds: the identifier itself is passed on byte for byte.
    pub fn contains(&self, identifier: &str) -> bool {
        // Cheap length bound first: blocklisted values are short (NFKC can
        // grow a string, by at most 18 times for one character, so bound loosely).
        identifier.trim().len() <= 256 && self.0.contains(&fold(identifier))
    }
}

/// NFKC, lowercase, NFKC again (lowercasing can denormalise), trimmed: the
/// NFKC_Casefold idea with Unicode's full lowercase mapping.
fn fold(value: &str) -> String {
    let lowered: String = value.nfkc().flat_map(char::to_lowercase).collect();
    lowered.nfkc().collect::<String>().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anonymous_absent_values_fall_through() {
        for v in [json!(null), json!(""), json!("  \t")] {
            assert_eq!(AnonymousId::from_json("/a", &v), Ok(None));
        }
    }

    #[test]
    fn anonymous_rejects_integers_and_control_characters() {
        assert!(matches!(
            AnonymousId::from_json("/a", &json!(12)),
            Err(IdentifierError::WrongType { .. })
        ));
        assert!(matches!(
            AnonymousId::from_json("/a", &json!("a\u{0007}b")),
            Err(IdentifierError::ControlCharacters { .. })
        ));
    }

    #[test]
    fn user_accepts_integers_in_decimal() {
        let id = UserId::from_json("/u", &json!(12345678901_u64))
            .unwrap()
            .unwrap();
        assert_eq!(id.as_str(), "12345678901");
        assert!(UserId::from_json("/u", &json!(1.5)).is_err());
        assert!(UserId::from_json("/u", &json!(true)).is_err());
    }

    #[test]
    fn user_white_space_is_invalid_not_absent() {
        assert!(matches!(
            UserId::from_json("/u", &json!("   ")),
            Err(IdentifierError::Blank { .. })
        ));
        assert_eq!(UserId::from_json("/u", &json!("")), Ok(None));
    }

    #[test]
    fn length_limit_is_in_bytes() {
        let ok = "é".repeat(256); // 512 bytes
        assert!(AnonymousId::from_json("/a", &json!(ok)).unwrap().is_some());
        let too_long = format!("{ok}x");
        assert!(matches!(
            AnonymousId::from_json("/a", &json!(too_long)),
            Err(IdentifierError::TooLong { len: 513, .. })
        ));
    }

    #[test]
    fn blocklist_is_trimmed_and_case_insensitive() {
        let list = Blocklist::new(["undefined", "[object Object]", "0"]);
        assert!(list.contains(" UNDEFINED "));
        assert!(list.contains("[object object]"));
        assert!(list.contains("0"));
        assert!(!list.contains("00"));
        assert!(!list.contains("user-1"));
        // Full-width, mathematical and ligature spellings fold to the entry.
        assert!(list.contains("ｕｎｄｅｆｉｎｅｄ"));
        assert!(list.contains("ＵＮＤＥＦＩＮＥＤ"));
        assert!(list.contains("𝐮𝐧𝐝𝐞𝐟𝐢𝐧𝐞𝐝"));
        assert!(list.contains("\u{2003}undefined\u{3000}"));
        assert!(Blocklist::new(["ﬁ"]).contains("FI"));
        assert!(!list.contains("undefined-1"));
    }

    #[test]
    fn pointers_must_be_rfc6901() {
        assert!(JsonPointers::parse(&["/a/b".into(), "/c~1d".into()]).is_ok());
        assert!(JsonPointers::parse(&["a".into()]).is_err());
        assert!(JsonPointers::parse(&["/a~2".into()]).is_err());
    }
}
