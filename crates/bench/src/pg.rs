//! A scratch database on the server of `DATABASE_URL`, created for one
//! benchmark and dropped after it.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::{Error, Result};

/// The server when `DATABASE_URL` is not set (as in the tests).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long to wait for the server before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

/// A database `backlinks_bench_<random>` that exists until [`Scratch::drop_database`].
#[derive(Debug)]
pub struct Scratch {
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// The connection string of the database (may hold the server's
    /// password: never print it).
    pub url: String,
}

/// `url` with its database (path) replaced by `name`.
fn with_database(url: &str, name: &str) -> std::result::Result<String, String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("DATABASE_URL is not a URL: {e}"))?;
    parsed.set_path(name);
    Ok(parsed.to_string())
}

/// A fresh database name: `backlinks_bench_` and 12 random hex digits.
fn fresh_name() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    // The last digits of a v7 id are random; the first are the time.
    format!("backlinks_bench_{}", &id[id.len() - 12..])
}

async fn connect(url: &str) -> std::result::Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

impl Scratch {
    /// Creates the database, or says why Postgres is not usable (`Err`
    /// with a message to print: the benchmark is then skipped).
    pub async fn create() -> std::result::Result<Scratch, String> {
        let admin_url = database_url();
        let mut admin = connect(&admin_url)
            .await
            .map_err(|e| format!("Postgres at DATABASE_URL is unreachable ({e})"))?;
        let name = fresh_name();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name)?;
        Ok(Scratch {
            admin_url,
            name,
            url,
        })
    }

    /// Drops the database (closing sessions still in it).
    pub async fn drop_database(self) -> Result<()> {
        let failed = |source| Error::Database {
            action: format!("dropping database {}", self.name),
            source,
        };
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .map_err(failed)?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .map_err(failed)?;
        let _ = admin.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_url_points_at_the_new_database() {
        let url = with_database(
            "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable",
            "x1",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@127.0.0.1:5432/x1?sslmode=disable");
        assert!(with_database("not a url", "x").is_err());
        let (a, b) = (fresh_name(), fresh_name());
        assert_ne!(a, b);
        assert!(a.starts_with("backlinks_bench_") && a.len() == 28, "{a}");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
}
