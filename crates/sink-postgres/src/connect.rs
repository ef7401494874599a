//! Opening the pool without ever showing the database password.

use std::str::FromStr;
use std::time::Duration;

use backlinks_model::Secret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::{Error, Result};

/// How long a caller waits for a free connection of the pool.
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `application_name` the sink's sessions show in `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "backlinks";

/// Parses `url` and opens a pool of at most `max_connections` (at least 1),
/// checking that one connection can be made.
pub(crate) async fn pool(url: &Secret, max_connections: u32) -> Result<PgPool> {
    // The parse error is not shown: its text may quote the URL.
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|_| {
            Error::Connect(
                "the database URL is not valid (expected postgres://user:password@host:port/database)"
                    .into(),
            )
        })?
        .application_name(APPLICATION_NAME);
    let place = describe(&options);
    // One direct connection first: the pool would retry a refused
    // connection until its acquire timeout and then report only that it
    // timed out, while this names the cause at once.
    let probe = options.connect().await.map_err(|e| {
        Error::Connect(redact(
            &format!("cannot connect to {place}: {e}"),
            url.expose(),
        ))
    })?;
    if let Err(e) = probe.close().await {
        tracing::debug!(error = %redact(&e.to_string(), url.expose()), "closing the probe connection");
    }
    Ok(PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// `database d on host:port as user`, without the password.
fn describe(options: &PgConnectOptions) -> String {
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    format!(
        "database {database} on {}:{} as user {user}",
        options.get_host(),
        options.get_port()
    )
}

/// Replaces every form of the URL's password that occurs in `message` by
/// `***`. The messages above are built not to hold it; this is the second
/// lock on that door.
pub(crate) fn redact(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    for password in passwords(url) {
        if !password.is_empty() {
            out = out.replace(&password, "***");
        }
    }
    out
}

/// The password of a URL's user info and of a `password=` query parameter,
/// as written and percent-decoded.
fn passwords(url: &str) -> Vec<String> {
    let mut raw = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some((userinfo, _)) = rest[..authority_end].rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            raw.push(password);
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or_default();
        for pair in query.split('&') {
            if let Some(("password", value)) = pair.split_once('=') {
                raw.push(value);
            }
        }
    }
    let mut all = Vec::new();
    for password in raw {
        all.push(password.to_owned());
        if let Some(decoded) = percent_decode(password) {
            if decoded != password {
                all.push(decoded);
            }
        }
    }
    // Longest first, so a shorter form never cuts a longer one in half.
    all.sort_by_key(|p| std::cmp::Reverse(p.len()));
    all
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password_in_every_form() {
        assert_eq!(
            passwords("postgres://u:p%40ss@h:5432/db?sslmode=disable"),
            vec!["p%40ss".to_owned(), "p@ss".to_owned()]
        );
        assert_eq!(
            passwords("postgres://u@h/db?password=s3cret&x=1"),
            vec!["s3cret".to_owned()]
        );
        assert!(passwords("postgres://u@h/db").is_empty());
    }

    #[test]
    fn redacts_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact(
                "failed for p@ss and p%40ss at h",
                "postgres://u:p%40ss@h/db"
            ),
            "failed for *** and *** at h"
        );
    }

    #[test]
    fn describes_host_database_and_user() {
        let options =
            PgConnectOptions::from_str("postgres://alice:pw@db.example:6543/warehouse").unwrap();
        assert_eq!(
            describe(&options),
            "database warehouse on db.example:6543 as user alice"
        );
    }
}
