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

/// `DATABASE_URL` (may hold the database password, hence a [`Secret`]).
pub fn database_url() -> Result<Secret, InputError> {
    non_empty("DATABASE_URL").map(Secret::new).ok_or_else(|| {
        InputError(
            "set DATABASE_URL (e.g. postgres://user@host:5432/db) to use the Postgres sink".into(),
        )
    })
}

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
