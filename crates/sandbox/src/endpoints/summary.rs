//! `POST /v3/backlinks/summary/live`: one overview per target.

use serde_json::{Map, Value};

use super::{LiveEndpoint, TaskAnswer, check};
use crate::data::summary_item;

/// What every summary/live task that returns a result (20000 or 40102)
/// costs, in USD. Refused tasks (40501) cost nothing.
pub const SUMMARY_TASK_COST: f64 = 0.02003;

/// What the sandbox serves for a target, exactly: the tests compare stored
/// rows against it value for value. Deterministic from `(seed, target)`.
#[derive(Debug, Clone, PartialEq)]
pub enum ServedSummary {
    /// Task 20000 with `result: [item]`.
    Item(Value),
    /// Task 40102 "No Search Results." with `result: null` (charged).
    NoResults,
    /// Task 20000 with `result: null` (charged). Also what refused targets
    /// (`badrequest.…`, empty) come to: their task 40501 carries
    /// `result: null`.
    NullResult,
}

/// The summary the sandbox serves for `target` under `seed`, independent of
/// request order, time, faults and request options:
///
/// - a target starting with `noresults.` gets [`ServedSummary::NoResults`];
/// - one starting with `nullresult.` gets [`ServedSummary::NullResult`];
/// - one starting with `badrequest.`, or empty, is refused with 40501 (not
///   charged) and returns [`ServedSummary::NullResult`] here;
/// - any other gets a generated [`ServedSummary::Item`].
pub fn served_summary(seed: u64, target: &str) -> ServedSummary {
    if target.starts_with("noresults.") {
        ServedSummary::NoResults
    } else if target.starts_with("nullresult.") || refused(target) {
        ServedSummary::NullResult
    } else {
        ServedSummary::Item(summary_item(seed, target))
    }
}

fn refused(target: &str) -> bool {
    target.trim().is_empty() || target.starts_with("badrequest.")
}

/// The summary/live endpoint.
#[derive(Debug)]
pub(crate) struct Summary;

impl Summary {
    /// The first invalid field of a task, if any. Options are checked as
    /// the API checks them but do not change the data.
    fn invalid_field(task: &Map<String, Value>) -> Option<&'static str> {
        let target_ok = matches!(task.get("target"), Some(Value::String(t)) if !refused(t));
        if !target_ok {
            return Some("target");
        }
        check::bool(task, "include_subdomains")
            .and_then(|()| check::bool(task, "include_indirect_links"))
            .and_then(|()| check::bool(task, "exclude_internal_backlinks"))
            .and_then(|()| check::int_in(task, "internal_list_limit", 1..=1000))
            .and_then(|()| check::one_of(task, "backlinks_status_type", &["all", "live", "lost"]))
            .and_then(|()| check::filters(task, "backlinks_filters"))
            .and_then(|()| check::one_of(task, "rank_scale", &["one_hundred", "one_thousand"]))
            .and_then(|()| check::short_string(task, "tag", 255))
            .err()
    }
}

impl LiveEndpoint for Summary {
    fn path(&self) -> &'static [&'static str] {
        &["v3", "backlinks", "summary", "live"]
    }

    fn function(&self) -> &'static str {
        "summary"
    }

    fn answer(&self, seed: u64, task: &Map<String, Value>) -> TaskAnswer {
        if let Some(field) = Self::invalid_field(task) {
            return TaskAnswer::invalid_field(field);
        }
        let target = task
            .get("target")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ok = |result| TaskAnswer {
            status_code: 20000,
            status_message: "Ok.".into(),
            cost: SUMMARY_TASK_COST,
            result,
        };
        match served_summary(seed, target) {
            ServedSummary::Item(item) => ok(Some(vec![item.to_string()])),
            ServedSummary::NullResult => ok(None),
            ServedSummary::NoResults => TaskAnswer {
                status_code: 40102,
                status_message: "No Search Results.".into(),
                cost: SUMMARY_TASK_COST,
                result: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(task: Value) -> TaskAnswer {
        Summary.answer(42, task.as_object().unwrap())
    }

    #[test]
    fn special_targets_get_their_statuses() {
        let a = answer(json!({"target": "example.com"}));
        assert_eq!((a.status_code, a.cost), (20000, SUMMARY_TASK_COST));
        assert_eq!(
            a.result,
            Some(vec![summary_item(42, "example.com").to_string()])
        );

        let a = answer(json!({"target": "noresults.example.com"}));
        assert_eq!(
            (a.status_code, a.status_message.as_str()),
            (40102, "No Search Results.")
        );
        assert_eq!((a.cost, a.result), (SUMMARY_TASK_COST, None));

        let a = answer(json!({"target": "nullresult.example.com"}));
        assert_eq!(
            (a.status_code, a.cost, a.result),
            (20000, SUMMARY_TASK_COST, None)
        );

        for task in [
            json!({"target": "badrequest.example.com"}),
            json!({"target": ""}),
            json!({"target": "  "}),
            json!({}),
            json!({"target": 7}),
        ] {
            let a = answer(task.clone());
            assert_eq!(
                (a.status_code, a.status_message.as_str()),
                (40501, "Invalid Field: 'target'."),
                "{task}"
            );
            assert_eq!((a.cost, a.result), (0.0, None));
        }
    }

    #[test]
    fn options_are_validated_like_the_api_does() {
        let good = json!({
            "target": "example.com", "include_subdomains": true, "include_indirect_links": false,
            "exclude_internal_backlinks": true, "internal_list_limit": 10, "backlinks_status_type": "live",
            "backlinks_filters": ["dofollow", "=", true], "rank_scale": "one_thousand", "tag": "nightly",
            "some_future_option": 3
        });
        assert_eq!(answer(good).status_code, 20000);
        for (field, value) in [
            ("include_subdomains", json!("yes")),
            ("internal_list_limit", json!(0)),
            ("internal_list_limit", json!(1001)),
            ("backlinks_status_type", json!("dead")),
            ("rank_scale", json!("one_million")),
            ("tag", json!("x".repeat(256))),
            ("backlinks_filters", json!("dofollow")),
        ] {
            let mut task = json!({"target": "example.com"});
            task[field] = value;
            let a = answer(task);
            assert_eq!(a.status_code, 40501, "{field}");
            assert_eq!(a.status_message, format!("Invalid Field: '{field}'."));
        }
    }

    #[test]
    fn options_do_not_change_the_data() {
        let plain = answer(json!({"target": "example.com"}));
        let scaled = answer(
            json!({"target": "example.com", "rank_scale": "one_hundred", "include_subdomains": false}),
        );
        assert_eq!(plain.result, scaled.result);
    }

    #[test]
    fn served_summary_matches_the_prefixes() {
        assert_eq!(
            served_summary(1, "noresults.a.com"),
            ServedSummary::NoResults
        );
        assert_eq!(
            served_summary(1, "nullresult.a.com"),
            ServedSummary::NullResult
        );
        assert_eq!(
            served_summary(1, "badrequest.a.com"),
            ServedSummary::NullResult
        );
        assert_eq!(
            served_summary(1, "a.com"),
            ServedSummary::Item(summary_item(1, "a.com"))
        );
    }
}
