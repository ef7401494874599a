//! The column types of a table, read once from the Postgres catalog and
//! cached by the sink.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::PgConnection;

use crate::copy::quote_ident;
use crate::{Error, Result};

/// A Postgres column type the COPY encoder knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgType {
    /// `text`, `character varying`, `character`.
    Text,
    Json,
    Jsonb,
    Int8,
    Float8,
    Bool,
    Date,
    Timestamptz,
    Timestamp,
    /// `text[]` (element oid 25) or `character varying[]` (1043).
    TextArray {
        element_oid: u32,
    },
    /// Any other type, by its `regtype` name; nothing is written to it.
    Other(String),
}

impl PgType {
    /// Parses a name as `atttypid::regtype::text` prints it.
    pub(crate) fn from_regtype(name: &str) -> Self {
        match name {
            "text" | "character varying" | "character" => PgType::Text,
            "json" => PgType::Json,
            "jsonb" => PgType::Jsonb,
            "bigint" => PgType::Int8,
            "double precision" => PgType::Float8,
            "boolean" => PgType::Bool,
            "date" => PgType::Date,
            "timestamp with time zone" => PgType::Timestamptz,
            "timestamp without time zone" => PgType::Timestamp,
            "text[]" => PgType::TextArray { element_oid: 25 },
            "character varying[]" => PgType::TextArray { element_oid: 1043 },
            other => PgType::Other(other.to_owned()),
        }
    }

    /// The type's name, for messages.
    pub(crate) fn name(&self) -> &str {
        match self {
            PgType::Text => "text",
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::Int8 => "bigint",
            PgType::Float8 => "double precision",
            PgType::Bool => "boolean",
            PgType::Date => "date",
            PgType::Timestamptz => "timestamp with time zone",
            PgType::Timestamp => "timestamp without time zone",
            PgType::TextArray { element_oid: 1043 } => "character varying[]",
            PgType::TextArray { .. } => "text[]",
            PgType::Other(name) => name,
        }
    }
}

/// The columns of one table by name.
#[derive(Debug)]
pub(crate) struct TableColumns {
    name: String,
    columns: HashMap<String, PgType>,
}

impl TableColumns {
    pub(crate) fn new(name: impl Into<String>, columns: HashMap<String, PgType>) -> Self {
        Self {
            name: name.into(),
            columns,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn get(&self, column: &str) -> Option<&PgType> {
        self.columns.get(column)
    }
}

/// Column types per table, filled on first use.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    tables: Mutex<HashMap<String, Arc<TableColumns>>>,
}

impl Catalog {
    /// The columns of `table`, from the cache or else from the catalog (read
    /// on `conn`, so a caller inside a transaction needs no second
    /// connection).
    pub(crate) async fn columns(
        &self,
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Arc<TableColumns>> {
        if let Some(found) = self.lock().get(table) {
            return Ok(found.clone());
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT attname::text, atttypid::regtype::text FROM pg_attribute \
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
        )
        .bind(quote_ident(table))
        .fetch_all(conn)
        .await
        .map_err(|source| Error::Query {
            action: format!("reading the columns of table {table}"),
            source,
        })?;
        let columns = rows
            .into_iter()
            .map(|(name, ty)| (name, PgType::from_regtype(&ty)))
            .collect();
        let found = Arc::new(TableColumns::new(table, columns));
        self.lock().insert(table.to_owned(), found.clone());
        Ok(found)
    }

    /// Forgets every table (after a migration changed them).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TableColumns>>> {
        // The map stays consistent even if a holder panicked: every update is
        // a single insert or clear.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regtype_names_map_to_encodings() {
        assert_eq!(PgType::from_regtype("bigint"), PgType::Int8);
        assert_eq!(
            PgType::from_regtype("timestamp with time zone"),
            PgType::Timestamptz
        );
        assert_eq!(
            PgType::from_regtype("text[]"),
            PgType::TextArray { element_oid: 25 }
        );
        assert_eq!(PgType::from_regtype("jsonb"), PgType::Jsonb);
        assert_eq!(
            PgType::from_regtype("numeric"),
            PgType::Other("numeric".into())
        );
        assert_eq!(PgType::from_regtype("integer").name(), "integer");
    }
}
