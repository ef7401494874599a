//! The API's response envelope and task objects, as JSON values.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::endpoints::{LiveEndpoint, TaskAnswer};
use crate::json::Json;
use crate::rng::mix;

/// The API version the sandbox claims to be.
pub(crate) const VERSION: &str = "0.1.20250114";

/// `"0.0123 sec."`, the API's way of writing durations.
pub(crate) fn format_time(elapsed: Duration) -> String {
    format!("{:.4} sec.", elapsed.as_secs_f64())
}

/// A task id shaped like the API's (`8-4-4-4-12` hex digits), unique per
/// `n` for a given seed: `n` passes through bijections only.
pub(crate) fn task_id(seed: u64, n: u64) -> String {
    let a = mix(mix(seed ^ 0xA24B_AED4_963E_E407).wrapping_add(n));
    let b = mix(a ^ seed);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

/// An envelope without tasks: a refusal of the whole request (40000,
/// 40100, 40202, 40209, 50000, …). Nothing is charged.
pub(crate) fn refusal(
    status_code: i64,
    message: &str,
    tasks_error: u32,
    elapsed: Duration,
) -> Value {
    json!({
        "version": VERSION,
        "status_code": status_code,
        "status_message": message,
        "time": format_time(elapsed),
        "cost": 0,
        "tasks_count": 0,
        "tasks_error": tasks_error,
        "tasks": null,
    })
}

/// The body of an envelope holding the one task of a live request. The
/// envelope succeeds (20000) even when the task did not: the task carries
/// its own status. Written as text, fields in the API's order, so that a
/// large result is copied once rather than turned into a `Value` tree.
pub(crate) fn single_task(
    endpoint: &dyn LiveEndpoint,
    request: &Map<String, Value>,
    answer: &TaskAnswer,
    id: &str,
    elapsed: Duration,
) -> Vec<u8> {
    let path = endpoint.path();
    let mut data = request.clone();
    data.insert(
        "api".into(),
        json!(path.get(1).copied().unwrap_or_default()),
    );
    data.insert("function".into(), json!(endpoint.function()));
    data.insert("se_type".into(), json!(endpoint.se_type()));
    let data = Value::Object(data).to_string();
    let result_bytes: usize = answer
        .result
        .iter()
        .flatten()
        .map(|element| element.len() + 1)
        .sum();
    let time = format_time(elapsed);
    let mut o = Json::with_capacity(512 + data.len() + result_bytes);
    o.begin_object();
    o.key("version");
    o.str(VERSION);
    o.key("status_code");
    o.int(20000);
    o.key("status_message");
    o.str("Ok.");
    o.key("time");
    o.str(&time);
    o.key("cost");
    o.float(answer.cost);
    o.key("tasks_count");
    o.int(1);
    o.key("tasks_error");
    o.int(i64::from(answer.status_code != 20000));
    o.key("tasks");
    o.begin_array();
    o.begin_object();
    o.key("id");
    o.str(id);
    o.key("status_code");
    o.int(answer.status_code);
    o.key("status_message");
    o.str(&answer.status_message);
    o.key("time");
    o.str(&time);
    o.key("cost");
    o.float(answer.cost);
    o.key("result_count");
    o.uint(answer.result.as_ref().map_or(0, Vec::len) as u64);
    o.key("path");
    o.begin_array();
    for segment in path {
        o.str(segment);
    }
    o.end_array();
    o.key("data");
    o.raw(&data);
    o.key("result");
    match &answer.result {
        Some(elements) => {
            o.begin_array();
            for element in elements {
                o.raw(element);
            }
            o.end_array();
        }
        None => o.null(),
    }
    o.end_object();
    o.end_array();
    o.end_object();
    o.into_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn task_ids_look_like_the_apis_and_never_repeat() {
        let id = task_id(42, 0);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        let ids: HashSet<String> = (0..10_000).map(|n| task_id(42, n)).collect();
        assert_eq!(ids.len(), 10_000);
        assert_ne!(task_id(1, 0), task_id(2, 0));
    }

    #[test]
    fn times_read_like_the_apis() {
        assert_eq!(format_time(Duration::from_micros(12_345)), "0.0123 sec.");
        assert_eq!(format_time(Duration::ZERO), "0.0000 sec.");
    }

    #[test]
    fn a_refusal_has_no_tasks_and_no_cost() {
        let v = refusal(40202, "Rate-limit exceeded.", 0, Duration::ZERO);
        assert_eq!(v["status_code"], 40202);
        assert_eq!(v["cost"], 0);
        assert_eq!(v["tasks_count"], 0);
        assert!(v["tasks"].is_null());
        assert_eq!(v["version"], VERSION);
    }

    #[test]
    fn a_task_envelope_carries_the_answer_and_echoes_the_request() {
        let request = json!({"target": "example.com", "tag": "a \"tag\""});
        let answer = TaskAnswer {
            status_code: 20000,
            status_message: "Ok.".into(),
            cost: 0.05,
            result: Some(vec!["{\"a\":1}".into(), "[2,null]".into()]),
        };
        let body = single_task(
            &crate::endpoints::summary::Summary,
            request.as_object().expect("object"),
            &answer,
            "id-1",
            Duration::from_millis(12),
        );
        let v: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(
            (
                &v["status_code"],
                &v["cost"],
                &v["tasks_count"],
                &v["tasks_error"]
            ),
            (&json!(20000), &json!(0.05), &json!(1), &json!(0))
        );
        let task = &v["tasks"][0];
        assert_eq!(task["id"], "id-1");
        assert_eq!(task["time"], "0.0120 sec.");
        assert_eq!(task["result_count"], 2);
        assert_eq!(task["result"], json!([{"a": 1}, [2, null]]));
        assert_eq!(task["path"], json!(["v3", "backlinks", "summary", "live"]));
        assert_eq!(task["data"]["tag"], "a \"tag\"");
        assert_eq!(task["data"]["function"], "summary");
        assert_eq!(task["data"]["api"], "backlinks");

        let refused = TaskAnswer::invalid_field("limit");
        let body = single_task(
            &crate::endpoints::summary::Summary,
            request.as_object().expect("object"),
            &refused,
            "id-2",
            Duration::ZERO,
        );
        let v: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!((&v["tasks_error"], &v["cost"]), (&json!(1), &json!(0.0)));
        assert!(v["tasks"][0]["result"].is_null());
        assert_eq!(v["tasks"][0]["result_count"], 0);
    }
}
