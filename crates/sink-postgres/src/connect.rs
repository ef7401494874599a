//! Opening the pool without ever showing the database password.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use backlinks_model::Secret;
use percent_encoding::percent_decode_str;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use url::Url;

use crate::{Error, Result, Timeouts};

/// How long a caller waits for a free connection of the pool.
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `application_name` the sink's sessions show in `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "backlinks";

/// Parses `url` and opens a pool of at most `max_connections` (at least 1),
/// checking that one connection can be made within `timeouts.connect`.
/// Returns the pool and what [`describe`] says of it.
pub(crate) async fn pool(
    url: &Secret,
    max_connections: u32,
    timeouts: Timeouts,
) -> Result<(PgPool, String)> {
    let passwords = Passwords::of(url.expose());
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|e| Error::InvalidUrl {
            // The parse error's text may quote the URL: kept only when the
            // password can be taken out of it.
            source: passwords
                .is_known()
                .then(|| RedactedError::new(&e, &passwords)),
        })?
        .application_name(APPLICATION_NAME);
    let place = passwords.redact(&describe(&options));
    // One direct connection first: the pool would retry a refused
    // connection until its acquire timeout and then report only that it
    // timed out, while this names the cause at once.
    let probe = match tokio::time::timeout(timeouts.connect, options.connect()).await {
        Ok(connected) => connected.map_err(|e| Error::Connect {
            place: place.clone(),
            source: RedactedError::new(&e, &passwords),
        })?,
        Err(_) => {
            return Err(Error::Timeout {
                step: "connecting".into(),
                place,
                after: timeouts.connect,
                setting: Timeouts::CONNECT_SETTING,
            });
        }
    };
    if let Err(e) = probe.close().await {
        tracing::debug!(error = %RedactedError::new(&e, &passwords), "closing the probe connection");
    }
    // A new connection of the pool is opened while a caller waits for
    // one: that wait is bounded too.
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT.max(timeouts.connect))
        .connect_lazy_with(options);
    Ok((pool, place))
}

/// `database d on host:port as user`, without the password.
pub(crate) fn describe(options: &PgConnectOptions) -> String {
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    format!(
        "database {database} on {}:{} as user {user}",
        options.get_host(),
        options.get_port()
    )
}

/// An error of the driver with the database password taken out of its
/// message and out of the messages of its sources, which it keeps as its
/// own chain of sources. It holds their text only, never the driver's
/// error itself, so nothing unchecked can reach a message or a log.
#[derive(Debug, Clone)]
pub struct RedactedError {
    message: String,
    source: Option<Box<RedactedError>>,
}

impl RedactedError {
    /// `error` and its sources, each message redacted.
    fn new(error: &(dyn std::error::Error + 'static), passwords: &Passwords) -> Self {
        Self {
            message: passwords.redact(&error.to_string()),
            source: error
                .source()
                .map(|source| Box::new(Self::new(source, passwords))),
        }
    }
}

impl fmt::Display for RedactedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RedactedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Every form of a database URL's password: the password of its user info
/// and of a `password=` query parameter, as written and decoded.
#[derive(Debug)]
enum Passwords {
    /// Longest first, so a shorter form never cuts a longer one in half.
    Known(Vec<String>),
    /// The URL does not parse, or a password is written in a form none of
    /// the known ones match (escapes mixed with characters that need them):
    /// no message can be checked, so none is shown.
    Unknown,
}

impl Passwords {
    fn of(url: &str) -> Self {
        let Ok(parsed) = Url::parse(url) else {
            return Self::Unknown;
        };
        // As the URL crate writes them (escapes kept, characters that need
        // one escaped), then decoded as the driver decodes them.
        let mut written: Vec<(String, String)> = Vec::new();
        if let Some(password) = parsed.password() {
            let decoded = percent_decode_str(password).decode_utf8_lossy();
            written.push((password.to_owned(), decoded.into_owned()));
        }
        for pair in parsed.query().unwrap_or_default().split('&') {
            let Some((key, decoded)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
                continue;
            };
            if key == "password" {
                let value = pair.split_once('=').map_or("", |(_, value)| value);
                written.push((value.to_owned(), decoded.into_owned()));
            }
        }
        let mut all = Vec::new();
        for (password, decoded) in written {
            if !url.contains(&password) && !url.contains(&decoded) {
                return Self::Unknown;
            }
            all.push(password);
            all.push(decoded);
        }
        all.retain(|p| !p.is_empty());
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        Self::Known(all)
    }

    fn is_known(&self) -> bool {
        matches!(self, Self::Known(_))
    }

    /// `message` with every form of the password replaced by `***`. The
    /// messages of this crate are built not to hold it; this is the second
    /// lock on that door.
    fn redact(&self, message: &str) -> String {
        match self {
            Self::Known(passwords) => {
                let mut out = message.to_owned();
                for password in passwords {
                    out = out.replace(password.as_str(), "***");
                }
                out
            }
            Self::Unknown => {
                "(not shown: it could not be checked for the database password)".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(url: &str) -> Vec<String> {
        match Passwords::of(url) {
            Passwords::Known(all) => all,
            Passwords::Unknown => panic!("{url}: unknown"),
        }
    }

    #[test]
    fn finds_the_password_in_every_form() {
        assert_eq!(
            forms("postgres://u:p%40ss@h:5432/db?sslmode=disable"),
            vec!["p%40ss".to_owned(), "p@ss".to_owned()]
        );
        assert_eq!(
            forms("postgres://u@h/db?password=s3cret&x=1"),
            vec!["s3cret".to_owned()]
        );
        assert_eq!(
            forms("postgres://u:a%2Fb@h/db?x=1&password=c+d%26e"),
            ["c+d%26e", "a%2Fb", "c d&e", "a/b"].map(String::from)
        );
        assert_eq!(
            forms("postgres://u@h/db?pass%77ord=x%79z&&password"),
            ["x%79z", "xyz"].map(String::from)
        );
        assert!(forms("postgres://u@h/db").is_empty());
    }

    #[test]
    fn redacts_the_password_and_keeps_the_rest() {
        assert_eq!(
            Passwords::of("postgres://u:p%40ss@h/db").redact("failed for p@ss and p%40ss at h"),
            "failed for *** and *** at h"
        );
    }

    #[test]
    fn a_password_that_cannot_be_found_withholds_every_message() {
        // An escape next to a character the URL crate escapes: the written
        // form is neither the crate's nor the decoded one.
        for url in ["postgres://u:p%41ä@h/db", "not a url p@ss"] {
            let passwords = Passwords::of(url);
            assert!(!passwords.is_known(), "{url}");
            let shown = passwords.redact(url);
            assert!(
                !shown.contains("p%41") && !shown.contains("p@ss"),
                "{shown}"
            );
        }
    }

    #[test]
    fn every_message_of_the_chain_is_redacted() {
        #[derive(Debug)]
        struct Chained(&'static str, Option<Box<Chained>>);
        impl fmt::Display for Chained {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Chained {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let error = Chained(
            "connecting with hunter2",
            Some(Box::new(Chained("the server said hunter%32", None))),
        );
        let redacted = RedactedError::new(&error, &Passwords::of("postgres://u:hunter%32@h/db"));
        assert_eq!(redacted.to_string(), "connecting with ***");
        let source = std::error::Error::source(&redacted).unwrap();
        assert_eq!(source.to_string(), "the server said ***");
        assert!(source.source().is_none());
        assert!(!format!("{redacted:?}").contains("hunter"));
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
