//! The embedded sandbox: a pipeline with a `[sandbox]` section runs
//! against an in-process imitation of the API (no account needed). Built
//! with the default `sandbox` feature; a production build without it
//! (`--no-default-features`) refuses such a pipeline.

use backlinks_pipeline::Api;
use backlinks_pipeline::config::RawSandbox;

#[cfg(feature = "sandbox")]
pub type Embedded = backlinks_sandbox::Sandbox;

#[cfg(not(feature = "sandbox"))]
pub enum Embedded {}

/// Starts the in-process sandbox with throwaway credentials.
#[cfg(feature = "sandbox")]
pub async fn start(settings: &RawSandbox) -> anyhow::Result<(Embedded, Api)> {
    use anyhow::Context;
    use backlinks_model::Secret;
    use std::time::Duration;

    let password = format!("{:032x}", rand::random::<u128>());
    let f = &settings.faults;
    let config = backlinks_sandbox::SandboxConfig {
        seed: settings.seed,
        login: "demo".into(),
        password: password.clone(),
        requests_per_minute: settings.requests_per_minute,
        max_in_flight: settings.max_in_flight,
        latency: Duration::from_millis(settings.latency_ms),
        latency_jitter: Duration::from_millis(settings.latency_jitter_ms),
        faults: backlinks_sandbox::Faults {
            http_500: f.http_500,
            envelope_50000: f.envelope_50000,
            truncated_json: f.truncated_json,
            rate_limit_storm: f.rate_limit_storm,
            slow: f.slow,
            slow_delay: Duration::from_millis(f.slow_delay_ms),
        },
        keep_log: false,
        ..Default::default()
    };
    let sandbox = backlinks_sandbox::Sandbox::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .context("starting the embedded sandbox")?;
    let api = Api {
        base_url: sandbox.base_url(),
        login: "demo".into(),
        password: Secret::new(password),
        label: "embedded sandbox".into(),
    };
    Ok((sandbox, api))
}

/// Without the sandbox feature, a `[sandbox]` pipeline is bad input.
#[cfg(not(feature = "sandbox"))]
pub async fn start(_settings: &RawSandbox) -> anyhow::Result<(Embedded, Api)> {
    Err(crate::InputError(
        "the pipeline has a [sandbox] section, but this build of backlinks has no embedded sandbox (built without the `sandbox` feature); remove the section to call the API"
            .into(),
    )
    .into())
}

/// Stops the sandbox.
pub async fn stop(sandbox: Embedded) {
    #[cfg(feature = "sandbox")]
    sandbox.shutdown().await;
    #[cfg(not(feature = "sandbox"))]
    match sandbox {}
}
