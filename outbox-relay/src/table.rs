//! Names of the outbox table and of everything the relay derives from it.
//!
//! Role: the one place where a table name given by a user is checked and
//! turned into SQL identifiers. Every other module builds its SQL from a
//! [`TableName`], never from a raw string.
//!
//! Invariants:
//! - A [`TableName`] holds only lower-case ASCII letters, digits and
//!   underscores, not starting with a digit. Lower case only, because
//!   PostgreSQL folds the unquoted names in the application's own SQL to lower
//!   case: the table the relay creates (always quoted) is then the one
//!   `INSERT INTO postbox_outbox` reaches. The alphabet also fits the broker's
//!   producer-name rule, which the fenced relay identity will use.
//! - Every name derived from it (dead-letter table, index, trigger function,
//!   trigger) fits PostgreSQL's identifier limit, so PostgreSQL never silently
//!   truncates one (two long table names could otherwise share an index name).
//! - Identifiers are always double-quoted and literals single-quoted when put
//!   into SQL, even though the alphabet above needs neither.
//! - The relay's own tables live in the outbox table's schema: a
//!   schema-qualified outbox table has schema-qualified siblings.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The default outbox table, as docs/DESIGN.md names it.
pub const DEFAULT_TABLE: &str = "postbox_outbox";
/// The relay's leadership table: one row per outbox table, holding the epoch
/// of its latest leader.
pub const LEADER_TABLE: &str = "postbox_relay_leader";
/// PostgreSQL's identifier limit in bytes (NAMEDATALEN - 1 in a default build);
/// longer names are truncated with only a NOTICE.
pub const IDENTIFIER_BYTES_MAX: usize = 63;

/// Suffix of the dead-letter table: `postbox_outbox_dead_letters`.
const DEAD_LETTERS_SUFFIX: &str = "_dead_letters";
/// Suffix of the partial index over unpublished rows.
const UNPUBLISHED_INDEX_SUFFIX: &str = "_unpublished_idx";
/// Suffix of the partial index over published rows (cleanup in mark mode).
const PUBLISHED_INDEX_SUFFIX: &str = "_published_idx";
/// Suffix of the dead-letter table's index by topic and partition key, which
/// the claim consults to hold back later rows of a dead-lettered key.
const HELD_INDEX_SUFFIX: &str = "_held_idx";
/// Suffix of the NOTIFY trigger and of its function.
const NOTIFY_SUFFIX: &str = "_notify";

/// The longest outbox table name: the identifier limit less the longest
/// suffix the relay appends to it.
pub const TABLE_NAME_BYTES_MAX: usize = IDENTIFIER_BYTES_MAX - UNPUBLISHED_INDEX_SUFFIX.len();

const _: () = assert!(TABLE_NAME_BYTES_MAX + DEAD_LETTERS_SUFFIX.len() <= IDENTIFIER_BYTES_MAX);
const _: () =
    assert!(TABLE_NAME_BYTES_MAX + UNPUBLISHED_INDEX_SUFFIX.len() <= IDENTIFIER_BYTES_MAX);
const _: () = assert!(TABLE_NAME_BYTES_MAX + NOTIFY_SUFFIX.len() <= IDENTIFIER_BYTES_MAX);
const _: () = assert!(TABLE_NAME_BYTES_MAX + PUBLISHED_INDEX_SUFFIX.len() <= IDENTIFIER_BYTES_MAX);
const _: () = assert!(TABLE_NAME_BYTES_MAX + HELD_INDEX_SUFFIX.len() <= IDENTIFIER_BYTES_MAX);
const _: () = assert!(LEADER_TABLE.len() <= IDENTIFIER_BYTES_MAX);
const _: () = assert!(DEFAULT_TABLE.len() <= TABLE_NAME_BYTES_MAX);

/// The identifier rule, as error messages and `--help` state it.
pub const TABLE_NAME_RULE: &str = "a table name is 1 to 47 bytes of lower-case ASCII letters, \
     digits and underscores, not starting with a digit, optionally preceded by a schema name \
     of the same alphabet (up to 63 bytes) and a dot, as in `app.postbox_outbox`";

// The rule's text states the limits as numbers; keep them in step.
const _: () = assert!(TABLE_NAME_BYTES_MAX == 47 && IDENTIFIER_BYTES_MAX == 63);

/// A validated outbox table name, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema, when the name was qualified; otherwise PostgreSQL's
    /// `search_path` decides.
    schema: Option<String>,
    /// The table's own name, unqualified.
    name: String,
}

impl TableName {
    /// Checks `text` against the identifier rule ([`TABLE_NAME_RULE`]).
    pub fn parse(text: &str) -> Result<TableName> {
        let invalid = |reason: String| Error::InvalidTableName {
            name: text.to_owned(),
            reason,
        };
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, text),
        };
        if let Some(schema) = schema {
            check_identifier(schema, IDENTIFIER_BYTES_MAX)
                .map_err(|reason| invalid(format!("schema {reason}")))?;
        }
        check_identifier(name, TABLE_NAME_BYTES_MAX).map_err(invalid)?;
        Ok(TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The table's own name, without its schema: the key of its row in the
    /// leadership table.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema, when the name was qualified.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The outbox table as a quoted SQL identifier: `"postbox_outbox"` or
    /// `"app"."postbox_outbox"`.
    pub fn quoted(&self) -> String {
        self.qualify(&self.name)
    }

    /// The dead-letter table, quoted and qualified like the outbox table.
    pub fn dead_letters_quoted(&self) -> String {
        self.qualify(&format!("{}{DEAD_LETTERS_SUFFIX}", self.name))
    }

    /// The leadership table beside the outbox table, quoted.
    pub fn leader_table_quoted(&self) -> String {
        self.qualify(LEADER_TABLE)
    }

    /// The partial index over unpublished rows, quoted and unqualified, as
    /// `CREATE INDEX` wants it (an index lives in its table's schema).
    pub fn unpublished_index_quoted(&self) -> String {
        quote_identifier(&format!("{}{UNPUBLISHED_INDEX_SUFFIX}", self.name))
    }

    /// The partial index over published rows, quoted and unqualified.
    pub fn published_index_quoted(&self) -> String {
        quote_identifier(&format!("{}{PUBLISHED_INDEX_SUFFIX}", self.name))
    }

    /// The dead-letter table's index by topic and key, quoted and unqualified.
    pub fn held_index_quoted(&self) -> String {
        quote_identifier(&format!("{}{HELD_INDEX_SUFFIX}", self.name))
    }

    /// The NOTIFY trigger function, quoted and qualified like the table.
    pub fn notify_function_quoted(&self) -> String {
        self.qualify(&self.notify_trigger_name())
    }

    /// The NOTIFY trigger's name, unquoted (triggers are named per table).
    pub fn notify_trigger_name(&self) -> String {
        format!("{}{NOTIFY_SUFFIX}", self.name)
    }

    /// `relation` in this table's schema, quoted.
    fn qualify(&self, relation: &str) -> String {
        match &self.schema {
            Some(schema) => format!(
                "{}.{}",
                quote_identifier(schema),
                quote_identifier(relation)
            ),
            None => quote_identifier(relation),
        }
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName {
            schema: None,
            name: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl FromStr for TableName {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        TableName::parse(text)
    }
}

/// As the user writes it: `postbox_outbox` or `app.postbox_outbox`.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Checks one identifier: which part of the rule it breaks, if any.
fn check_identifier(identifier: &str, bytes_max: usize) -> std::result::Result<(), String> {
    let Some(first) = identifier.chars().next() else {
        return Err("is empty".to_owned());
    };
    if identifier.len() > bytes_max {
        return Err(format!(
            "is {} bytes, over the limit of {bytes_max}",
            identifier.len()
        ));
    }
    if first.is_ascii_digit() {
        return Err(format!("starts with the digit {first:?}"));
    }
    match identifier
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some(c) if c.is_ascii_uppercase() => Err(format!("has the upper-case letter {c:?}")),
        Some(c) => Err(format!("has the character {c:?}")),
        None => Ok(()),
    }
}

/// `identifier` as a double-quoted SQL identifier, inner quotes doubled.
pub(crate) fn quote_identifier(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// `text` as a single-quoted SQL string literal, inner quotes doubled.
/// (Sessions run with `standard_conforming_strings = on`, the default since
/// PostgreSQL 9.1, so backslashes need no escaping.)
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> String {
        match TableName::parse(text) {
            Err(Error::InvalidTableName { reason, .. }) => reason,
            other => panic!("{text:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn default_table_is_valid_and_unqualified() {
        let table = TableName::parse(DEFAULT_TABLE).expect("the default name is valid");
        assert_eq!(table, TableName::default());
        assert_eq!(table.quoted(), "\"postbox_outbox\"");
        assert_eq!(
            table.dead_letters_quoted(),
            "\"postbox_outbox_dead_letters\""
        );
        assert_eq!(table.leader_table_quoted(), "\"postbox_relay_leader\"");
        assert_eq!(
            table.unpublished_index_quoted(),
            "\"postbox_outbox_unpublished_idx\""
        );
        assert_eq!(table.notify_function_quoted(), "\"postbox_outbox_notify\"");
        assert_eq!(table.notify_trigger_name(), "postbox_outbox_notify");
        assert_eq!(table.to_string(), "postbox_outbox");
    }

    #[test]
    fn schema_qualified_names_qualify_their_siblings() {
        let table = TableName::parse("app.events").expect("valid");
        assert_eq!(table.schema(), Some("app"));
        assert_eq!(table.name(), "events");
        assert_eq!(table.quoted(), "\"app\".\"events\"");
        assert_eq!(
            table.dead_letters_quoted(),
            "\"app\".\"events_dead_letters\""
        );
        assert_eq!(
            table.leader_table_quoted(),
            "\"app\".\"postbox_relay_leader\""
        );
        assert_eq!(table.notify_function_quoted(), "\"app\".\"events_notify\"");
        // An index is created in its table's schema and cannot be qualified.
        assert_eq!(
            table.unpublished_index_quoted(),
            "\"events_unpublished_idx\""
        );
        assert_eq!(table.to_string(), "app.events");
    }

    #[test]
    fn table_name_at_the_limit_is_accepted_and_one_over_is_refused() {
        let at_limit = "t".repeat(TABLE_NAME_BYTES_MAX);
        assert!(TableName::parse(&at_limit).is_ok());
        let over = "t".repeat(TABLE_NAME_BYTES_MAX + 1);
        assert_eq!(reason(&over), "is 48 bytes, over the limit of 47");
    }

    #[test]
    fn schema_at_the_limit_is_accepted_and_one_over_is_refused() {
        let at_limit = format!("{}.t", "s".repeat(IDENTIFIER_BYTES_MAX));
        assert!(TableName::parse(&at_limit).is_ok());
        let over = format!("{}.t", "s".repeat(IDENTIFIER_BYTES_MAX + 1));
        assert_eq!(reason(&over), "schema is 64 bytes, over the limit of 63");
    }

    #[test]
    fn names_outside_the_alphabet_are_refused_with_the_offending_part() {
        assert_eq!(reason(""), "is empty");
        assert_eq!(reason("app."), "is empty");
        assert_eq!(reason(".events"), "schema is empty");
        assert_eq!(reason("1outbox"), "starts with the digit '1'");
        assert_eq!(reason("Outbox"), "has the upper-case letter 'O'");
        assert_eq!(reason("out-box"), "has the character '-'");
        assert_eq!(
            reason("outbox\"; drop table x; --"),
            "has the character '\"'"
        );
        assert_eq!(reason("a.b.c"), "has the character '.'");
        assert_eq!(reason("ütbox"), "has the character 'ü'");
        assert_eq!(reason("out box"), "has the character ' '");
    }

    #[test]
    fn underscores_and_digits_are_accepted() {
        for name in ["_outbox", "outbox_2", "billing_v2.outbox"] {
            assert!(TableName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn quoting_doubles_inner_quotes() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
