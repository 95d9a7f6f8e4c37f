//! Tab completion for the shell: SQL and ChainQL keywords, backslash commands, and the names on
//! the chain (tables, their columns, contracts, the `chain.` system tables).

use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;

/// Keywords offered for completion: SQL's common ones and ChainQL's own.
const KEYWORDS: &[&str] = &[
    "ALL",
    "ALTER",
    "AND",
    "AS",
    "ASC",
    "AVG",
    "BEGIN",
    "BETWEEN",
    "BIGINT",
    "BLOCK",
    "BLOCK_HEIGHT",
    "BLOCK_TIME",
    "BOOLEAN",
    "BY",
    "BYTEA",
    "CALL",
    "CALLER",
    "CASE",
    "COMMIT",
    "CONFLICT",
    "CONTRACT",
    "COUNT",
    "CREATE",
    "DECIMAL",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DO",
    "DOUBLE",
    "DROP",
    "ELSE",
    "EMIT",
    "END",
    "EXCLUDED",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FROM",
    "GRANT",
    "GROUP",
    "HAVING",
    "IN",
    "INNER",
    "INSERT",
    "INTEGER",
    "INTO",
    "IS",
    "JOIN",
    "KEY",
    "LEFT",
    "LET",
    "LIKE",
    "LIMIT",
    "MAX",
    "MIN",
    "NOT",
    "NOTHING",
    "NULL",
    "OF",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OWNER",
    "PRIMARY",
    "PUBLIC",
    "REQUIRE",
    "RETURNS",
    "REVOKE",
    "RIGHT",
    "ROLLBACK",
    "SELECT",
    "SET",
    "SHOW",
    "STAKE",
    "SUM",
    "TABLE",
    "TEXT",
    "THEN",
    "TIMESTAMP",
    "TO",
    "TRUE",
    "TX_HASH",
    "UNION",
    "UNIQUE",
    "UNSTAKE",
    "UPDATE",
    "VALUES",
    "VARCHAR",
    "VIEW",
    "WHEN",
    "WHERE",
    "WITH",
];

/// The shell's backslash commands.
pub const COMMANDS: &[&str] = &[
    "\\?",
    "\\conninfo",
    "\\d",
    "\\dC",
    "\\dt",
    "\\h",
    "\\help",
    "\\i",
    "\\include",
    "\\o",
    "\\out",
    "\\q",
    "\\quit",
    "\\timing",
    "\\x",
];

/// What is on the chain, by name, as last read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Names {
    pub tables: Vec<String>,
    /// (table, column), including the system tables' columns.
    pub columns: Vec<(String, String)>,
    pub contracts: Vec<String>,
}

/// The candidates for the word that ends at `pos` in `line`, and where that word starts.
pub fn complete(names: &Names, line: &str, pos: usize) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '\\')))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[start..];
    let mut candidates: Vec<String> = Vec::new();
    let lower = word.to_lowercase();
    let matches = |name: &str| name.to_lowercase().starts_with(&lower) && name.len() > word.len();

    if word.starts_with('\\') {
        // Backslash commands, only as the first word of a line.
        if before[..start].trim().is_empty() {
            candidates.extend(COMMANDS.iter().filter(|c| matches(c)).map(|c| c.to_string()));
        }
    } else if let Some((qualifier, _)) = word.rsplit_once('.') {
        // `table.col`, `chain.blo`: columns of a table, or the system tables.
        for (table, column) in &names.columns {
            if table.eq_ignore_ascii_case(qualifier) {
                let full = format!("{qualifier}.{column}");
                if matches(&full) {
                    candidates.push(full);
                }
            }
        }
        for table in &names.tables {
            if matches(table) && table.contains('.') {
                candidates.push(table.clone());
            }
        }
    } else if !word.is_empty() {
        let upper = word.chars().next().is_some_and(char::is_uppercase);
        for keyword in KEYWORDS {
            if matches(keyword) {
                candidates.push(if upper {
                    keyword.to_string()
                } else {
                    keyword.to_lowercase()
                });
            }
        }
        let columns = names.columns.iter().map(|(_, column)| column);
        for name in names.tables.iter().chain(&names.contracts).chain(columns) {
            if matches(name) {
                candidates.push(name.clone());
            }
        }
    }
    candidates.sort();
    candidates.dedup();
    (start, candidates)
}

/// The shell's line-editor helper: completion from a shared, refreshable set of names.
#[derive(Debug, Default, Clone)]
pub struct ShellHelper {
    pub names: Arc<Mutex<Names>>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let names = self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (start, candidates) = complete(&names, line, pos);
        let pairs = candidates
            .into_iter()
            .map(|c| Pair {
                display: c.clone(),
                replacement: c,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl rustyline::Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            tables: vec!["accounts".into(), "audit".into(), "chain.blocks".into()],
            columns: vec![
                ("accounts".into(), "owner".into()),
                ("accounts".into(), "balance".into()),
                ("chain.blocks".into(), "height".into()),
            ],
            contracts: vec!["transfer".into()],
        }
    }

    fn candidates(line: &str) -> Vec<String> {
        complete(&names(), line, line.len()).1
    }

    #[test]
    fn keywords_keep_the_case_typed() {
        assert_eq!(candidates("SEL"), ["SELECT"]);
        assert_eq!(candidates("sel"), ["select"]);
        assert_eq!(candidates("select * fr"), ["from"]);
    }

    #[test]
    fn names_on_the_chain() {
        assert_eq!(
            candidates("SELECT * FROM a"),
            ["accounts", "all", "alter", "and", "as", "asc", "audit", "avg"]
        );
        assert_eq!(candidates("CALL tr"), ["transfer", "true"]);
        assert_eq!(candidates("SELECT bal"), ["balance"]);
        assert_eq!(candidates("SELECT accounts.o"), ["accounts.owner"]);
        assert_eq!(candidates("SELECT * FROM chain.b"), ["chain.blocks"]);
        assert_eq!(candidates("SELECT chain.blocks.h"), ["chain.blocks.height"]);
    }

    #[test]
    fn backslash_commands_only_start_a_line() {
        assert_eq!(candidates("\\d"), ["\\dC", "\\dt"]);
        assert_eq!(candidates("  \\ti"), ["\\timing"]);
        assert!(candidates("SELECT \\d").is_empty());
    }

    #[test]
    fn the_word_starts_after_the_last_separator() {
        let (start, found) = complete(&names(), "SELECT owner,bal FROM accounts", 16);
        assert_eq!(start, 13);
        assert_eq!(found, ["balance"]);
        // A complete word offers nothing more.
        assert!(candidates("SELECT").is_empty());
        assert!(candidates("").is_empty());
    }
}
