//! The broker the worker needs, stated once, and a look at what a node is
//! before (or instead of) an AMQP session: the `connection.start` a broker
//! sends first names its product and version in its server properties,
//! which lapin does not pass on; something else on the port (HTTP, say)
//! shows itself in its first bytes.

use std::fmt;
use std::time::Duration;

use lapin::types::AMQPValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The oldest RabbitMQ the worker runs on, and why.
pub const MINIMUM: Version = Version {
    major: 3,
    minor: 10,
    patch: 0,
};
pub const NEEDED_FOR: &str = "quorum queues (3.8), at-least-once dead-lettering (3.10), \
                              single active consumers and consumer priorities on them";

/// How long a node gets to show what it is.
pub const LOOK_TIMEOUT: Duration = Duration::from_secs(3);

/// The AMQP 0-9-1 protocol header a client opens with.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// A `connection.start` is a few hundred bytes; anything far larger is not one.
const MAX_START_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `3.13.7`, `4.0.0-rc.1`, `3.12`: the leading numbers; `None` if none.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a node said first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub product: Option<String>,
    pub version: Option<String>,
}

impl ServerHello {
    /// `Err` with the one line to print when the broker is too old. A
    /// product other than RabbitMQ, or no version, is not judged.
    pub fn check(&self, node: &str) -> Result<(), String> {
        let (Some(product), Some(version)) = (&self.product, &self.version) else {
            return Ok(());
        };
        if !product.eq_ignore_ascii_case("RabbitMQ") {
            return Ok(());
        }
        match Version::parse(version) {
            Some(found) if found < MINIMUM => Err(format!(
                "the broker at {node} is RabbitMQ {version}; identity-link-worker needs \
                 RabbitMQ {MINIMUM} or later ({NEEDED_FOR})"
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// An AMQP 0-9-1 broker.
    Amqp(ServerHello),
    /// Something answered, not as an AMQP broker: what it sent, printable.
    NotAmqp(String),
    /// Nothing to learn (refused, silent, cut): the session's own error says it.
    Unknown,
}

/// Opens a TCP connection to `node` (`host:port`), sends the protocol
/// header and reads the first frame, then hangs up.
pub async fn look(node: &str) -> Look {
    let Ok(Ok(stream)) = tokio::time::timeout(LOOK_TIMEOUT, TcpStream::connect(node)).await else {
        return Look::Unknown;
    };
    match tokio::time::timeout(LOOK_TIMEOUT, first_frame(stream)).await {
        Ok(look) => look,
        // A broker greets at once; RabbitMQ's management port (HTTP) waits
        // for a request line it never gets.
        Err(_) => Look::NotAmqp(format!(
            "it accepted the connection but sent no AMQP greeting in {}; a broker sends one at once \
             (is it an HTTP port, such as the management plugin's 15672?)",
            crate::ops::telemetry::duration(LOOK_TIMEOUT)
        )),
    }
}

async fn first_frame(mut stream: TcpStream) -> Look {
    if stream.write_all(PROTOCOL_HEADER).await.is_err() {
        return Look::Unknown;
    }
    let mut head = [0_u8; 7];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if got == 0 {
        return Look::Unknown;
    }
    let head = &head[..got];
    if head.starts_with(b"AMQP") {
        return Look::NotAmqp(
            "it answered with another AMQP protocol version: not an AMQP 0-9-1 broker".into(),
        );
    }
    // A method frame (type 1) on channel 0.
    let size = if got == 7 && head[0] == 1 && head[1] == 0 && head[2] == 0 {
        u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize
    } else {
        let mut more = head.to_vec();
        let mut rest = [0_u8; 120];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut rest)).await
        {
            more.extend_from_slice(&rest[..n]);
        }
        return Look::NotAmqp(format!("it sent \"{}\"", printable(&more)));
    };
    if size > MAX_START_FRAME {
        return Look::NotAmqp(format!("its first frame claims {size} bytes"));
    }
    let mut payload = vec![0_u8; size + 1];
    if stream.read_exact(&mut payload).await.is_err() {
        return Look::Unknown;
    }
    match parse_start(&payload) {
        Some(hello) => Look::Amqp(hello),
        None => Look::NotAmqp("its first frame is not a connection.start".into()),
    }
}

/// The payload (and frame end) of a `connection.start` (class 10, method 10).
fn parse_start(payload: &[u8]) -> Option<ServerHello> {
    let (body, end) = payload.split_at(payload.len().checked_sub(1)?);
    if end != [0xCE] || body.len() < 6 || body[..4] != [0, 10, 0, 10] {
        return None;
    }
    // Skip class, method and the two version octets.
    let (_, table) = lapin::types::parsing::parse_field_table(&body[6..]).ok()?;
    let text = |key: &str| match table.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some(ServerHello {
        product: text("product"),
        version: text("version"),
    })
}

/// What arrived, as one line: control characters shown as spaces, cut short.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(60)
        .collect();
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Option<Version> {
        Version::parse(text)
    }

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(
            v("3.9.29"),
            Some(Version {
                major: 3,
                minor: 9,
                patch: 29
            })
        );
        assert!(v("3.9.29").unwrap() < MINIMUM);
        assert!(v("3.10.0").unwrap() >= MINIMUM);
        // 3.10 is not 3.1: numbers, not text.
        assert!(v("3.10.8").unwrap() > v("3.9.29").unwrap());
        assert!(v("4.0.0-rc.1").unwrap() > MINIMUM);
        assert_eq!(v("3.12"), v("3.12.0"));
        assert_eq!(v("unknown"), None);
    }

    #[test]
    fn only_an_old_rabbitmq_is_refused() {
        let hello = |product: &str, version: &str| ServerHello {
            product: Some(product.into()),
            version: Some(version.into()),
        };
        let error = hello("RabbitMQ", "3.9.29")
            .check("rabbit:5672")
            .unwrap_err();
        assert!(error.contains("rabbit:5672") && error.contains("RabbitMQ 3.9.29"));
        assert!(error.contains("needs RabbitMQ 3.10.0 or later"), "{error}");
        assert!(hello("RabbitMQ", "3.13.7").check("n").is_ok());
        assert!(hello("RabbitMQ", "4.1.0").check("n").is_ok());
        assert!(hello("SomethingElse", "1.0").check("n").is_ok());
        assert!(hello("RabbitMQ", "garbage").check("n").is_ok());
    }

    #[test]
    fn a_start_frame_is_read_and_anything_else_is_not() {
        // class 10, method 10, version 0-9, a table with one long string, mechanisms, locales.
        let mut body = vec![0, 10, 0, 10, 0, 9];
        let entry = [&[7][..], b"version", b"S", &6_u32.to_be_bytes(), b"3.9.29"].concat();
        body.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        body.extend_from_slice(&entry);
        body.push(0xCE);
        let hello = parse_start(&body).unwrap();
        assert_eq!(hello.version.as_deref(), Some("3.9.29"));
        assert_eq!(hello.product, None);
        assert_eq!(parse_start(b"HTTP/1.1 400"), None);
        assert_eq!(
            printable(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"),
            "HTTP/1.1 400 Bad Request content-length: 0"
        );
    }
}
