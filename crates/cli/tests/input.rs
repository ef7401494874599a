//! Bad input gets a clear error naming the place, and exit code 2.

mod common;

use common::backlinks;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = "name = \"p\"\n[targets]\ncsv = \"targets.csv\"\n[endpoints.summary]\n";

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.toml",
        &format!("{GOOD}[api]\nrequests_per_hour = 3\n"),
    );
    write(dir.path(), "targets.csv", "target\nexample.com\n");
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(
        run.stderr().contains("requests_per_hour"),
        "{}",
        run.stderr()
    );
    assert!(run.stderr().contains("p.toml"), "{}", run.stderr());

    let run = backlinks(
        &["validate", p.to_str().unwrap()],
        &[("BACKLINKS__API__BOGUS", "1")],
        dir.path(),
    );
    assert_eq!(run.code(), 2);
}

#[test]
fn out_of_range_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "targets.csv", "target\nexample.com\n");
    let p = write(
        dir.path(),
        "p.toml",
        &format!("{GOOD}internal_list_limit = 1001\n[api]\nmax_in_flight = 31\n"),
    );
    let run = backlinks(&["run", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let err = run.stderr();
    assert!(
        err.contains("endpoints.summary.internal_list_limit = 1001 is out of range 1..=1000"),
        "{err}"
    );
    assert!(
        err.contains("api.max_in_flight = 31 is out of range 1..=30"),
        "{err}"
    );

    // Environment overrides are validated the same way, and wrong types are named.
    let p = write(dir.path(), "ok.toml", GOOD);
    let run = backlinks(
        &["validate", p.to_str().unwrap()],
        &[("BACKLINKS__API__MAX_IN_FLIGHT", "64")],
        dir.path(),
    );
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("api.max_in_flight = 64"),
        "{}",
        run.stderr()
    );
    let p = write(
        dir.path(),
        "types.toml",
        &format!("{GOOD}[api]\ntimeout_secs = \"long\"\n"),
    );
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("timeout_secs"), "{}", run.stderr());
}

#[test]
fn bad_target_rows_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", GOOD);
    write(
        dir.path(),
        "targets.csv",
        "\u{feff}Target,owner\r\nexample.com,a\r\n\"exa mple.com\",b\r\n\r\nhttps://www.example.com/,c\r\nftp://example.org,d\r\n",
    );
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(
        run.code(),
        2,
        "rejected rows make validate fail: {}",
        run.stdout()
    );
    let out = run.stdout();
    assert!(
        out.contains("1 targets (2 rejected, 1 duplicates)"),
        "{out}"
    );
    assert!(out.contains("targets.csv:3"), "{out}");
    assert!(out.contains("targets.csv:6"), "{out}");

    // A run skips them unless strict, where the first one stops it.
    let run = backlinks(&["run", p.to_str().unwrap(), "--strict"], &[], dir.path());
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("targets.csv:3"), "{}", run.stderr());
    assert!(
        !dir.path().join("data").join("summary").exists(),
        "nothing was written"
    );
}

#[test]
fn a_csv_without_a_target_column_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", GOOD);
    write(dir.path(), "targets.csv", "domain\nexample.com\n");
    let run = backlinks(&["run", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("targets.csv"), "{}", run.stderr());
    let run = backlinks(
        &["run", p.to_str().unwrap(), "--targets", "missing.csv"],
        &[],
        dir.path(),
    );
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("missing.csv"), "{}", run.stderr());
}

#[test]
fn missing_credentials_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", GOOD);
    write(dir.path(), "targets.csv", "target\nexample.com\n");
    let run = backlinks(&["run", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("DATAFORSEO_LOGIN"),
        "{}",
        run.stderr()
    );
}

#[test]
fn validate_explain_prints_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", GOOD);
    write(dir.path(), "targets.csv", "target\nexample.com\n");
    let run = backlinks(
        &["validate", p.to_str().unwrap(), "--explain"],
        &[],
        dir.path(),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let out = run.stdout();
    for line in [
        "requests_per_minute = 2000",
        "max_in_flight = 30",
        "timeout_secs = 180",
        "internal_list_limit = 10",
    ] {
        assert!(out.contains(line), "{line} missing in\n{out}");
    }
}
