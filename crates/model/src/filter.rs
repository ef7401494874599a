//! The filter expressions of the Backlinks API (`filters`,
//! `backlinks_filters`): one grammar for every crate that writes or checks
//! them.
//!
//! An expression is either one condition `[field, operator, value]`
//! (`["dofollow", "=", true]`) or a group: conditions and groups joined by
//! the connectors `"and"` / `"or"`, nested as deep as needed:
//!
//! ```json
//! [["first_seen", ">", "2017-10-23 11:31:45 +00:00"],
//!  "and",
//!  [["anchor", "like", "%seo%"], "or", ["text_pre", "not_like", "%seo%"]]]
//! ```
//!
//! A condition starts with its field (a string), a group with a condition
//! or group (an array); a group of one condition (`[["dofollow", "=",
//! true]]`) is the same filter as the condition alone. The API allows at
//! most [`MAX_CONDITIONS`] conditions in one expression.
//!
//! What each operator takes, as DataForSEO documents it (the Backlinks
//! filter field descriptions, the "Using filters" help-center article and
//! the filter pages of the other APIs that share the grammar):
//!
//! | operators | value |
//! |---|---|
//! | `=`, `<>` | a string, number, boolean or `null` |
//! | `<`, `<=`, `>`, `>=` | a number, or a string (dates such as `"2024-01-01 00:00:00 +00:00"`) |
//! | `in`, `not_in` | an array of strings, numbers or booleans (`["domain_from_country", "in", ["US", "DE"]]`) |
//! | `like`, `not_like`, `ilike`, `not_ilike` | a string pattern, `%` matching any run of characters |
//! | `match`, `not_match` | a string (full-text search for a word) |
//! | `regex`, `not_regex` | a string (RE2 syntax) of at most [`MAX_REGEX_CHARS`] characters |
//!
//! Fields are not checked against the endpoint's list of filterable fields
//! (`backlinks/available_filters`); the API answers an unknown one itself.

use serde_json::Value;

/// The most conditions one filter expression may hold.
pub const MAX_CONDITIONS: usize = 8;

/// The longest pattern `regex` and `not_regex` take, in characters.
pub const MAX_REGEX_CHARS: usize = 1000;

/// Every operator a condition may use.
pub const OPERATORS: [&str; 16] = [
    "=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not_in",
    "like",
    "not_like",
    "ilike",
    "not_ilike",
    "regex",
    "not_regex",
    "match",
    "not_match",
];

/// The connectors that join the members of a group.
pub const CONNECTORS: [&str; 2] = ["and", "or"];

/// Checks a filter expression and returns how many conditions it holds
/// (1 to [`MAX_CONDITIONS`]).
///
/// The first problem found, reading the expression from left to right, is
/// the error; the number of conditions is checked last.
pub fn check(filters: &Value) -> Result<usize, FilterError> {
    let Value::Array(items) = filters else {
        return Err(FilterError::NotAnArray {
            found: kind(filters),
        });
    };
    let mut at = Vec::new();
    let count = expression(items, &mut at)?;
    if count > MAX_CONDITIONS {
        return Err(FilterError::TooManyConditions { count });
    }
    Ok(count)
}

/// Where in an expression a problem is: the array indices leading to it
/// from the outermost array (`[2][0]`); none for the expression itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position(Vec<usize>);

impl Position {
    /// The indices from the outermost array inwards.
    pub fn indices(&self) -> &[usize] {
        &self.0
    }

    /// ` at [2][0]`, or nothing for the expression itself.
    fn suffix(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!(" at {self}")
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|i| write!(f, "[{i}]"))
    }
}

/// What is wrong with a filter expression. Each message names the place
/// (`at [2][0]`, array indices from the outermost array) and, for a
/// condition, its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The expression is not a JSON array.
    #[error("a filter expression is an array of conditions, not {found}")]
    NotAnArray { found: &'static str },
    /// An empty array where a condition or group belongs.
    #[error("empty filter expression{}: expected a condition [field, operator, value] or a group of them", .at.suffix())]
    Empty { at: Position },
    /// Something other than a condition or group where one belongs.
    #[error("expected a condition [field, operator, value] or a group{}, found {found}", .at.suffix())]
    NotACondition { at: Position, found: &'static str },
    /// A condition without exactly three elements.
    #[error("the condition on {field:?}{} has {len} element{}; a condition is [field, operator, value]", .at.suffix(), if *.len == 1 { "" } else { "s" })]
    WrongArity {
        at: Position,
        field: String,
        len: usize,
    },
    /// A condition whose field is the empty string.
    #[error("a condition{} has an empty field name", .at.suffix())]
    EmptyField { at: Position },
    /// A condition whose operator is not a string.
    #[error("the operator of the condition on {field:?}{} is {found}; expected one of {}", .at.suffix(), OPERATORS.join(", "))]
    OperatorNotAString {
        at: Position,
        field: String,
        found: &'static str,
    },
    /// A condition whose operator the API does not know.
    #[error("unknown operator {operator:?} in the condition on {field:?}{}; expected one of {}", .at.suffix(), OPERATORS.join(", "))]
    UnknownOperator {
        at: Position,
        field: String,
        operator: String,
    },
    /// A value the condition's operator does not take (`in` with a scalar,
    /// `like` with a number, a regex that is too long).
    #[error("the condition on {field:?}{}: {operator:?} takes {expected}, not {found}", .at.suffix())]
    WrongValue {
        at: Position,
        field: String,
        operator: String,
        expected: &'static str,
        found: String,
    },
    /// Two members of a group side by side without a connector.
    #[error("missing connector{}: conditions in a group are joined by \"and\" or \"or\"", .at.suffix())]
    MissingConnector { at: Position },
    /// A connector other than `and` / `or`.
    #[error("unknown connector {found}{}; expected \"and\" or \"or\"", .at.suffix())]
    UnknownConnector { at: Position, found: String },
    /// A group that ends with a connector instead of a condition.
    #[error("the group{} ends with the connector {connector:?}; a connector joins two conditions", .at.suffix())]
    TrailingConnector { at: Position, connector: String },
    /// More conditions than the API allows.
    #[error("{count} conditions; the API allows at most {MAX_CONDITIONS}")]
    TooManyConditions { count: usize },
}

/// Checks the expression `items` (found at `at`) and counts its conditions.
/// `at` is restored before returning `Ok`.
fn expression(items: &[Value], at: &mut Vec<usize>) -> Result<usize, FilterError> {
    match items.first() {
        None => Err(FilterError::Empty {
            at: Position(at.clone()),
        }),
        Some(Value::String(_)) => condition(items, at).map(|()| 1),
        Some(_) => group(items, at),
    }
}

/// A group: members at even indices, connectors between them.
fn group(items: &[Value], at: &mut Vec<usize>) -> Result<usize, FilterError> {
    let mut count = 0usize;
    for (i, item) in items.iter().enumerate() {
        at.push(i);
        if i % 2 == 0 {
            match item {
                Value::Array(inner) => count = count.saturating_add(expression(inner, at)?),
                other => {
                    return Err(FilterError::NotACondition {
                        at: Position(at.clone()),
                        found: kind(other),
                    });
                }
            }
        } else {
            match item {
                Value::String(c) if CONNECTORS.contains(&c.as_str()) => {
                    if i + 1 == items.len() {
                        return Err(FilterError::TrailingConnector {
                            at: Position(at[..at.len() - 1].to_vec()),
                            connector: c.clone(),
                        });
                    }
                }
                Value::Array(_) => {
                    return Err(FilterError::MissingConnector {
                        at: Position(at.clone()),
                    });
                }
                Value::String(c) => {
                    return Err(FilterError::UnknownConnector {
                        at: Position(at.clone()),
                        found: format!("{c:?}"),
                    });
                }
                other => {
                    return Err(FilterError::UnknownConnector {
                        at: Position(at.clone()),
                        found: kind(other).to_owned(),
                    });
                }
            }
        }
        at.pop();
    }
    Ok(count)
}

/// A condition `[field, operator, value]`; `items[0]` is a string.
fn condition(items: &[Value], at: &[usize]) -> Result<(), FilterError> {
    let position = || Position(at.to_vec());
    let field = items.first().and_then(Value::as_str).unwrap_or_default();
    if field.is_empty() {
        return Err(FilterError::EmptyField { at: position() });
    }
    let [_, operator, value] = items else {
        return Err(FilterError::WrongArity {
            at: position(),
            field: field.to_owned(),
            len: items.len(),
        });
    };
    let operator = match operator {
        Value::String(op) => op.as_str(),
        other => {
            return Err(FilterError::OperatorNotAString {
                at: position(),
                field: field.to_owned(),
                found: kind(other),
            });
        }
    };
    let wrong = |expected: &'static str, found: String| FilterError::WrongValue {
        at: position(),
        field: field.to_owned(),
        operator: operator.to_owned(),
        expected,
        found,
    };
    match operator {
        "=" | "<>" => match value {
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
            other => Err(wrong(
                "a string, number, boolean or null",
                kind(other).to_owned(),
            )),
        },
        "<" | "<=" | ">" | ">=" => match value {
            Value::Number(_) | Value::String(_) => Ok(()),
            other => Err(wrong("a number or a string", kind(other).to_owned())),
        },
        "in" | "not_in" => {
            const EXPECTED: &str = "a non-empty array of strings, numbers or booleans";
            match value {
                Value::Array(values) if values.is_empty() => {
                    Err(wrong(EXPECTED, "an empty array".to_owned()))
                }
                Value::Array(values) => match values.iter().find(|v| !scalar(v)) {
                    None => Ok(()),
                    Some(bad) => Err(wrong(EXPECTED, format!("an array holding {}", kind(bad)))),
                },
                other => Err(wrong(EXPECTED, kind(other).to_owned())),
            }
        }
        "like" | "not_like" | "ilike" | "not_ilike" => match value {
            Value::String(_) => Ok(()),
            other => Err(wrong("a string pattern", kind(other).to_owned())),
        },
        "match" | "not_match" => match value {
            Value::String(_) => Ok(()),
            other => Err(wrong("a string", kind(other).to_owned())),
        },
        "regex" | "not_regex" => {
            const EXPECTED: &str = "a string of at most 1000 characters";
            const _: () = assert!(MAX_REGEX_CHARS == 1000, "EXPECTED names the limit");
            match value {
                Value::String(s) => match s.chars().count() {
                    n if n <= MAX_REGEX_CHARS => Ok(()),
                    n => Err(wrong(EXPECTED, format!("one of {n} characters"))),
                },
                other => Err(wrong(EXPECTED, kind(other).to_owned())),
            }
        }
        unknown => Err(FilterError::UnknownOperator {
            at: position(),
            field: field.to_owned(),
            operator: unknown.to_owned(),
        }),
    }
}

/// A value an `in` list may hold.
fn scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// What a JSON value is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(v: Value) -> String {
        match check(&v) {
            Ok(n) => panic!("{v} was accepted ({n} conditions)"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_operator_is_accepted_with_the_value_it_takes() {
        let cases = [
            json!(["dofollow", "=", true]),
            json!(["lost_date", "=", null]),
            json!(["domain_from", "<>", "example.org"]),
            json!(["rank", "<", 100]),
            json!(["rank", "<=", 99.5]),
            json!(["page_from_rank", ">", "55"]),
            json!(["first_seen", ">=", "2024-01-01 00:00:00 +00:00"]),
            json!(["domain_from_country", "in", ["US", "DE"]]),
            json!(["tld_from", "not_in", ["ru", "cn"]]),
            json!(["anchor", "like", "%seo%"]),
            json!(["text_pre", "not_like", "%casino%"]),
            json!(["page_from_title", "ilike", "%News%"]),
            json!(["page_from_title", "not_ilike", "%Spam%"]),
            json!(["url_from", "regex", "^https://[a-z]+\\.example\\.org/"]),
            json!(["url_from", "not_regex", "(casino|poker)"]),
            json!(["anchor", "match", "backlinks"]),
            json!(["anchor", "not_match", "casino"]),
        ];
        let mut operators: Vec<&str> = Vec::new();
        for case in &cases {
            assert_eq!(check(case), Ok(1), "{case}");
            operators.push(case[1].as_str().unwrap());
        }
        operators.sort_unstable();
        operators.dedup();
        let mut all = OPERATORS.to_vec();
        all.sort_unstable();
        assert_eq!(operators, all, "every operator has a case");
    }

    #[test]
    fn in_and_not_in_take_arrays_of_values() {
        for value in [
            json!(["domain_from_country", "in", ["US", "DE"]]),
            json!(["rank", "in", [10, 1000]]),
            json!(["dofollow", "not_in", [false]]),
            json!(["page_from_status_code", "not_in", [404, 410, 500]]),
            // Inside groups too: the array is the value, not a nested group.
            json!([
                ["domain_from_country", "in", ["US", "DE"]],
                "and",
                ["dofollow", "=", true]
            ]),
            json!([
                [["tld_from", "in", ["com"]]],
                "or",
                ["tld_from", "not_in", ["org", "net"]]
            ]),
        ] {
            assert!(check(&value).is_ok(), "{value}: {:?}", check(&value));
        }
        assert_eq!(
            check(&json!([
                ["domain_from_country", "in", ["US", "DE"]],
                "and",
                ["dofollow", "=", true]
            ])),
            Ok(2)
        );
    }

    #[test]
    fn groups_nest_and_count_every_condition() {
        let nested = json!([
            ["first_seen", ">", "2017-10-23 11:31:45 +00:00"],
            "and",
            [
                ["anchor", "like", "%seo%"],
                "or",
                ["text_pre", "not_like", "%seo%"]
            ]
        ]);
        assert_eq!(check(&nested), Ok(3));
        assert_eq!(check(&json!([["dofollow", "=", true]])), Ok(1));
        assert_eq!(check(&json!([[[["dofollow", "=", true]]]])), Ok(1));
        let deep = json!([
            [
                ["rank", ">", 1],
                "or",
                [["rank", "<", 0], "and", ["dofollow", "=", false]]
            ],
            "and",
            [
                ["tld_from", "in", ["com", "org"]],
                "or",
                ["anchor", "match", "seo"]
            ],
            "or",
            ["is_lost", "=", true]
        ]);
        assert_eq!(check(&deep), Ok(6));
        let eight: Vec<Value> = (0..8)
            .flat_map(|i| [json!(["rank", ">", i]), json!("or")])
            .take(15)
            .collect();
        assert_eq!(check(&Value::Array(eight)), Ok(MAX_CONDITIONS));
    }

    #[test]
    fn unknown_operators_are_refused_by_name() {
        assert_eq!(
            err(json!(["rank", "eq", 1])),
            "unknown operator \"eq\" in the condition on \"rank\"; expected one of =, <>, <, <=, \
             >, >=, in, not_in, like, not_like, ilike, not_ilike, regex, not_regex, match, not_match"
        );
        let msg = err(json!([["rank", ">", 1], "and", ["anchor", "LIKE", "%a%"]]));
        assert!(
            msg.starts_with("unknown operator \"LIKE\" in the condition on \"anchor\" at [2];"),
            "{msg}"
        );
        assert_eq!(
            err(json!(["rank", 5, 1])),
            "the operator of the condition on \"rank\" is a number; expected one of =, <>, <, \
             <=, >, >=, in, not_in, like, not_like, ilike, not_ilike, regex, not_regex, match, \
             not_match"
        );
    }

    #[test]
    fn connectors_must_be_there_and_be_and_or_or() {
        assert_eq!(
            err(json!([["a", "=", 1], ["b", "=", 2]])),
            "missing connector at [1]: conditions in a group are joined by \"and\" or \"or\""
        );
        assert_eq!(
            err(json!([["a", "=", 1], "xor", ["b", "=", 2]])),
            "unknown connector \"xor\" at [1]; expected \"and\" or \"or\""
        );
        assert_eq!(
            err(json!([["a", "=", 1], "AND", ["b", "=", 2]])),
            "unknown connector \"AND\" at [1]; expected \"and\" or \"or\""
        );
        assert_eq!(
            err(json!([["a", "=", 1], 1, ["b", "=", 2]])),
            "unknown connector a number at [1]; expected \"and\" or \"or\""
        );
        assert_eq!(
            err(json!([["dofollow", "=", true], "and"])),
            "the group ends with the connector \"and\"; a connector joins two conditions"
        );
        assert_eq!(
            err(json!([["a", "=", 1], "or", [["b", "=", 2], "and"]])),
            "the group at [2] ends with the connector \"and\"; a connector joins two conditions"
        );
        assert_eq!(
            err(json!([["a", "=", 1], "and", "or"])),
            "expected a condition [field, operator, value] or a group at [2], found a string"
        );
    }

    #[test]
    fn conditions_have_three_elements() {
        assert_eq!(
            err(json!(["rank", ">"])),
            "the condition on \"rank\" has 2 elements; a condition is [field, operator, value]"
        );
        assert_eq!(
            err(json!([["a", "=", 1], "and", ["rank", ">", 1, 2]])),
            "the condition on \"rank\" at [2] has 4 elements; a condition is [field, operator, \
             value]"
        );
        assert_eq!(
            err(json!(["rank"])),
            "the condition on \"rank\" has 1 element; a condition is [field, operator, value]"
        );
        assert_eq!(
            err(json!(["", "=", 1])),
            "a condition has an empty field name"
        );
    }

    #[test]
    fn values_must_suit_the_operator() {
        assert_eq!(
            err(json!(["domain_from_country", "in", "US"])),
            "the condition on \"domain_from_country\": \"in\" takes a non-empty array of \
             strings, numbers or booleans, not a string"
        );
        assert_eq!(
            err(json!([["a", "=", 1], "or", ["rank", "not_in", 5]])),
            "the condition on \"rank\" at [2]: \"not_in\" takes a non-empty array of strings, \
             numbers or booleans, not a number"
        );
        assert!(err(json!(["tld_from", "in", []])).ends_with("not an empty array"));
        assert!(
            err(json!(["tld_from", "in", [["com"]]])).ends_with("not an array holding an array")
        );
        assert!(
            err(json!(["tld_from", "in", ["com", null]])).ends_with("not an array holding null")
        );
        assert_eq!(
            err(json!(["anchor", "like", 5])),
            "the condition on \"anchor\": \"like\" takes a string pattern, not a number"
        );
        assert!(
            err(json!(["rank", ">", true])).ends_with("takes a number or a string, not a boolean")
        );
        assert!(err(json!(["rank", "=", [1]])).ends_with("not an array"));
        assert!(err(json!(["anchor", "match", null])).ends_with("takes a string, not null"));
        assert_eq!(
            check(&json!(["url_from", "regex", "a".repeat(1000)])),
            Ok(1)
        );
        assert_eq!(
            err(json!(["url_from", "regex", "a".repeat(1001)])),
            "the condition on \"url_from\": \"regex\" takes a string of at most 1000 characters, \
             not one of 1001 characters"
        );
    }

    #[test]
    fn nine_conditions_are_too_many() {
        let nine: Vec<Value> = (0..9)
            .flat_map(|i| [json!(["rank", ">", i]), json!("and")])
            .take(17)
            .collect();
        assert_eq!(
            check(&Value::Array(nine)),
            Err(FilterError::TooManyConditions { count: 9 })
        );
        let nested = json!([
            [["a", "=", 1], "and", ["b", "=", 2], "and", ["c", "=", 3]],
            "or",
            [["d", "=", 4], "and", ["e", "=", 5], "and", ["f", "=", 6]],
            "or",
            [["g", "=", 7], "and", [["h", "=", 8], "or", ["i", "=", 9]]]
        ]);
        assert_eq!(err(nested), "9 conditions; the API allows at most 8");
    }

    #[test]
    fn other_shapes_are_refused() {
        assert_eq!(
            err(json!("rank > 1")),
            "a filter expression is an array of conditions, not a string"
        );
        assert_eq!(
            err(json!({"rank": 1})),
            "a filter expression is an array of conditions, not an object"
        );
        assert_eq!(
            err(json!([])),
            "empty filter expression: expected a condition [field, operator, value] or a group \
             of them"
        );
        assert_eq!(
            err(json!([["a", "=", 1], "and", []])),
            "empty filter expression at [2]: expected a condition [field, operator, value] or a \
             group of them"
        );
        assert_eq!(
            err(json!([1, 2])),
            "expected a condition [field, operator, value] or a group at [0], found a number"
        );
        let e = check(&json!([
            ["a", "=", 1],
            "and",
            [["b", "=", 2], "or", [["c", "?", 3]]]
        ]))
        .unwrap_err();
        match e {
            FilterError::UnknownOperator { at, .. } => assert_eq!(at.indices(), [2, 2, 0]),
            other => panic!("{other:?}"),
        }
    }
}
