//! Holds `docs/data-contract.md` to the code: every dataset of
//! [`Dataset::ALL`] has a section there, each section lists exactly the
//! dataset's columns in schema order with their Arrow type and nullability,
//! the Postgres type and key each section states are those of the
//! migrations, and each view section lists the columns of the view. The
//! format the document follows is described at its top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_schema::{DataType, TimeUnit};
use backlinks_model::Dataset;

const CONTRACT: &str = include_str!("../../../docs/data-contract.md");

const DATASET_HEADER: &str = "| column | type | null | meaning |";
const DATASET_SEPARATOR: &str = "|---|---|---|---|";
const VIEW_HEADER: &str = "| column | type | meaning |";
const VIEW_SEPARATOR: &str = "|---|---|---|";

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dataset,
    View,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Dataset => "dataset",
            Kind::View => "view",
        }
    }
}

/// One row of a section's table.
#[derive(Debug, Clone)]
struct DocColumn {
    line: usize,
    name: String,
    /// `None` in view tables, which give the Postgres type only.
    arrow: Option<String>,
    postgres: String,
    /// `None` in view tables.
    nullable: Option<bool>,
}

/// A `## Dataset` or `## View` section.
#[derive(Debug, Clone)]
struct Section {
    kind: Kind,
    name: String,
    line: usize,
    /// The `Key:` line: `Some(columns)`, `Some([])` for `Key: none`, `None`
    /// when the section has no such line.
    key: Option<Vec<String>>,
    columns: Vec<DocColumn>,
}

/// The contents of a cell written as one name in backticks.
fn backticked(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

/// The cells of a table row `| a | b |`.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

/// Reads the dataset and view sections of `doc`. Lines that break the
/// format are reported in `problems`, by line number.
fn parse(doc: &str, problems: &mut Vec<String>) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    // Whether the lines are inside the current dataset or view section.
    let mut in_section = false;
    // 0: before the table, 1: header read, 2: separator read (rows), 3: after.
    let mut table_state = 0;
    let mut in_fence = false;
    for (index, raw) in doc.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim_end();
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            in_section = false;
            table_state = 0;
            let (kind, rest) = if let Some(rest) = heading.strip_prefix("Dataset ") {
                (Kind::Dataset, rest)
            } else if let Some(rest) = heading.strip_prefix("View ") {
                (Kind::View, rest)
            } else {
                continue;
            };
            match backticked(rest.trim()) {
                Some(name) => {
                    sections.push(Section {
                        kind,
                        name: name.to_owned(),
                        line: line_no,
                        key: None,
                        columns: Vec::new(),
                    });
                    in_section = true;
                }
                None => problems.push(format!(
                    "line {line_no}: the {} heading `{line}` must name it in backticks",
                    kind.word()
                )),
            }
            continue;
        }
        if !in_section {
            continue;
        }
        let section = sections.last_mut().expect("a section is open");
        if let Some(key) = line.strip_prefix("Key:") {
            if section.kind == Kind::View {
                problems.push(format!("line {line_no}: a view has no `Key:` line"));
            } else if section.key.is_some() {
                problems.push(format!(
                    "line {line_no}: dataset `{}` has a second `Key:` line",
                    section.name
                ));
            } else {
                let key = key.trim();
                if key == "none" {
                    section.key = Some(Vec::new());
                } else if let Some(list) = key.strip_prefix('(').and_then(|k| k.strip_suffix(')')) {
                    section.key = Some(list.split(',').map(|c| c.trim().to_owned()).collect());
                } else {
                    problems.push(format!(
                        "line {line_no}: dataset `{}`: `Key:` must be followed by `(<column>, …)` or `none`, not `{key}`",
                        section.name
                    ));
                }
            }
            continue;
        }
        let (header, separator) = match section.kind {
            Kind::Dataset => (DATASET_HEADER, DATASET_SEPARATOR),
            Kind::View => (VIEW_HEADER, VIEW_SEPARATOR),
        };
        let what = format!("{} `{}`", section.kind.word(), section.name);
        if !line.starts_with('|') {
            if table_state == 2 {
                table_state = 3;
            } else if table_state == 1 {
                problems.push(format!(
                    "line {line_no}: {what}: the table header must be followed by `{separator}`"
                ));
                table_state = 3;
            }
            continue;
        }
        match table_state {
            0 => {
                if line == header {
                    table_state = 1;
                } else {
                    problems.push(format!(
                        "line {line_no}: {what}: the table header must be `{header}`, not `{line}`"
                    ));
                    table_state = 3;
                }
            }
            1 => {
                if line == separator {
                    table_state = 2;
                } else {
                    problems.push(format!(
                        "line {line_no}: {what}: the table header must be followed by `{separator}`, not `{line}`"
                    ));
                    table_state = 3;
                }
            }
            2 => match parse_row(section.kind, line) {
                Ok(mut column) => {
                    column.line = line_no;
                    section.columns.push(column);
                }
                Err(why) => problems.push(format!("line {line_no}: {what}: {why}: `{line}`")),
            },
            _ => problems.push(format!(
                "line {line_no}: {what} has a second table (one table per section)"
            )),
        }
    }
    sections
}

/// One table row of a section of `kind`.
fn parse_row(kind: Kind, line: &str) -> Result<DocColumn, String> {
    let cells = cells(line).ok_or("a row must start and end with `|`")?;
    let expected = match kind {
        Kind::Dataset => 4,
        Kind::View => 3,
    };
    if cells.len() != expected {
        return Err(format!(
            "a row must have {expected} cells (is there a `|` in the meaning?), not {}",
            cells.len()
        ));
    }
    let name = backticked(cells[0]).ok_or("the column must be one name in backticks")?;
    let (arrow, postgres) = match kind {
        Kind::Dataset => {
            let (arrow, postgres) = cells[1]
                .split_once(" / ")
                .ok_or("the type must be `<Arrow type>` / `<Postgres type>`")?;
            let arrow = backticked(arrow.trim()).ok_or("the Arrow type must be in backticks")?;
            let postgres =
                backticked(postgres.trim()).ok_or("the Postgres type must be in backticks")?;
            (Some(arrow.to_owned()), postgres)
        }
        Kind::View => (
            None,
            backticked(cells[1]).ok_or("the type must be the Postgres type in backticks")?,
        ),
    };
    let nullable = match kind {
        Kind::Dataset => Some(match cells[2] {
            "yes" => true,
            "no" => false,
            other => return Err(format!("null must be `yes` or `no`, not `{other}`")),
        }),
        Kind::View => None,
    };
    if cells[expected - 1].is_empty() {
        return Err("the meaning is empty".into());
    }
    Ok(DocColumn {
        line: 0,
        name: name.to_owned(),
        arrow,
        postgres: postgres.to_owned(),
        nullable,
    })
}

/// The name the contract gives an Arrow type, or `None` for a type its
/// format has no name for.
fn arrow_name(data_type: &DataType) -> Option<&'static str> {
    Some(match data_type {
        DataType::Utf8 => "Utf8",
        DataType::Int64 => "Int64",
        DataType::Float64 => "Float64",
        DataType::Boolean => "Boolean",
        DataType::Date32 => "Date32",
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
            "Timestamp(Microsecond, UTC)"
        }
        DataType::List(item) if item.data_type() == &DataType::Utf8 && item.is_nullable() => {
            "List(Utf8)"
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// The migrations
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct PgColumn {
    name: String,
    /// Lowercase, single spaces, e.g. `double precision`.
    data_type: String,
    not_null: bool,
}

#[derive(Debug, Clone, Default)]
struct PgTable {
    columns: Vec<PgColumn>,
    primary_key: Option<Vec<String>>,
}

/// Tables and views after every migration, in file name order.
#[derive(Debug, Default)]
struct Catalog {
    tables: BTreeMap<String, PgTable>,
    views: BTreeMap<String, Vec<String>>,
}

fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

fn read_migrations() -> Catalog {
    let dir = migrations_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no migrations in {}", dir.display());
    let mut catalog = Catalog::default();
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for statement in statements(&sql) {
            apply(&mut catalog, &name, &statement);
        }
    }
    catalog
}

/// The statements of `sql`, comments removed, whitespace collapsed.
/// Semicolons and `--` inside string literals are kept.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_string = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            current.push(c);
            if c == '\'' {
                in_string = false;
            }
        } else if c == '\'' {
            in_string = true;
            current.push(c);
        } else if c == '-' && chars.peek() == Some(&'-') {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            current.push(' ');
        } else if c == ';' {
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// `s` split on commas outside parentheses and string literals.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    let mut in_string = false;
    for c in s.chars() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => {
                parts.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current.trim().to_owned());
    parts
}

/// The byte index of the first `word` (a whole word, any case) outside
/// parentheses in `s`.
fn find_top_level(s: &str, word: &str) -> Option<usize> {
    let upper = s.to_ascii_uppercase();
    let word = word.to_ascii_uppercase();
    let bytes = upper.as_bytes();
    let mut depth = 0i32;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        if depth == 0 && bytes[i..].starts_with(word.as_bytes()) {
            let before = i == 0 || !is_ident(bytes[i - 1]);
            let end = i + word.len();
            let after = end >= bytes.len() || !is_ident(bytes[end]);
            if before && after {
                return Some(i);
            }
        }
    }
    None
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn unquote(ident: &str) -> String {
    ident.trim_matches('"').to_owned()
}

/// A column definition `name type [constraints]`.
fn column_def(def: &str) -> (PgColumn, bool) {
    const CONSTRAINTS: [&str; 10] = [
        "NOT",
        "NULL",
        "DEFAULT",
        "PRIMARY",
        "REFERENCES",
        "CHECK",
        "UNIQUE",
        "GENERATED",
        "COLLATE",
        "CONSTRAINT",
    ];
    let mut words = def.split(' ');
    let name = unquote(words.next().unwrap_or_default());
    let mut data_type: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    for word in words {
        if rest.is_empty() && !CONSTRAINTS.contains(&word.to_ascii_uppercase().as_str()) {
            data_type.push(word.to_ascii_lowercase());
        } else {
            rest.push(word.to_ascii_uppercase());
        }
    }
    let rest = rest.join(" ");
    let primary = rest.contains("PRIMARY KEY");
    (
        PgColumn {
            name,
            data_type: data_type.join(" "),
            not_null: rest.contains("NOT NULL") || primary,
        },
        primary,
    )
}

/// The names in `(a, b, c)`.
fn name_list(s: &str) -> Vec<String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    inner.split(',').map(|n| unquote(n.trim())).collect()
}

fn upper_starts(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The rest of `s` after `prefix` (any case), if it starts with it.
fn after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    upper_starts(s, prefix).then(|| s[prefix.len()..].trim_start())
}

/// Applies one statement of migration `file` to the catalog. Statements
/// that change no table columns, key or view (comments, indexes) are
/// skipped; a statement that changes them in a way this reader does not
/// know fails the test, so that the contract is never checked against a
/// misread schema.
fn apply(catalog: &mut Catalog, file: &str, statement: &str) {
    if let Some(rest) = after(statement, "CREATE TABLE") {
        let rest = after(rest, "IF NOT EXISTS").unwrap_or(rest);
        let open = rest
            .find('(')
            .unwrap_or_else(|| cannot_read(file, statement));
        let name = unquote(rest[..open].trim());
        let body = rest[open + 1..]
            .trim_end()
            .strip_suffix(')')
            .unwrap_or_else(|| cannot_read(file, statement));
        let mut table = PgTable::default();
        for item in split_top_level(body) {
            if let Some(list) = after(&item, "PRIMARY KEY") {
                table.primary_key = Some(name_list(list));
            } else if ["CONSTRAINT", "UNIQUE", "CHECK", "FOREIGN KEY", "EXCLUDE"]
                .iter()
                .any(|p| upper_starts(&item, p))
            {
                if item.to_ascii_uppercase().contains("PRIMARY KEY") {
                    cannot_read(file, statement);
                }
            } else {
                let (column, primary) = column_def(&item);
                if primary {
                    table.primary_key = Some(vec![column.name.clone()]);
                }
                table.columns.push(column);
            }
        }
        catalog.tables.insert(name, table);
    } else if let Some(rest) = after(statement, "ALTER TABLE") {
        let rest = after(rest, "IF EXISTS").unwrap_or(rest);
        let rest = after(rest, "ONLY").unwrap_or(rest);
        let (name, actions) = rest
            .split_once(' ')
            .unwrap_or_else(|| cannot_read(file, statement));
        let name = unquote(name);
        if let Some(new_name) = after(actions, "RENAME TO") {
            let table = catalog
                .tables
                .remove(&name)
                .unwrap_or_else(|| cannot_read(file, statement));
            catalog.tables.insert(unquote(new_name), table);
            return;
        }
        let table = catalog
            .tables
            .get_mut(&name)
            .unwrap_or_else(|| cannot_read(file, statement));
        for action in split_top_level(actions) {
            if let Some(def) = after(&action, "ADD COLUMN") {
                let def = after(def, "IF NOT EXISTS").unwrap_or(def);
                let (column, primary) = column_def(def);
                if primary {
                    cannot_read(file, statement);
                }
                table.columns.push(column);
            } else if let Some(col) = after(&action, "DROP COLUMN") {
                let col = after(col, "IF EXISTS").unwrap_or(col);
                let col = unquote(col.split(' ').next().unwrap_or_default());
                table.columns.retain(|c| c.name != col);
            } else if let Some(rest) = after(&action, "RENAME COLUMN") {
                let (from, to) = rest
                    .split_once(' ')
                    .and_then(|(f, r)| Some((f, after(r, "TO")?)))
                    .unwrap_or_else(|| cannot_read(file, statement));
                let from = unquote(from);
                let column = table
                    .columns
                    .iter_mut()
                    .find(|c| c.name == from)
                    .unwrap_or_else(|| cannot_read(file, statement));
                column.name = unquote(to);
            } else if let Some(rest) = after(&action, "ALTER COLUMN") {
                let (col, change) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| cannot_read(file, statement));
                let col = unquote(col);
                let column = table
                    .columns
                    .iter_mut()
                    .find(|c| c.name == col)
                    .unwrap_or_else(|| cannot_read(file, statement));
                if let Some(ty) = after(change, "TYPE").or_else(|| after(change, "SET DATA TYPE")) {
                    let end = find_top_level(ty, "USING")
                        .or_else(|| find_top_level(ty, "COLLATE"))
                        .unwrap_or(ty.len());
                    column.data_type = ty[..end].trim().to_ascii_lowercase();
                } else if upper_starts(change, "SET NOT NULL") {
                    column.not_null = true;
                } else if upper_starts(change, "DROP NOT NULL") {
                    column.not_null = false;
                } else if !(upper_starts(change, "SET DEFAULT")
                    || upper_starts(change, "DROP DEFAULT")
                    || upper_starts(change, "SET STATISTICS")
                    || upper_starts(change, "SET STORAGE"))
                {
                    cannot_read(file, statement);
                }
            } else if upper_starts(&action, "ADD PRIMARY KEY") {
                table.primary_key = Some(name_list(after(&action, "ADD PRIMARY KEY").unwrap()));
            } else if upper_starts(&action, "ADD CONSTRAINT")
                || upper_starts(&action, "DROP CONSTRAINT")
            {
                if action.to_ascii_uppercase().contains("PRIMARY KEY")
                    || action.to_ascii_uppercase().contains("_PKEY")
                {
                    cannot_read(file, statement);
                }
            } else {
                cannot_read(file, statement);
            }
        }
    } else if let Some(rest) =
        after(statement, "CREATE OR REPLACE VIEW").or_else(|| after(statement, "CREATE VIEW"))
    {
        let as_at = find_top_level(rest, "AS").unwrap_or_else(|| cannot_read(file, statement));
        let name = unquote(rest[..as_at].trim());
        let query = rest[as_at + 2..].trim();
        let select = after(query, "SELECT").unwrap_or_else(|| cannot_read(file, statement));
        let from = find_top_level(select, "FROM").unwrap_or_else(|| cannot_read(file, statement));
        let columns = split_top_level(&select[..from])
            .iter()
            .map(|item| select_item_name(item).unwrap_or_else(|| cannot_read(file, statement)))
            .collect();
        catalog.views.insert(name, columns);
    } else if let Some(rest) = after(statement, "DROP VIEW") {
        let rest = after(rest, "IF EXISTS").unwrap_or(rest);
        for name in rest.split(',') {
            let name = name.trim().split(' ').next().unwrap_or_default();
            catalog.views.remove(&unquote(name));
        }
    } else if let Some(rest) = after(statement, "DROP TABLE") {
        let rest = after(rest, "IF EXISTS").unwrap_or(rest);
        for name in rest.split(',') {
            let name = name.trim().split(' ').next().unwrap_or_default();
            catalog.tables.remove(&unquote(name));
        }
    } else if [
        "COMMENT ON",
        "CREATE INDEX",
        "CREATE UNIQUE INDEX",
        "DROP INDEX",
    ]
    .iter()
    .any(|p| upper_starts(statement, p))
    {
        // Changes no column.
    } else {
        cannot_read(file, statement);
    }
}

/// Fails the test on a migration statement [`apply`] cannot read.
fn cannot_read(file: &str, statement: &str) -> ! {
    panic!(
        "{file}: the data contract test cannot read this statement; teach `apply` in crates/model/tests/data_contract.rs: {statement}"
    )
}

/// The output name of one item of a select list: its alias, or the column
/// it names.
fn select_item_name(item: &str) -> Option<String> {
    // The last top-level `AS` introduces the alias.
    let mut alias = None;
    let mut from = 0;
    while let Some(i) = find_top_level(&item[from..], "AS") {
        alias = Some(from + i);
        from += i + 2;
    }
    let name = match alias {
        Some(i) => item[i + 2..].trim(),
        None => item.trim().rsplit('.').next()?,
    };
    let name = unquote(name);
    name.bytes().all(is_ident).then_some(name)
}

// ---------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------

/// Every difference between the document `doc` and the schemas and the
/// migrations, each naming the dataset (or view) and the column.
fn contract_problems(doc: &str, catalog: &Catalog) -> Vec<String> {
    let mut problems = Vec::new();
    let sections = parse(doc, &mut problems);

    let mut seen: BTreeMap<(&str, &'static str), usize> = BTreeMap::new();
    for section in &sections {
        let word = section.kind.word();
        if let Some(first) = seen.insert((section.name.as_str(), word), section.line) {
            problems.push(format!(
                "line {}: {word} `{}` has a second section (the first is at line {first})",
                section.line, section.name
            ));
        }
    }

    // Datasets.
    for dataset in Dataset::ALL {
        if !sections
            .iter()
            .any(|s| s.kind == Kind::Dataset && s.name == dataset.name())
        {
            problems.push(format!(
                "dataset `{}` has no section `## Dataset `{}``",
                dataset.name(),
                dataset.name()
            ));
        }
    }
    for section in sections.iter().filter(|s| s.kind == Kind::Dataset) {
        match Dataset::ALL.iter().find(|d| d.name() == section.name) {
            Some(dataset) => check_dataset(*dataset, section, catalog, &mut problems),
            None => problems.push(format!(
                "line {}: the section names dataset `{}`, which does not exist (datasets: {})",
                section.line,
                section.name,
                Dataset::ALL.map(|d| d.name()).join(", ")
            )),
        }
    }

    // Views.
    for view in catalog.views.keys() {
        if !sections
            .iter()
            .any(|s| s.kind == Kind::View && &s.name == view)
        {
            problems.push(format!(
                "view `{view}` of the migrations has no section `## View `{view}``"
            ));
        }
    }
    for section in sections.iter().filter(|s| s.kind == Kind::View) {
        let Some(columns) = catalog.views.get(&section.name) else {
            problems.push(format!(
                "line {}: the section names view `{}`, which no migration creates",
                section.line, section.name
            ));
            continue;
        };
        let listed: Vec<&str> = section.columns.iter().map(|c| c.name.as_str()).collect();
        let actual: Vec<&str> = columns.iter().map(String::as_str).collect();
        compare_names(
            &format!("view `{}`", section.name),
            "the migrations",
            &actual,
            &section.columns,
            &listed,
            &mut problems,
        );
        if section.columns.is_empty() {
            problems.push(format!(
                "line {}: view `{}` has no column table",
                section.line, section.name
            ));
        }
    }
    problems
}

/// Reports how the names `listed` in the document differ from `actual`
/// (from `source`): missing, extra, or in another order.
fn compare_names(
    what: &str,
    source: &str,
    actual: &[&str],
    rows: &[DocColumn],
    listed: &[&str],
    problems: &mut Vec<String>,
) {
    for name in actual {
        if !listed.contains(name) {
            problems.push(format!(
                "{what}: column `{name}` of {source} is missing from the document"
            ));
        }
    }
    for row in rows {
        if !actual.contains(&row.name.as_str()) {
            problems.push(format!(
                "line {}: {what}: the document lists column `{}`, which {source} does not have",
                row.line, row.name
            ));
        }
        if listed.iter().filter(|n| **n == row.name).count() > 1 {
            problems.push(format!(
                "line {}: {what}: column `{}` is listed more than once",
                row.line, row.name
            ));
        }
    }
    let common_actual: Vec<&str> = actual
        .iter()
        .copied()
        .filter(|n| listed.contains(n))
        .collect();
    let common_rows: Vec<&DocColumn> = rows
        .iter()
        .filter(|r| actual.contains(&r.name.as_str()))
        .collect();
    if let Some((i, (a, row))) = common_actual
        .iter()
        .zip(&common_rows)
        .enumerate()
        .find(|(_, (a, row))| **a != row.name)
    {
        problems.push(format!(
            "line {}: {what}: columns out of order: {source} has `{a}` where the document has `{}` (column {} of those both list)",
            row.line,
            row.name,
            i + 1
        ));
    }
}

fn check_dataset(
    dataset: Dataset,
    section: &Section,
    catalog: &Catalog,
    problems: &mut Vec<String>,
) {
    let name = dataset.name();
    let what = format!("dataset `{name}`");
    let schema = dataset.schema();
    if section.columns.is_empty() {
        problems.push(format!(
            "line {}: {what} has no column table `{DATASET_HEADER}`",
            section.line
        ));
        return;
    }
    let actual: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let listed: Vec<&str> = section.columns.iter().map(|c| c.name.as_str()).collect();
    compare_names(
        &what,
        "the schema (crates/model/src/schema.rs)",
        &actual,
        &section.columns,
        &listed,
        problems,
    );

    let table = catalog.tables.get(name);
    if table.is_none() {
        problems.push(format!("{what}: no migration creates the table `{name}`"));
    }
    for row in &section.columns {
        let Ok(field) = schema.field_with_name(&row.name) else {
            continue;
        };
        let column = format!("line {}: {what}, column `{}`", row.line, row.name);
        match arrow_name(field.data_type()) {
            Some(arrow) => {
                if row.arrow.as_deref() != Some(arrow) {
                    problems.push(format!(
                        "{column}: the schema's Arrow type is `{arrow}`, the document says `{}`",
                        row.arrow.as_deref().unwrap_or_default()
                    ));
                }
            }
            None => problems.push(format!(
                "{column}: the schema's Arrow type {:?} has no name in the document's format; add one to the format section of docs/data-contract.md and to `arrow_name` in this test",
                field.data_type()
            )),
        }
        if row.nullable != Some(field.is_nullable()) {
            problems.push(format!(
                "{column}: the schema says it {} NULL, the document says null = `{}`",
                if field.is_nullable() {
                    "may be"
                } else {
                    "is never"
                },
                if row.nullable == Some(true) {
                    "yes"
                } else {
                    "no"
                }
            ));
        }
        let Some(table) = table else { continue };
        match table.columns.iter().find(|c| c.name == row.name) {
            Some(pg) => {
                if pg.data_type != row.postgres {
                    problems.push(format!(
                        "{column}: the migrations make it `{}`, the document says `{}`",
                        pg.data_type, row.postgres
                    ));
                }
                if pg.not_null == row.nullable.unwrap_or(true) {
                    problems.push(format!(
                        "{column}: the migrations make it {}, the document says null = `{}`",
                        if pg.not_null { "NOT NULL" } else { "nullable" },
                        if row.nullable == Some(true) {
                            "yes"
                        } else {
                            "no"
                        }
                    ));
                }
            }
            None => problems.push(format!(
                "{column}: the migrations give table `{name}` no such column"
            )),
        }
    }

    let key = table
        .and_then(|t| t.primary_key.clone())
        .unwrap_or_default();
    match &section.key {
        None => problems.push(format!(
            "line {}: {what} has no `Key:` line (`Key: ({})`)",
            section.line,
            key.join(", ")
        )),
        Some(listed) if *listed != key => problems.push(format!(
            "line {}: {what}: the document gives the key ({}), the migrations' primary key is {}",
            section.line,
            listed.join(", "),
            if key.is_empty() {
                "none".to_owned()
            } else {
                format!("({})", key.join(", "))
            }
        )),
        Some(_) => {}
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn the_data_contract_document_matches_the_schemas_and_the_migrations() {
    let problems = contract_problems(CONTRACT, &read_migrations());
    assert!(
        problems.is_empty(),
        "docs/data-contract.md differs from crates/model/src/schema.rs or migrations/:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_document_covers_every_column_of_every_dataset() {
    let mut problems = Vec::new();
    let sections = parse(CONTRACT, &mut problems);
    let documented: usize = sections
        .iter()
        .filter(|s| s.kind == Kind::Dataset)
        .map(|s| s.columns.len())
        .sum();
    let columns: usize = Dataset::ALL.iter().map(|d| d.schema().fields().len()).sum();
    assert_eq!(documented, columns, "{problems:?}");
    assert!(
        sections
            .iter()
            .any(|s| s.kind == Kind::View && !s.columns.is_empty()),
        "no view section was read"
    );
}

/// `doc` with the row of `column` in the section of `dataset` rewritten by
/// `edit` (`None` removes the row).
fn edit_row(
    doc: &str,
    dataset: &str,
    column: &str,
    edit: impl Fn(&str) -> Option<String>,
) -> String {
    let heading = format!("## Dataset `{dataset}`");
    let start = doc.find(&heading).expect("the dataset has a section");
    let row_start = format!("| `{column}` |");
    let at = start + doc[start..].find(&row_start).expect("the column has a row");
    let end = at + doc[at..].find('\n').unwrap() + 1;
    let row = &doc[at..end - 1];
    let replacement = match edit(row) {
        Some(new) => format!("{new}\n"),
        None => String::new(),
    };
    format!("{}{replacement}{}", &doc[..at], &doc[end..])
}

fn problems_of(doc: &str) -> String {
    contract_problems(doc, &read_migrations()).join("\n")
}

#[test]
fn a_changed_type_names_the_dataset_and_the_column() {
    let doc = edit_row(CONTRACT, "summary_breakdown", "links", |row| {
        Some(row.replace("`Int64` / `bigint`", "`Utf8` / `text`"))
    });
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `summary_breakdown`, column `links`: the schema's Arrow type is `Int64`, the document says `Utf8`"),
        "{problems}"
    );
    assert!(
        problems.contains("dataset `summary_breakdown`, column `links`: the migrations make it `bigint`, the document says `text`"),
        "{problems}"
    );
}

#[test]
fn a_changed_nullability_names_the_dataset_and_the_column() {
    let doc = edit_row(CONTRACT, "backlinks", "position", |row| {
        Some(row.replace("| no |", "| yes |"))
    });
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `backlinks`, column `position`: the schema says it is never NULL, the document says null = `yes`"),
        "{problems}"
    );
}

#[test]
fn a_missing_renamed_or_moved_column_is_named() {
    let doc = edit_row(CONTRACT, "runs", "error", |_| None);
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `runs`: column `error` of the schema (crates/model/src/schema.rs) is missing from the document"),
        "{problems}"
    );

    let doc = edit_row(CONTRACT, "summary", "info_cms", |row| {
        Some(row.replace("`info_cms`", "`info_content_system`"))
    });
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `summary`: column `info_cms` of the schema"),
        "{problems}"
    );
    assert!(
        problems.contains(
            "dataset `summary`: the document lists column `info_content_system`, which the schema"
        ),
        "{problems}"
    );

    // `hop` moved before `position`.
    let hop = CONTRACT
        .lines()
        .skip_while(|l| *l != "## Dataset `backlink_redirects`")
        .find(|l| l.starts_with("| `hop` |"))
        .unwrap()
        .to_owned();
    let doc = edit_row(CONTRACT, "backlink_redirects", "hop", |_| None);
    let doc = edit_row(&doc, "backlink_redirects", "position", |row| {
        Some(format!("{hop}\n{row}"))
    });
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `backlink_redirects`: columns out of order: the schema (crates/model/src/schema.rs) has `position` where the document has `hop`"),
        "{problems}"
    );
}

#[test]
fn an_unknown_or_missing_dataset_section_is_named() {
    let doc = CONTRACT.replace("## Dataset `runs`", "## Dataset `run_log`");
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `runs` has no section"),
        "{problems}"
    );
    assert!(
        problems.contains("the section names dataset `run_log`, which does not exist"),
        "{problems}"
    );
}

#[test]
fn a_wrong_key_is_named() {
    let doc = CONTRACT.replace(
        "Key: (pipeline, target, snapshot_date, position, hop)",
        "Key: (pipeline, target, snapshot_date, hop)",
    );
    let problems = problems_of(&doc);
    assert!(
        problems.contains("dataset `backlink_redirects`: the document gives the key (pipeline, target, snapshot_date, hop), the migrations' primary key is (pipeline, target, snapshot_date, position, hop)"),
        "{problems}"
    );
}

#[test]
fn the_migration_reader_reads_what_the_sinks_rely_on() {
    let catalog = read_migrations();
    let requests = &catalog.tables["requests"];
    assert_eq!(requests.primary_key, None);
    // Columns added by later migrations come last, with their own types.
    let added: Vec<&PgColumn> = requests.columns.iter().rev().take(2).collect();
    assert_eq!(
        added,
        [
            &PgColumn {
                name: "announced_limit".into(),
                data_type: "bigint".into(),
                not_null: false,
            },
            &PgColumn {
                name: "replayed".into(),
                data_type: "boolean".into(),
                not_null: true,
            },
        ]
    );
    let summary = &catalog.tables["summary"];
    assert_eq!(
        summary.primary_key.as_deref(),
        Some(
            &[
                "pipeline".to_owned(),
                "target".into(),
                "snapshot_date".into()
            ][..]
        )
    );
    let cost = summary.columns.iter().find(|c| c.name == "cost").unwrap();
    assert_eq!(
        (cost.data_type.as_str(), cost.not_null),
        ("double precision", false)
    );
    let trend = &catalog.views["summary_trend"];
    assert_eq!(trend[0], "pipeline");
    assert_eq!(trend[10], "previous_snapshot_date");
    assert_eq!(
        trend.last().map(String::as_str),
        Some("info_target_spam_score_change")
    );
}
