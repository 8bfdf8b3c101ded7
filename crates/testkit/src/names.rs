//! Private names and the worker's base variables: every test, scenario and
//! benchmark run gets queue and exchange names of its own, so runs can share
//! one broker (and run in parallel) without seeing each other's messages.

/// Worker variables (`LINKER_*`, `RUST_LOG`) as the worker reads them.
pub type Vars = Vec<(String, String)>;

/// `n` random lowercase hex digits (up to 64).
pub fn random_hex(n: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    s.truncate(n);
    s
}

/// A random suffix for private names.
pub fn suffix() -> String {
    random_hex(10)
}

/// The variables every worker needs, with a private queue
/// (`{prefix}-{suffix}`) and exchange (`{prefix}-{suffix}.auth.events`).
pub fn private_vars(prefix: &str, amqp_url: &str, endpoint_url: &str, key: &str) -> Vars {
    let suffix = suffix();
    vec![
        ("LINKER_AMQP_URL".into(), amqp_url.to_owned()),
        ("LINKER_QUEUE".into(), format!("{prefix}-{suffix}")),
        (
            "LINKER_EXCHANGE".into(),
            format!("{prefix}-{suffix}.auth.events"),
        ),
        ("LINKER_MOS_ENDPOINT_URL".into(), endpoint_url.to_owned()),
        ("LINKER_MOS_SECRET_KEY".into(), key.to_owned()),
    ]
}

/// `vars` with each of `overrides` set (replacing an earlier value).
pub fn with(mut vars: Vars, overrides: &[(&str, &str)]) -> Vars {
    for (name, value) in overrides {
        vars.retain(|(k, _)| k != name);
        vars.push(((*name).to_owned(), (*value).to_owned()));
    }
    vars
}

/// `vars` without `name`.
pub fn without(mut vars: Vars, name: &str) -> Vars {
    vars.retain(|(k, _)| k != name);
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_and_names_are_private() {
        let a = private_vars("t", "amqp://x", "http://y", "k");
        let b = private_vars("t", "amqp://x", "http://y", "k");
        assert_ne!(a[1], b[1], "each call has its own queue");
        assert!(a[2].1.starts_with(&format!("{}.", a[1].1)));
        let v = with(a, &[("LINKER_MOS_SECRET_KEY", "other")]);
        let keys: Vec<&str> = v
            .iter()
            .filter(|(k, _)| k == "LINKER_MOS_SECRET_KEY")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(keys, ["other"]);
        assert!(
            without(v, "LINKER_QUEUE")
                .iter()
                .all(|(k, _)| k != "LINKER_QUEUE")
        );
        assert_eq!(random_hex(40).len(), 40);
    }
}
