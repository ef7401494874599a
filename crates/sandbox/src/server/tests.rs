//! The server against a real HTTP client on 127.0.0.1.

use std::collections::HashSet;
use std::time::Duration;

use backlinks_model::api::{Envelope, SummaryResult, decode_envelope};
use serde_json::{Value, json};

use super::*;
use crate::{
    BACKLINKS_ITEM_COST, BACKLINKS_TASK_COST, Faults, SUMMARY_TASK_COST, ServedSummary,
    backlinks_total, served_backlink, served_summary,
};

const PATH: &str = "/v3/backlinks/summary/live";
const BACKLINKS_PATH: &str = "/v3/backlinks/backlinks/live";
const LOGIN: &str = "tester@example.com";
const PASSWORD: &str = "Pa55-w0rd:with-colon";

async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(
        SandboxConfig {
            login: LOGIN.into(),
            password: PASSWORD.into(),
            keep_log: true,
            ..config
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("sandbox starts")
}

/// A POST with the right credentials; returns the HTTP status and body.
async fn post(sandbox: &Sandbox, body: impl Into<reqwest::Body>) -> (u16, Vec<u8>) {
    post_as(sandbox, PATH, Some((LOGIN, PASSWORD)), body).await
}

async fn post_as(
    sandbox: &Sandbox,
    path: &str,
    credentials: Option<(&str, &str)>,
    body: impl Into<reqwest::Body>,
) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", sandbox.base_url()))
        .header("content-type", "application/json")
        .body(body);
    if let Some((login, password)) = credentials {
        request = request.basic_auth(login, Some(password));
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

fn task_body(task: Value) -> String {
    json!([task]).to_string()
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn a_good_request_gets_the_served_item() {
    let sandbox = start(SandboxConfig::default()).await;
    assert!(sandbox.base_url().starts_with("http://127.0.0.1:"));
    assert!(!sandbox.base_url().ends_with('/'));
    let (status, body) = post(
        &sandbox,
        task_body(json!({"target": "example.com", "tag": "t-1", "internal_list_limit": 10})),
    )
    .await;
    assert_eq!(status, 200);
    let env = parse(&body);
    assert_eq!(env["status_code"], 20000);
    assert_eq!(env["status_message"], "Ok.");
    assert_eq!(
        (env["tasks_count"].clone(), env["tasks_error"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(env["cost"], json!(SUMMARY_TASK_COST));
    assert!(env["version"].as_str().unwrap().starts_with("0.1."));
    assert!(env["time"].as_str().unwrap().ends_with(" sec."));
    let task = &env["tasks"][0];
    assert_eq!(task["status_code"], 20000);
    assert_eq!(task["cost"], json!(SUMMARY_TASK_COST));
    assert_eq!(task["result_count"], 1);
    assert_eq!(task["path"], json!(["v3", "backlinks", "summary", "live"]));
    assert_eq!(task["id"].as_str().unwrap().len(), 36);
    let data = &task["data"];
    assert_eq!(
        (
            &data["api"],
            &data["function"],
            &data["se_type"],
            &data["target"],
            &data["tag"],
            &data["internal_list_limit"]
        ),
        (
            &json!("backlinks"),
            &json!("summary"),
            &json!("backlinks"),
            &json!("example.com"),
            &json!("t-1"),
            &json!(10)
        )
    );
    let ServedSummary::Item(item) = served_summary(42, "example.com") else {
        panic!("an ordinary target gets an item");
    };
    assert_eq!(task["result"], json!([item]));

    // The model decodes it: the sandbox speaks the contract.
    let typed: Envelope<Vec<SummaryResult>> = decode_envelope("summary", &body).expect("decodes");
    let result = &typed.tasks.unwrap()[0].result.clone().unwrap()[0];
    assert_eq!(result.target.as_deref(), Some("example.com"));

    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.ok), (1, 1));
    assert!((stats.cost_charged - SUMMARY_TASK_COST).abs() < 1e-12);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_seed_decides_the_data_and_answers_repeat() {
    let a = start(SandboxConfig {
        seed: 7,
        ..Default::default()
    })
    .await;
    let b = start(SandboxConfig {
        seed: 8,
        ..Default::default()
    })
    .await;
    let body = task_body(json!({"target": "repeat.example.com"}));
    let first = parse(&post(&a, body.clone()).await.1);
    let again = parse(&post(&a, body.clone()).await.1);
    let other = parse(&post(&b, body).await.1);
    assert_eq!(first["tasks"][0]["result"], again["tasks"][0]["result"]);
    assert_ne!(first["tasks"][0]["result"], other["tasks"][0]["result"]);
    assert_ne!(
        first["tasks"][0]["id"], again["tasks"][0]["id"],
        "task ids are unique per answer"
    );
    assert_eq!(
        served_summary(7, "repeat.example.com"),
        served_summary(7, "repeat.example.com")
    );
    assert_ne!(
        served_summary(7, "repeat.example.com"),
        served_summary(8, "repeat.example.com")
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_401_without_echo() {
    let sandbox = start(SandboxConfig::default()).await;
    let body = task_body(json!({"target": "example.com"}));
    let cases: [Option<(&str, &str)>; 4] = [
        Some((LOGIN, "wrong-password")),
        Some(("someone-else", PASSWORD)),
        Some((LOGIN, "Pa55-w0rd")),
        None,
    ];
    for credentials in cases {
        let (status, answer) = post_as(&sandbox, PATH, credentials, body.clone()).await;
        assert_eq!(status, 401);
        let env = parse(&answer);
        assert_eq!(env["status_code"], 40100);
        assert!(
            env["status_message"]
                .as_str()
                .unwrap()
                .starts_with("You are not authorized to access this resource.")
        );
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !text.contains(LOGIN) && !text.contains("wrong-password"),
            "{text}"
        );
    }
    // Malformed Authorization headers are refused, never a crash.
    for header in [
        "Basic",
        "Basic !!!not-base64",
        "Bearer abc",
        "Basic dXNlcm5hbWU=",
        "",
    ] {
        let response = reqwest::Client::new()
            .post(format!("{}{PATH}", sandbox.base_url()))
            .header("authorization", header)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{header}");
    }
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.unauthorized, stats.ok), (9, 9, 0));
    assert_eq!(stats.cost_charged, 0.0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_get_40000_and_no_charge() {
    let sandbox = start(SandboxConfig::default()).await;
    let two = json!([{"target": "a.com"}, {"target": "b.com"}]).to_string();
    let too_large = format!("[{{\"target\": \"{}\"}}]", "a".repeat(MAX_BODY_BYTES));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        two.into_bytes(),
        b"[]".to_vec(),
        b"{\"target\": \"a.com\"}".to_vec(),
        b"not json at all".to_vec(),
        b"[\"a.com\"]".to_vec(),
        vec![0xFF, 0xFE, 0x00, 0x5B],
        Vec::new(),
        too_large.into_bytes(),
        deep.into_bytes(),
    ];
    let n = bodies.len() as u64;
    for body in bodies {
        let (status, answer) = post(&sandbox, body).await;
        assert_eq!(status, 200);
        let env = parse(&answer);
        assert_eq!(env["status_code"], 40000, "{env}");
        assert_eq!(env["cost"], 0);
        assert!(env["tasks"].is_null());
    }
    let (_, answer) = post(
        &sandbox,
        json!([{"target": "a.com"}, {"target": "b.com"}]).to_string(),
    )
    .await;
    assert_eq!(
        parse(&answer)["status_message"],
        "You can set only one task at a time."
    );
    let stats = sandbox.stats();
    assert_eq!(
        (stats.requests, stats.bad_requests, stats.ok),
        (n + 1, n + 1, 0)
    );
    assert_eq!(stats.cost_charged, 0.0);
    // Still serving.
    let (_, answer) = post(&sandbox, task_body(json!({"target": "a.com"}))).await;
    assert_eq!(parse(&answer)["tasks"][0]["status_code"], 20000);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn special_targets_get_their_task_statuses() {
    let sandbox = start(SandboxConfig::default()).await;
    let cases = [
        (
            json!({"target": "noresults.alpha.com"}),
            40102,
            SUMMARY_TASK_COST,
        ),
        (
            json!({"target": "nullresult.beta.org"}),
            20000,
            SUMMARY_TASK_COST,
        ),
        (json!({"target": "badrequest.example.com"}), 40501, 0.0),
        (json!({"target": ""}), 40501, 0.0),
        (json!({"tag": "no target"}), 40501, 0.0),
        (
            json!({"target": "a.com", "internal_list_limit": 5000}),
            40501,
            0.0,
        ),
    ];
    for (task, code, cost) in cases {
        let (status, answer) = post(&sandbox, task_body(task.clone())).await;
        assert_eq!(status, 200);
        let env = parse(&answer);
        assert_eq!(env["status_code"], 20000, "the envelope succeeds: {env}");
        let t = &env["tasks"][0];
        assert_eq!(t["status_code"], code, "{task}");
        assert_eq!(t["cost"], json!(cost), "{task}");
        assert_eq!(env["cost"], json!(cost), "{task}");
        assert!(t["result"].is_null(), "{task}");
        assert_eq!(t["result_count"], 0);
        assert_eq!(env["tasks_error"], u32::from(code != 20000));
    }
    let (_, answer) = post(
        &sandbox,
        task_body(json!({"target": "badrequest.example.com"})),
    )
    .await;
    assert_eq!(
        parse(&answer)["tasks"][0]["status_message"],
        "Invalid Field: 'target'."
    );
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.ok, stats.bad_requests), (7, 2, 5));
    assert!((stats.cost_charged - 2.0 * SUMMARY_TASK_COST).abs() < 1e-12);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn over_the_rolling_cap_answers_40202() {
    let sandbox = start(SandboxConfig {
        requests_per_minute: 3,
        rate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let (status, answer) =
            post(&sandbox, task_body(json!({"target": format!("t{i}.com")}))).await;
        assert_eq!(status, 200);
        let env = parse(&answer);
        codes.push(env["status_code"].as_i64().unwrap());
        if env["status_code"] == 40202 {
            assert_eq!(
                (env["tasks_count"].clone(), env["cost"].clone()),
                (json!(0), json!(0))
            );
            assert!(
                env["status_message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Rate-limit exceeded.")
            );
        }
    }
    assert_eq!(codes, [20000, 20000, 20000, 40202, 40202]);
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.ok, stats.rate_limited), (5, 3, 2));
    assert!((stats.cost_charged - 3.0 * SUMMARY_TASK_COST).abs() < 1e-12);
    let log = sandbox.log();
    assert_eq!(log[4].target.as_deref(), Some("t4.com"));
    assert_eq!(log[4].status_code, Some(40202));
    // Processed requests carry their task; refused ones do not.
    assert!(
        log[0]
            .task
            .as_deref()
            .is_some_and(|t| t.contains("\"target\":\"t0.com\"")),
        "{:?}",
        log[0].task
    );
    assert_eq!(log[4].task, None);
    sandbox.shutdown().await;
}

/// The status code and the rate-limit headers of an answer to `body`,
/// sent with `credentials`.
async fn quota(
    sandbox: &Sandbox,
    credentials: (&str, &str),
    body: &str,
) -> (i64, Option<u32>, Option<u32>) {
    let response = reqwest::Client::new()
        .post(format!("{}{PATH}", sandbox.base_url()))
        .basic_auth(credentials.0, Some(credentials.1))
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().parse::<u32>().unwrap())
    };
    let (limit, remaining) = (header("X-RateLimit-Limit"), header("X-RateLimit-Remaining"));
    let env = parse(&response.bytes().await.unwrap());
    (env["status_code"].as_i64().unwrap(), limit, remaining)
}

#[tokio::test]
async fn answers_announce_the_limit_and_what_is_left_of_it() {
    let sandbox = start(SandboxConfig {
        requests_per_minute: 3,
        ..Default::default()
    })
    .await;
    let good = task_body(json!({"target": "a.com"}));
    let me = (LOGIN, PASSWORD);
    assert_eq!(quota(&sandbox, me, &good).await, (20000, Some(3), Some(2)));
    // A malformed request is admitted (and counted) too.
    assert_eq!(
        quota(&sandbox, me, "[1, 2]").await,
        (40000, Some(3), Some(1))
    );
    assert_eq!(quota(&sandbox, me, &good).await, (20000, Some(3), Some(0)));
    assert_eq!(quota(&sandbox, me, &good).await, (40202, Some(3), Some(0)));
    // Nothing is announced to a caller who is not the account.
    assert_eq!(
        quota(&sandbox, (LOGIN, "wrong"), &good).await,
        (40100, None, None)
    );
    sandbox.shutdown().await;

    // A shortened window announces the per-minute rate it stands for.
    let sandbox = start(SandboxConfig {
        requests_per_minute: 4,
        rate_window: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    assert_eq!(
        quota(&sandbox, me, &good).await,
        (20000, Some(120), Some(90))
    );
    sandbox.shutdown().await;

    // Off, or without a cap: no headers.
    for config in [
        SandboxConfig {
            rate_limit_headers: false,
            ..Default::default()
        },
        SandboxConfig {
            requests_per_minute: 0,
            ..Default::default()
        },
    ] {
        let sandbox = start(config).await;
        assert_eq!(quota(&sandbox, me, &good).await, (20000, None, None));
        sandbox.shutdown().await;
    }
}

#[tokio::test]
async fn refusals_before_the_window_announce_what_it_holds() {
    let sandbox = start(SandboxConfig {
        requests_per_minute: 10,
        max_in_flight: 1,
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let good = task_body(json!({"target": "a.com"}));
    let me = (LOGIN, PASSWORD);
    let (first, second) = tokio::join!(quota(&sandbox, me, &good), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        quota(&sandbox, me, &good).await
    });
    assert_eq!(first, (20000, Some(10), Some(9)));
    // Refused for being one too many in flight: not counted.
    assert_eq!(second, (40209, Some(10), Some(9)));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_short_window_admits_again_once_it_has_passed() {
    let sandbox = start(SandboxConfig {
        requests_per_minute: 1,
        rate_window: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let body = task_body(json!({"target": "a.com"}));
    assert_eq!(
        parse(&post(&sandbox, body.clone()).await.1)["status_code"],
        20000
    );
    assert_eq!(
        parse(&post(&sandbox, body.clone()).await.1)["status_code"],
        40202
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(parse(&post(&sandbox, body).await.1)["status_code"], 20000);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_account_refusal_answers_every_request_once_due() {
    for code in [40203, 40204, 40205, 40206, 40207] {
        let sandbox = start(SandboxConfig {
            account_refusal: Some(crate::AccountRefusal {
                status_code: code,
                after: 2,
            }),
            ..Default::default()
        })
        .await;
        let body = task_body(json!({"target": "a.com"}));
        let mut codes = Vec::new();
        for _ in 0..4 {
            let (status, answer) = post(&sandbox, body.clone()).await;
            assert_eq!(status, 200);
            let env = parse(&answer);
            codes.push(env["status_code"].as_i64().unwrap());
            if env["status_code"] == code {
                assert_eq!(
                    (env["tasks_count"].clone(), env["cost"].clone()),
                    (json!(0), json!(0))
                );
                assert!(!env["status_message"].as_str().unwrap().is_empty());
            }
        }
        assert_eq!(codes, [20000, 20000, code, code], "{code}");
        // Wrong credentials are still told so first.
        let (status, _) = post_as(&sandbox, PATH, Some((LOGIN, "wrong")), body).await;
        assert_eq!(status, 401);
        let stats = sandbox.stats();
        assert_eq!(
            (
                stats.requests,
                stats.ok,
                stats.account_refused,
                stats.cost_charged
            ),
            (5, 2, 2, 2.0 * SUMMARY_TASK_COST),
            "{code}"
        );
        assert_eq!(sandbox.log()[3].status_code, Some(code));
        sandbox.shutdown().await;
    }
    let messages: Vec<String> = [40203, 40204, 40205, 40206, 40207]
        .into_iter()
        .map(|code| {
            Error::AccountRefused {
                path: PATH.into(),
                code,
            }
            .status_message()
        })
        .collect();
    assert!(messages[0].contains("daily spending limit"), "{messages:?}");
    assert!(messages[4].contains("not whitelisted"), "{messages:?}");
    let distinct: HashSet<&String> = messages.iter().collect();
    assert_eq!(distinct.len(), 5, "{messages:?}");
}

#[tokio::test]
async fn over_max_in_flight_answers_40209() {
    let sandbox = start(SandboxConfig {
        max_in_flight: 1,
        latency: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let body = task_body(json!({"target": "a.com"}));
    let (a, b) = tokio::join!(post(&sandbox, body.clone()), post(&sandbox, body.clone()));
    let mut codes = [a, b].map(|(_, answer)| parse(&answer)["status_code"].as_i64().unwrap());
    codes.sort_unstable();
    assert_eq!(codes, [20000, 40209]);
    let stats = sandbox.stats();
    assert_eq!((stats.ok, stats.too_many_in_flight), (1, 1));
    // The place is given back.
    assert_eq!(parse(&post(&sandbox, body).await.1)["status_code"], 20000);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn truncated_answers_do_not_parse_but_are_charged() {
    let sandbox = start(SandboxConfig {
        faults: Faults {
            truncated_json: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (status, body) = post(&sandbox, task_body(json!({"target": "a.com"}))).await;
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    assert!(
        serde_json::from_slice::<Value>(&body).is_err(),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let stats = sandbox.stats();
    assert_eq!((stats.injected_faults, stats.ok), (1, 0));
    assert!((stats.cost_charged - SUMMARY_TASK_COST).abs() < 1e-12);
    assert_eq!(sandbox.log()[0].fault, Some(FaultKind::TruncatedJson));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn injected_errors_are_not_charged() {
    for (faults, http, code) in [
        (
            Faults {
                http_500: 1.0,
                ..Default::default()
            },
            500,
            None,
        ),
        (
            Faults {
                envelope_50000: 1.0,
                ..Default::default()
            },
            200,
            Some(50000),
        ),
        (
            Faults {
                rate_limit_storm: 1.0,
                ..Default::default()
            },
            200,
            Some(40202),
        ),
    ] {
        let sandbox = start(SandboxConfig {
            faults,
            ..Default::default()
        })
        .await;
        for _ in 0..3 {
            let (status, body) = post(&sandbox, task_body(json!({"target": "a.com"}))).await;
            assert_eq!(status, http, "{faults:?}");
            match code {
                Some(code) => {
                    let env = parse(&body);
                    assert_eq!(env["status_code"], code);
                    assert!(env["tasks"].is_null());
                }
                None => assert_eq!(body, b"Internal Server Error"),
            }
        }
        let stats = sandbox.stats();
        assert_eq!(
            (stats.requests, stats.injected_faults, stats.ok),
            (3, 3, 0),
            "{faults:?}"
        );
        assert_eq!(
            (stats.rate_limited, stats.cost_charged),
            (0, 0.0),
            "{faults:?}"
        );
        sandbox.shutdown().await;
    }
}

#[tokio::test]
async fn slow_answers_arrive_whole_and_are_charged() {
    let sandbox = start(SandboxConfig {
        faults: Faults {
            slow: 1.0,
            slow_delay: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (_, body) = post(&sandbox, task_body(json!({"target": "a.com"}))).await;
    assert_eq!(parse(&body)["tasks"][0]["status_code"], 20000);
    let stats = sandbox.stats();
    assert_eq!((stats.ok, stats.injected_faults), (1, 1));
    assert!((stats.cost_charged - SUMMARY_TASK_COST).abs() < 1e-12);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn faults_hit_only_well_formed_requests() {
    let sandbox = start(SandboxConfig {
        faults: Faults {
            http_500: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (status, _) = post_as(
        &sandbox,
        PATH,
        Some((LOGIN, "nope")),
        task_body(json!({"target": "a.com"})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = post(&sandbox, "[1, 2]").await;
    assert_eq!(
        (status, parse(&body)["status_code"].clone()),
        (200, json!(40000))
    );
    assert_eq!(sandbox.stats().injected_faults, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn some_of_many_requests_get_each_fault() {
    let sandbox = start(SandboxConfig {
        seed: 3,
        faults: Faults {
            http_500: 0.1,
            envelope_50000: 0.1,
            truncated_json: 0.1,
            rate_limit_storm: 0.02,
            slow: 0.1,
            slow_delay: Duration::from_millis(1),
        },
        storm_length: 2,
        ..Default::default()
    })
    .await;
    for i in 0..200 {
        post(&sandbox, task_body(json!({"target": format!("t{i}.com")}))).await;
    }
    let log = sandbox.log();
    let kinds: HashSet<FaultKind> = log.iter().filter_map(|l| l.fault).collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    let stats = sandbox.stats();
    assert_eq!(
        stats.injected_faults,
        log.iter().filter(|l| l.fault.is_some()).count() as u64
    );
    assert!(
        stats.injected_faults > 40 && stats.injected_faults < 140,
        "{stats:?}"
    );
    let charged: f64 = log.iter().map(|l| l.cost).sum();
    assert!((stats.cost_charged - charged).abs() < 1e-9);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_with_envelopes() {
    let sandbox = start(SandboxConfig::default()).await;
    let (status, body) = post_as(
        &sandbox,
        "/v3/backlinks/nothing/live",
        Some((LOGIN, PASSWORD)),
        "[]",
    )
    .await;
    assert_eq!(
        (status, parse(&body)["status_code"].clone()),
        (404, json!(40400))
    );
    let response = reqwest::get(format!("{}{PATH}", sandbox.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        parse(&response.bytes().await.unwrap())["status_code"],
        40500
    );
    // A trailing slash reaches the endpoint.
    let (status, body) = post_as(
        &sandbox,
        &format!("{PATH}/"),
        Some((LOGIN, PASSWORD)),
        task_body(json!({"target": "a.com"})),
    )
    .await;
    assert_eq!(
        (status, parse(&body)["tasks"][0]["status_code"].clone()),
        (200, json!(20000))
    );
    let stats = sandbox.stats();
    assert_eq!(
        (stats.requests, stats.bad_requests, stats.ok),
        (2, 1, 1),
        "GET is not counted"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_log_records_every_post() {
    let sandbox = start(SandboxConfig::default()).await;
    post(&sandbox, task_body(json!({"target": "a.com"}))).await;
    post(&sandbox, task_body(json!({"target": "noresults.b.com"}))).await;
    post_as(&sandbox, PATH, None, "[]").await;
    let log = sandbox.log();
    assert_eq!(log.len(), 3);
    assert_eq!(
        (
            log[0].path.as_str(),
            log[0].target.as_deref(),
            log[0].status_code,
            log[0].http_status
        ),
        (PATH, Some("a.com"), Some(20000), 200)
    );
    assert_eq!(log[0].cost, SUMMARY_TASK_COST);
    assert_eq!(
        (log[1].status_code, log[1].cost),
        (Some(40102), SUMMARY_TASK_COST)
    );
    assert_eq!(
        (log[2].http_status, log[2].status_code, log[2].cost),
        (401, Some(40100), 0.0)
    );
    sandbox.shutdown().await;

    let quiet = Sandbox::start(SandboxConfig::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (status, _) = post_as(
        &quiet,
        PATH,
        Some(("sandbox", "sandbox")),
        task_body(json!({"target": "a.com"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(quiet.log().is_empty());
    assert_eq!(quiet.stats().ok, 1);
    quiet.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sandbox = start(SandboxConfig::default()).await;
    let url = format!("{}{PATH}", sandbox.base_url());
    post(&sandbox, task_body(json!({"target": "a.com"}))).await;
    sandbox.shutdown().await;
    let after = reqwest::Client::new().post(url).body("[]").send().await;
    assert!(after.is_err(), "the port no longer answers");
}

#[tokio::test]
async fn concurrent_requests_are_all_counted() {
    let sandbox = start(SandboxConfig {
        latency: Duration::from_millis(5),
        latency_jitter: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..25 {
        let request = client
            .post(format!("{}{PATH}", sandbox.base_url()))
            .basic_auth(LOGIN, Some(PASSWORD))
            .body(task_body(json!({"target": format!("c{i}.com")})));
        posts.spawn(async move { request.send().await.unwrap().bytes().await.unwrap() });
    }
    let mut ids = HashSet::new();
    while let Some(body) = posts.join_next().await {
        ids.insert(
            parse(&body.unwrap())["tasks"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 25, "unique task ids");
    let stats = sandbox.stats();
    assert_eq!(
        (stats.requests, stats.ok, stats.too_many_in_flight),
        (25, 25, 0)
    );
    assert!((stats.cost_charged - 25.0 * SUMMARY_TASK_COST).abs() < 1e-9);
    sandbox.shutdown().await;
}

/// A backlinks/live task; returns the parsed envelope.
async fn backlinks(sandbox: &Sandbox, task: Value) -> Value {
    let (status, body) = post_as(
        sandbox,
        BACKLINKS_PATH,
        Some((LOGIN, PASSWORD)),
        task_body(task),
    )
    .await;
    assert_eq!(status, 200);
    parse(&body)
}

fn page_cost(items: usize) -> f64 {
    BACKLINKS_TASK_COST + BACKLINKS_ITEM_COST * items as f64
}

#[tokio::test]
async fn backlinks_pages_cover_the_list_and_cost_per_item() {
    let sandbox = start(SandboxConfig::default()).await;
    let target = "items2500.example.com";
    let mut served = Vec::new();
    let mut sizes = Vec::new();
    for offset in [0, 1000, 2000, 3000] {
        let env = backlinks(
            &sandbox,
            json!({"target": target, "limit": 1000, "offset": offset, "tag": "p"}),
        )
        .await;
        let task = &env["tasks"][0];
        assert_eq!(task["status_code"], 20000, "{offset}");
        assert_eq!(
            task["path"],
            json!(["v3", "backlinks", "backlinks", "live"])
        );
        assert_eq!(
            (
                &task["data"]["function"],
                &task["data"]["offset"],
                &task["data"]["tag"]
            ),
            (&json!("backlinks"), &json!(offset), &json!("p"))
        );
        assert_eq!(task["result_count"], 1);
        let result = &task["result"][0];
        let items = result["items"].as_array().expect("items");
        assert_eq!(result["total_count"], 2500);
        assert_eq!(result["items_count"], items.len());
        let cost = task["cost"].as_f64().expect("cost");
        assert!((cost - page_cost(items.len())).abs() < 1e-12, "{cost}");
        assert_eq!(env["cost"], task["cost"]);
        sizes.push(items.len());
        served.extend(items.iter().cloned());
    }
    assert_eq!(sizes, [1000, 1000, 500, 0]);
    assert_eq!(served.len() as u64, backlinks_total(42, target, "as_is"));
    for (position, item) in served.iter().enumerate() {
        assert_eq!(item, &served_backlink(42, target, "as_is", position as u64));
    }
    let distinct: HashSet<String> = served.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), 2500);

    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.ok), (4, 4));
    let expected = page_cost(1000) * 2.0 + page_cost(500) + page_cost(0);
    assert!((stats.cost_charged - expected).abs() < 1e-9, "{stats:?}");
    let log = sandbox.log();
    assert_eq!(log[0].path, BACKLINKS_PATH);
    assert_eq!(log[0].target.as_deref(), Some(target));
    assert!((log[2].cost - page_cost(500)).abs() < 1e-12);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn backlinks_tokens_page_past_the_offset_limit() {
    let sandbox = start(SandboxConfig::default()).await;
    let target = "items30000.example.com";
    let env = backlinks(&sandbox, json!({"target": target, "offset": 20001})).await;
    let task = &env["tasks"][0];
    assert_eq!(task["status_code"], 40501);
    assert_eq!(
        task["status_message"],
        "Invalid Field: 'offset'. Maximum value is 20000; use search_after_token"
    );
    assert_eq!(
        (&task["cost"], &env["tasks_error"]),
        (&json!(0.0), &json!(1))
    );
    assert!(task["result"].is_null());

    let env = backlinks(
        &sandbox,
        json!({"target": target, "offset": 20000, "limit": 1000}),
    )
    .await;
    let token = env["tasks"][0]["result"][0]["search_after_token"]
        .as_str()
        .expect("a token on a full page")
        .to_owned();
    let env = backlinks(
        &sandbox,
        json!({"target": target, "limit": 1000, "search_after_token": token}),
    )
    .await;
    let task = &env["tasks"][0];
    assert_eq!(task["data"]["search_after_token"], json!(token));
    let items = task["result"][0]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1000);
    assert_eq!(items[0], served_backlink(42, target, "as_is", 21_000));

    // An edited token, or one of another target, is refused and not charged.
    let edited = format!("x{token}");
    for (bad_target, bad_token) in [
        (target, edited.as_str()),
        ("items30000.example.org", token.as_str()),
    ] {
        let env = backlinks(
            &sandbox,
            json!({"target": bad_target, "search_after_token": bad_token}),
        )
        .await;
        assert_eq!(env["tasks"][0]["status_code"], 40501);
        assert_eq!(
            env["tasks"][0]["status_message"],
            "Invalid Field: 'search_after_token'."
        );
    }
    let stats = sandbox.stats();
    assert_eq!((stats.ok, stats.bad_requests), (2, 3));
    assert!(
        (stats.cost_charged - 2.0 * page_cost(1000)).abs() < 1e-9,
        "{stats:?}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn backlinks_special_targets_answer_as_the_api_does() {
    let sandbox = start(SandboxConfig::default()).await;
    let env = backlinks(&sandbox, json!({"target": "items0.example.org"})).await;
    let result = &env["tasks"][0]["result"][0];
    assert_eq!(
        (&result["total_count"], &result["items"]),
        (&json!(0), &json!([]))
    );
    let env = backlinks(&sandbox, json!({"target": "noresults.example.com"})).await;
    assert_eq!(env["tasks"][0]["status_code"], 40102);
    assert!(env["tasks"][0]["result"].is_null());
    let env = backlinks(&sandbox, json!({"target": "badrequest.example.com"})).await;
    assert_eq!(env["tasks"][0]["status_code"], 40501);
    let env = backlinks(
        &sandbox,
        json!({"target": "failat2500.items5000.example.com", "offset": 3000}),
    )
    .await;
    assert_eq!(
        (
            &env["tasks"][0]["status_code"],
            &env["tasks"][0]["status_message"]
        ),
        (&json!(40501), &json!("Invalid Field: 'target'."))
    );
    let stats = sandbox.stats();
    assert_eq!((stats.ok, stats.bad_requests), (2, 2));
    assert!((stats.cost_charged - 2.0 * BACKLINKS_TASK_COST).abs() < 1e-12);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn backlinks_share_the_limits_and_faults() {
    let sandbox = start(SandboxConfig {
        faults: Faults {
            truncated_json: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (status, body) = post_as(
        &sandbox,
        BACKLINKS_PATH,
        Some((LOGIN, PASSWORD)),
        task_body(json!({"target": "items700.example.com", "limit": 1000})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    let stats = sandbox.stats();
    assert_eq!((stats.injected_faults, stats.ok), (1, 0));
    assert!(
        (stats.cost_charged - page_cost(700)).abs() < 1e-12,
        "charged all the same"
    );
    let (status, _) = post_as(
        &sandbox,
        BACKLINKS_PATH,
        Some((LOGIN, "wrong")),
        task_body(json!({"target": "a.com"})),
    )
    .await;
    assert_eq!(status, 401);
    sandbox.shutdown().await;

    let capped = start(SandboxConfig {
        requests_per_minute: 1,
        ..Default::default()
    })
    .await;
    let task = json!({"target": "items5.example.com"});
    assert_eq!(backlinks(&capped, task.clone()).await["status_code"], 20000);
    let env = backlinks(&capped, task).await;
    assert_eq!(
        (&env["status_code"], &env["cost"]),
        (&json!(40202), &json!(0))
    );
    capped.shutdown().await;
}
