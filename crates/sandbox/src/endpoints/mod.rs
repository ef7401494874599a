//! The imitated endpoints, one module each.
//!
//! The server does everything common to live endpoints (auth, limits, one
//! task per request, faults, latency, envelope, accounting); an endpoint
//! only validates its task and produces the task's status, cost and result
//! from the seed. A new endpoint (history, bulk_*) is a module implementing
//! [`LiveEndpoint`], listed in [`registry`].

pub(crate) mod backlinks;
pub(crate) mod summary;

use serde_json::{Map, Value};

/// What one task of a live request comes to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskAnswer {
    pub status_code: i64,
    pub status_message: String,
    /// USD charged for the task; 0 for refused tasks.
    pub cost: f64,
    /// `result`: the elements of the array, each already written as JSON
    /// text (large results are written without a `Value` tree), or `None`
    /// for `null`.
    pub result: Option<Vec<String>>,
}

impl TaskAnswer {
    /// A task refused for one of its fields (40501, not charged).
    pub(crate) fn invalid_field(field: &str) -> Self {
        Self {
            status_code: 40501,
            status_message: format!("Invalid Field: '{field}'."),
            cost: 0.0,
            result: None,
        }
    }
}

/// A live endpoint: one task per POST, answered at once.
pub(crate) trait LiveEndpoint: Send + Sync + std::fmt::Debug {
    /// The path segments, e.g. `["v3", "backlinks", "summary", "live"]`;
    /// the second is the `api` echoed in `data`.
    fn path(&self) -> &'static [&'static str];
    /// The `function` echoed in `data`, e.g. `summary`.
    fn function(&self) -> &'static str;
    /// The `se_type` echoed in `data`.
    fn se_type(&self) -> &'static str {
        "backlinks"
    }
    /// The task's outcome, deterministic from `seed` and the task.
    fn answer(&self, seed: u64, task: &Map<String, Value>) -> TaskAnswer;
}

/// Every endpoint the sandbox serves.
pub(crate) fn registry() -> Vec<Box<dyn LiveEndpoint>> {
    vec![Box::new(summary::Summary), Box::new(backlinks::Backlinks)]
}

/// The URL path of an endpoint: `/v3/backlinks/summary/live`.
pub(crate) fn url_path(endpoint: &dyn LiveEndpoint) -> String {
    endpoint
        .path()
        .iter()
        .fold(String::new(), |path, segment| path + "/" + segment)
}

/// Shared field checks of task objects: `Err(field)` names the first
/// invalid one. `null` counts as absent, as at the API.
pub(crate) mod check {
    use backlinks_model::filter;
    use serde_json::{Map, Value};

    fn present<'a>(task: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
        task.get(field).filter(|v| !v.is_null())
    }

    pub(crate) fn bool(task: &Map<String, Value>, field: &'static str) -> Result<(), &'static str> {
        match present(task, field) {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(_) => Err(field),
        }
    }

    pub(crate) fn int_in(
        task: &Map<String, Value>,
        field: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<(), &'static str> {
        match present(task, field) {
            None => Ok(()),
            Some(v) if v.as_i64().is_some_and(|n| range.contains(&n)) => Ok(()),
            Some(_) => Err(field),
        }
    }

    pub(crate) fn one_of(
        task: &Map<String, Value>,
        field: &'static str,
        allowed: &[&str],
    ) -> Result<(), &'static str> {
        match present(task, field) {
            None => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(_) => Err(field),
        }
    }

    pub(crate) fn short_string(
        task: &Map<String, Value>,
        field: &'static str,
        max_chars: usize,
    ) -> Result<(), &'static str> {
        match present(task, field) {
            None => Ok(()),
            Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(()),
            Some(_) => Err(field),
        }
    }

    /// A filter expression (`["dofollow", "=", true]`, or conditions joined
    /// by `"and"`/`"or"`, nested) in the API's grammar, with at most
    /// [`filter::MAX_CONDITIONS`] conditions (see [`filter::check`]). The
    /// API names only the field; the reason is logged.
    pub(crate) fn filters(
        task: &Map<String, Value>,
        field: &'static str,
    ) -> Result<(), &'static str> {
        match present(task, field).map(filter::check) {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => {
                tracing::debug!(field, %error, "invalid filter expression");
                Err(field)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use serde_json::json;

        use super::*;

        fn task(v: Value) -> Map<String, Value> {
            v.as_object().cloned().unwrap()
        }

        #[test]
        fn fields_are_checked_by_type_and_range() {
            let t = task(json!({"a": true, "n": 10, "s": "live", "nul": null, "bad": "x"}));
            assert_eq!(bool(&t, "a"), Ok(()));
            assert_eq!(bool(&t, "nul"), Ok(()));
            assert_eq!(bool(&t, "missing"), Ok(()));
            assert_eq!(bool(&t, "n"), Err("n"));
            assert_eq!(int_in(&t, "n", 1..=1000), Ok(()));
            assert_eq!(int_in(&t, "n", 11..=1000), Err("n"));
            assert_eq!(one_of(&t, "s", &["all", "live"]), Ok(()));
            assert_eq!(one_of(&t, "bad", &["all", "live"]), Err("bad"));
            assert_eq!(short_string(&t, "s", 4), Ok(()));
            assert_eq!(short_string(&t, "s", 3), Err("s"));
        }

        #[test]
        fn filters_follow_the_shared_grammar() {
            for good in [
                json!({"f": ["dofollow", "=", true]}),
                json!({"f": null}),
                json!({}),
                json!({"f": [["dofollow", "=", true], "and", [["rank", ">", 10], "or", ["tld", "in", ["com", "org"]]]]}),
                json!({"f": ["domain_from_country", "in", ["US", "DE"]]}),
            ] {
                assert_eq!(filters(&task(good.clone()), "f"), Ok(()), "{good}");
            }
            let nine: Vec<Value> = (0..9)
                .flat_map(|i| [json!(["rank", ">", i]), json!("and")])
                .take(17)
                .collect();
            for bad in [
                json!({"f": []}),
                json!({"f": [["a", "=", 1], "xor", ["b", "=", 2]]}),
                json!({"f": "rank > 1"}),
                json!({"f": [1, 2]}),
                json!({"f": ["rank", "eq", 1]}),
                json!({"f": ["domain_from_country", "in", "US"]}),
                json!({"f": nine}),
            ] {
                assert_eq!(filters(&task(bad.clone()), "f"), Err("f"), "{bad}");
            }
        }
    }
}
