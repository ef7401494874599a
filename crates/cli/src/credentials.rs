//! Credentials, from the environment only. Never logged, never stored.

use std::path::PathBuf;

use backlinks_model::Secret;

use crate::InputError;

/// DataForSEO login and password: `DATAFORSEO_LOGIN` and
/// `DATAFORSEO_PASSWORD`, or `DATAFORSEO_PASSWORD_FILE` (a secrets file,
/// e.g. a Docker or Kubernetes secret).
pub fn api_credentials() -> Result<(String, Secret), InputError> {
    let login = non_empty("DATAFORSEO_LOGIN").ok_or_else(|| {
        InputError("set DATAFORSEO_LOGIN and DATAFORSEO_PASSWORD (or DATAFORSEO_PASSWORD_FILE) to call the API; the demo pipeline needs neither".into())
    })?;
    if non_empty("DATAFORSEO_PASSWORD").is_some() && non_empty("DATAFORSEO_PASSWORD_FILE").is_some()
    {
        return Err(InputError(
            "both DATAFORSEO_PASSWORD and DATAFORSEO_PASSWORD_FILE are set: set only one of them, so it is clear which password is used".into(),
        ));
    }
    if let Some(password) = non_empty("DATAFORSEO_PASSWORD") {
        return Ok((login, Secret::new(password)));
    }
    if let Some(file) = non_empty("DATAFORSEO_PASSWORD_FILE") {
        let path = PathBuf::from(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            InputError(format!(
                "reading DATAFORSEO_PASSWORD_FILE {}: {e}",
                path.display()
            ))
        })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(InputError(format!(
                "DATAFORSEO_PASSWORD_FILE {} is empty",
                path.display()
            )));
        }
        return Ok((login, Secret::new(password)));
    }
    Err(InputError(
        "DATAFORSEO_LOGIN is set but neither DATAFORSEO_PASSWORD nor DATAFORSEO_PASSWORD_FILE is"
            .into(),
    ))
}

/// `DATAFORSEO_BASE_URL`, which overrides the pipeline's `api.base_url`.
pub fn base_url_override() -> Option<String> {
    non_empty("DATAFORSEO_BASE_URL")
}

/// `DATABASE_URL` (may hold the database password, hence a [`Secret`]):
/// a `postgres://` or `postgresql://` URL. Messages never quote it.
pub fn database_url() -> Result<Secret, InputError> {
    let url = non_empty("DATABASE_URL").ok_or_else(|| {
        InputError(
            "set DATABASE_URL (e.g. postgres://user@host:5432/db) to use the Postgres sink".into(),
        )
    })?;
    check_database_scheme(&url)?;
    Ok(Secret::new(url))
}

/// Refuses a URL that is not Postgres' with the reason, naming only its
/// scheme (the rest may hold a password).
fn check_database_scheme(url: &str) -> Result<(), InputError> {
    let Some((scheme, _)) = url.trim().split_once("://") else {
        return Err(InputError(
            "DATABASE_URL is not a URL: give postgres://user:password@host:5432/database".into(),
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "postgres" || scheme == "postgresql" {
        return Ok(());
    }
    let shown: String = scheme
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-.".contains(*c))
        .take(20)
        .collect();
    Err(InputError(format!(
        "DATABASE_URL has the scheme `{shown}`: backlinks writes only to PostgreSQL, so give postgres://user:password@host:5432/database"
    )))
}

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_are_taken_and_the_rest_is_never_quoted() {
        assert!(check_database_scheme("postgres://u@h/db").is_ok());
        assert!(check_database_scheme("PostgreSQL://u@h/db").is_ok());
        let e = check_database_scheme("mysql://u:hunter2@h/db").unwrap_err();
        assert!(e.0.contains("`mysql`") && !e.0.contains("hunter2"), "{e}");
        let e = check_database_scheme("u:hunter2@h/db").unwrap_err();
        assert!(e.0.contains("not a URL") && !e.0.contains("hunter2"), "{e}");
    }
}
