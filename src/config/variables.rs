//! Every `LINKER_*` variable, once: its name, its default and what it means.
//! `run --help` prints this list, the start-up check of unknown names
//! suggests from it, and a test holds `RawEnv` (which parses them) to it.

/// One variable: name, default, meaning. A default in parentheses
/// describes rather than gives a value. (A tuple struct: the interface check
/// reads defaults from the parsing code, not from this list.)
#[derive(Debug, Clone, Copy)]
pub struct Variable(&'static str, &'static str, &'static str);

impl Variable {
    pub fn name(&self) -> &'static str {
        self.0
    }
    pub fn default(&self) -> &'static str {
        self.1
    }
    pub fn meaning(&self) -> &'static str {
        self.2
    }
}

pub const VARIABLES: &[Variable] = &[
    Variable(
        "LINKER_MOS_ENDPOINT_URL",
        "(required)",
        "the Link Identities endpoint URL",
    ),
    Variable(
        "LINKER_MOS_SECRET_KEY",
        "(this or the file, not both)",
        "the MonetizationOS secret key",
    ),
    Variable(
        "LINKER_MOS_SECRET_KEY_FILE",
        "(unset)",
        "a file holding the key; re-read when the key is refused and before each circuit probe",
    ),
    Variable(
        "LINKER_AMQP_URL",
        super::DEFAULT_AMQP_URL,
        "the broker, or a cluster's nodes comma-separated; amqp:// or amqps://",
    ),
    Variable(
        "LINKER_AMQP_CA_FILE",
        "(unset)",
        "PEM CA(s) that sign the broker's certificate (amqps:// only)",
    ),
    Variable(
        "LINKER_AMQP_CLIENT_CERT_FILE",
        "(unset)",
        "client certificate chain for mutual TLS",
    ),
    Variable(
        "LINKER_AMQP_CLIENT_KEY_FILE",
        "(unset)",
        "PKCS#8 PEM key of the client certificate",
    ),
    Variable(
        "LINKER_QUORUM_INITIAL_GROUP_SIZE",
        "(the broker's: every node)",
        "replicas of each quorum queue the worker declares",
    ),
    Variable(
        "LINKER_EXCHANGE",
        "auth.events",
        "the auth service's topic exchange",
    ),
    Variable(
        "LINKER_ROUTING_KEYS",
        "user.signed_up,user.logged_in",
        "bound routing keys; also the event_type label values",
    ),
    Variable(
        "LINKER_QUEUE",
        "identity-linker",
        "the work queue; every other name derives from it",
    ),
    Variable(
        "LINKER_DECLARE_TOPOLOGY",
        "true",
        "false: only check that the topology exists",
    ),
    Variable(
        "LINKER_DELIVERY_LIMIT",
        "20",
        "x-delivery-limit of the work queue",
    ),
    Variable(
        "LINKER_PREFETCH",
        "256",
        "broker prefetch of each consumer, at least 1",
    ),
    Variable(
        "LINKER_PARTITIONS",
        "16",
        "partition queues by visitor, one active consumer each; 0: direct mode",
    ),
    Variable(
        "LINKER_REPLICA_ID",
        "(the host name, else random)",
        "this replica's weight on each partition",
    ),
    Variable(
        "LINKER_ANONYMOUS_ID_POINTERS",
        super::DEFAULT_ANONYMOUS_ID_POINTERS,
        "JSON pointers to the anonymous identifier, first non-empty wins",
    ),
    Variable(
        "LINKER_USER_ID_POINTERS",
        super::DEFAULT_USER_ID_POINTERS,
        "JSON pointers to the user identifier, first non-empty wins",
    ),
    Variable(
        "LINKER_BLOCKED_IDENTIFIERS",
        super::DEFAULT_BLOCKED_IDENTIFIERS,
        "identifiers never linked (replaces the default list)",
    ),
    Variable(
        "LINKER_MAX_BODY_BYTES",
        "65536",
        "larger bodies are dead-lettered body_too_large unparsed",
    ),
    Variable("LINKER_HTTP_TIMEOUT", "5s", "per link call"),
    Variable(
        "LINKER_CONCURRENCY",
        "128",
        "the ceiling of the adaptive limit on calls (and on messages in hand)",
    ),
    Variable(
        "LINKER_MAX_REQUESTS_PER_SECOND",
        "(unset)",
        "a fixed pace of link calls per replica",
    ),
    Variable(
        "LINKER_LINKED_CACHE_TTL",
        "10m",
        "how long a linked pair is remembered",
    ),
    Variable(
        "LINKER_LINKED_CACHE_SIZE",
        "100000",
        "how many pairs are remembered (0: no cache)",
    ),
    Variable(
        "LINKER_IMMEDIATE_RETRIES",
        "3",
        "in-process retries per delivery",
    ),
    Variable(
        "LINKER_RETRY_DELAYS",
        "10s,1m,5m,15m,1h",
        "the delay ladder, one retry queue per step",
    ),
    Variable(
        "LINKER_CIRCUIT_PROBE_INTERVAL",
        "30s",
        "probe period while the circuit is open",
    ),
    Variable(
        "LINKER_CIRCUIT_FAILURE_THRESHOLD",
        "20",
        "transient failures in a row that open the circuit",
    ),
    Variable(
        "LINKER_MAX_HAND_BACKS",
        "10",
        "hand-backs one message may have before it is dead-lettered",
    ),
    Variable(
        "LINKER_HTTP_ADDR",
        "0.0.0.0:9464",
        "/metrics, /healthz, /readyz",
    ),
    Variable("LINKER_LOG_FORMAT", "text", "text or json"),
    Variable(
        "LINKER_LOG_IDENTIFIERS",
        "hashed",
        "hashed, or plain to show identifiers in logs",
    ),
    Variable(
        "LINKER_SHUTDOWN_GRACE",
        "20s",
        "time to finish in-flight messages on SIGTERM",
    ),
];

/// The list as `run --help` shows it.
pub fn help() -> String {
    let width = VARIABLES.iter().map(|v| v.name().len()).max().unwrap_or(0);
    let mut out = String::from("Environment (default, meaning):\n");
    for v in VARIABLES {
        out.push_str(&format!(
            "  {:width$}  {}\n  {:width$}    {}\n",
            v.name(),
            v.default(),
            "",
            v.meaning()
        ));
    }
    out
}

/// Each `LINKER_*` name in `names` that is not a known variable, with the
/// closest known name when one is near enough to be a typo of it.
pub fn unknown<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, Option<&'static str>)> {
    names
        .into_iter()
        .filter(|n| n.starts_with("LINKER_") && !VARIABLES.iter().any(|v| v.name() == *n))
        .map(|n| (n.to_owned(), closest(n)))
        .collect()
}

/// The known name at the smallest edit distance (after the shared
/// `LINKER_`), if at most a third of that length away: a typo, not another word.
fn closest(name: &str) -> Option<&'static str> {
    let tail = |n: &'static str| n.strip_prefix("LINKER_").unwrap_or(n);
    let name = name.strip_prefix("LINKER_").unwrap_or(name);
    VARIABLES
        .iter()
        .map(|v| (distance(name, tail(v.name())), v.name()))
        .min()
        .filter(|(d, _)| *d <= (name.len() / 3).max(2))
        .map(|(_, known)| known)
}

/// Levenshtein distance, with a swap of two neighbours counting once
/// (`ENDPIONT` is one slip from `ENDPOINT`).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0_usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// One sentence for each unknown `LINKER_*` variable in `vars`.
pub fn unknown_notes(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let names: Vec<String> = vars.into_iter().map(|(k, _)| k).collect();
    unknown(names.iter().map(String::as_str))
        .into_iter()
        .map(|(name, suggestion)| match suggestion {
            Some(known) => format!("unknown variable {name} is ignored; did you mean {known}?"),
            None => format!(
                "unknown variable {name} is ignored (`identity-link-worker run --help` lists them)"
            ),
        })
        .collect()
}

/// Logs one warning for each unknown `LINKER_*` variable in `vars` (after
/// the logs are set up): a typo would otherwise leave a default in force
/// without a word.
pub fn warn_unknown(vars: impl IntoIterator<Item = (String, String)>) {
    for note in unknown_notes(vars) {
        tracing::warn!("{note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_gets_a_suggestion_and_a_stranger_none() {
        let found = unknown([
            "LINKER_MOS_ENDPIONT_URL",
            "LINKER_PREFETCH",
            "PATH",
            "LINKER_CONCURENCY",
            "LINKER_SOMETHING_ELSE_ENTIRELY",
        ]);
        assert_eq!(
            found,
            [
                (
                    "LINKER_MOS_ENDPIONT_URL".to_owned(),
                    Some("LINKER_MOS_ENDPOINT_URL")
                ),
                ("LINKER_CONCURENCY".to_owned(), Some("LINKER_CONCURRENCY")),
                ("LINKER_SOMETHING_ELSE_ENTIRELY".to_owned(), None),
            ]
        );
    }

    #[test]
    fn distances() {
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("abc", "acb"), 1);
        assert_eq!(distance("abc", "ab"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn names_are_unique_and_the_help_lists_each_with_its_default() {
        let help = help();
        for (i, v) in VARIABLES.iter().enumerate() {
            assert!(
                VARIABLES[i + 1..].iter().all(|w| w.name() != v.name()),
                "{} twice",
                v.name()
            );
            assert!(
                help.contains(v.name()) && help.contains(v.default()),
                "{}",
                v.name()
            );
        }
    }

    /// The list and the parser agree: each name is a field of `RawEnv`, and
    /// each field is listed.
    #[test]
    fn the_list_is_what_the_parser_reads() {
        let source = include_str!("mod.rs");
        let start = source.find("struct RawEnv {").unwrap();
        let end = start + source[start..].find('}').unwrap();
        let fields: Vec<String> = source[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_suffix(": Option<String>,"))
            .map(|f| format!("LINKER_{}", f.to_uppercase()))
            .collect();
        let mut listed: Vec<String> = VARIABLES.iter().map(|v| v.name().to_owned()).collect();
        let mut read = fields.clone();
        listed.sort();
        read.sort();
        assert_eq!(listed, read);
    }

    /// Setting a variable to the default the list gives changes nothing.
    #[test]
    fn the_listed_defaults_are_the_defaults() {
        let base = vec![
            (
                "LINKER_MOS_ENDPOINT_URL".to_owned(),
                "http://127.0.0.1:1/x".to_owned(),
            ),
            ("LINKER_MOS_SECRET_KEY".to_owned(), "k".to_owned()),
            // Its default may be random.
            ("LINKER_REPLICA_ID".to_owned(), "r".to_owned()),
        ];
        let shown = |c: &super::super::Config| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {}",
                c.broker,
                c.link,
                c.retry,
                c.ops,
                c.events.anonymous_id_pointers,
                c.events.user_id_pointers,
                c.events.max_body_bytes
            )
        };
        let plain = super::super::Config::from_vars(base.clone()).unwrap();
        for v in VARIABLES.iter().filter(|v| !v.default().starts_with('(')) {
            let mut vars = base.clone();
            vars.push((v.name().to_owned(), v.default().to_owned()));
            let set = super::super::Config::from_vars(vars)
                .unwrap_or_else(|e| panic!("{}={}: {e}", v.name(), v.default()));
            assert_eq!(shown(&set), shown(&plain), "{}", v.name());
            assert_eq!(set.events.blocklist, plain.events.blocklist, "{}", v.name());
        }
    }
}
