//! SQL text: splitting scripts into statements, parsing, and the checks a statement must pass to
//! be part of a transaction.
//!
//! Statements are parsed with sqlparser's PostgreSQL dialect, the same sqlparser that DataFusion
//! re-exports, so the planner can hand the AST to DataFusion without printing and re-parsing it.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectType, Statement, visit_expressions};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::contract::{ChainStatement, parse_chain_statement};
use crate::{Error, Result};

pub use sqlparser;

/// Functions whose value inside a transaction is the block's timestamp, so every validator
/// computes the same result.
pub const BLOCK_TIME_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "today",
    "transaction_timestamp",
    "statement_timestamp",
];

/// Functions refused inside a transaction: their value differs between validators or runs.
pub const NON_DETERMINISTIC_FUNCTIONS: &[&str] = &[
    "random",
    "rand",
    "setseed",
    "uuid",
    "gen_random_uuid",
    "clock_timestamp",
    "timeofday",
    "version",
    "pg_backend_pid",
    "input_file_name",
    "file_row_index",
];

/// Recursion depth bound while parsing, so deeply nested input is an error, not a stack overflow.
pub(crate) const PARSE_DEPTH_MAX: usize = 64;

/// What a statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    CreateTable,
    DropTable,
    Insert,
    Update,
    Delete,
    /// `GRANT ... ON table TO account`.
    Grant,
    /// `REVOKE ... ON table FROM account`.
    Revoke,
    /// `CREATE CONTRACT`.
    CreateContract,
    /// `DROP CONTRACT`.
    DropContract,
    /// `CALL contract(...)`.
    Call,
    /// `STAKE n`.
    Stake,
    /// `UNSTAKE n`.
    Unstake,
    /// A read: answered from committed state, never part of a transaction.
    Query,
    /// `BEGIN`/`START TRANSACTION`.
    Begin,
    /// `COMMIT`/`END`.
    Commit,
    /// `ROLLBACK`/`ABORT`.
    Rollback,
    /// Anything else (`SHOW`, `EXPLAIN`, `SET`, ...): answered by the query engine.
    Other,
}

impl StatementKind {
    /// True for statements that change state and so must travel in a signed transaction.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            StatementKind::CreateTable
                | StatementKind::DropTable
                | StatementKind::Insert
                | StatementKind::Update
                | StatementKind::Delete
                | StatementKind::Grant
                | StatementKind::Revoke
                | StatementKind::CreateContract
                | StatementKind::DropContract
                | StatementKind::Call
                | StatementKind::Stake
                | StatementKind::Unstake
        )
    }

    /// The command tag of a write: "INSERT", "CREATE TABLE", ...
    pub fn command_tag(self) -> &'static str {
        match self {
            StatementKind::CreateTable => "CREATE TABLE",
            StatementKind::DropTable => "DROP TABLE",
            StatementKind::Insert => "INSERT",
            StatementKind::Update => "UPDATE",
            StatementKind::Delete => "DELETE",
            StatementKind::Grant => "GRANT",
            StatementKind::Revoke => "REVOKE",
            StatementKind::CreateContract => "CREATE CONTRACT",
            StatementKind::DropContract => "DROP CONTRACT",
            StatementKind::Call => "CALL",
            StatementKind::Stake => "STAKE",
            StatementKind::Unstake => "UNSTAKE",
            StatementKind::Query => "SELECT",
            StatementKind::Begin => "BEGIN",
            StatementKind::Commit => "COMMIT",
            StatementKind::Rollback => "ROLLBACK",
            StatementKind::Other => "",
        }
    }
}

/// Classifies a parsed statement.
pub fn classify(statement: &Statement) -> StatementKind {
    match statement {
        Statement::CreateTable(_) => StatementKind::CreateTable,
        Statement::Drop {
            object_type: ObjectType::Table,
            ..
        } => StatementKind::DropTable,
        Statement::Insert(_) => StatementKind::Insert,
        Statement::Update(_) => StatementKind::Update,
        Statement::Delete(_) => StatementKind::Delete,
        Statement::Grant(_) => StatementKind::Grant,
        Statement::Revoke(_) => StatementKind::Revoke,
        Statement::Call(_) => StatementKind::Call,
        Statement::Query(_) => StatementKind::Query,
        Statement::StartTransaction { .. } => StatementKind::Begin,
        Statement::Commit { .. } => StatementKind::Commit,
        Statement::Rollback { .. } => StatementKind::Rollback,
        _ => StatementKind::Other,
    }
}

/// Parses text holding exactly one statement (a trailing `;` is allowed).
pub fn parse_statement(sql: &str) -> Result<Statement> {
    let mut statements = parse_statements(sql)?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        0 => Err(Error::Sql("empty statement".into())),
        n => Err(Error::Sql(format!("expected one statement, found {n}"))),
    }
}

/// Parses text holding any number of `;`-separated statements.
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(PARSE_DEPTH_MAX)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| Error::Sql(e.to_string()))
}

/// Parses one statement of a transaction and checks that it may run as one: it is a write (or a
/// contract definition or call), and it calls no non-deterministic function.
pub fn parse_transaction_statement(sql: &str) -> Result<(ChainStatement, StatementKind)> {
    let statement = parse_chain_statement(sql)?;
    let kind = statement.kind();
    if !kind.is_write() {
        return Err(Error::NotATransactionStatement(first_words(sql)));
    }
    if let ChainStatement::Sql(statement) = &statement {
        check_deterministic(statement)?;
    }
    Ok((statement, kind))
}

/// Refuses a statement that calls a function from [`NON_DETERMINISTIC_FUNCTIONS`].
pub fn check_deterministic(statement: &Statement) -> Result<()> {
    let found = visit_expressions(statement, |expr| {
        if let Expr::Function(function) = expr {
            let name = function.name.to_string().to_ascii_lowercase();
            let base = name.rsplit('.').next().unwrap_or(&name).trim_matches('"');
            if NON_DETERMINISTIC_FUNCTIONS.contains(&base) {
                return ControlFlow::Break(base.to_string());
            }
        }
        ControlFlow::Continue(())
    });
    match found {
        ControlFlow::Break(name) => Err(Error::NonDeterministic(name)),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// The shape of most transactions, `CALL name(literal, …)`, parsed without the general parser:
/// the same AST sqlparser builds (a test compares the two over many inputs), or `None` for
/// anything else, which then takes the general parser. Literals are single-quoted strings
/// without backslashes, unsigned or negated integers and decimals, `TRUE`, `FALSE` and `NULL`;
/// names are one or two unquoted identifiers that are not SQL keywords.
pub fn parse_literal_call(sql: &str) -> Option<Statement> {
    use sqlparser::ast::{
        Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
        UnaryOperator, Value,
    };

    struct Cursor<'a> {
        text: &'a str,
        at: usize,
    }
    impl<'a> Cursor<'a> {
        fn peek(&self) -> Option<u8> {
            self.text.as_bytes().get(self.at).copied()
        }
        fn skip_space(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.at += 1;
            }
        }
        fn eat(&mut self, byte: u8) -> bool {
            self.skip_space();
            if self.peek() == Some(byte) {
                self.at += 1;
                true
            } else {
                false
            }
        }
        /// An unquoted identifier or keyword, as written.
        fn word(&mut self) -> Option<&'a str> {
            self.skip_space();
            let start = self.at;
            if !matches!(self.peek(), Some(b) if b.is_ascii_alphabetic() || b == b'_') {
                return None;
            }
            while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
                self.at += 1;
            }
            Some(&self.text[start..self.at])
        }
        fn digits(&mut self) -> bool {
            let start = self.at;
            while matches!(self.peek(), Some(b) if b.is_ascii_digit()) {
                self.at += 1;
            }
            self.at > start
        }
        /// A literal, or `None` when the text holds something else.
        fn literal(&mut self) -> Option<Expr> {
            self.skip_space();
            let negative = self.peek() == Some(b'-');
            if negative {
                self.at += 1;
                self.skip_space();
                // `- -1`, `--` (a comment) and the like take the general parser.
                if !matches!(self.peek(), Some(b) if b.is_ascii_digit()) {
                    return None;
                }
            }
            let value = match self.peek()? {
                b'\'' => {
                    self.at += 1;
                    let mut text = String::new();
                    loop {
                        let rest = &self.text[self.at..];
                        let end = rest.find('\'')?;
                        if rest[..end].contains('\\') {
                            return None;
                        }
                        text.push_str(&rest[..end]);
                        self.at += end + 1;
                        if self.peek() != Some(b'\'') {
                            break;
                        }
                        text.push('\'');
                        self.at += 1;
                    }
                    Value::SingleQuotedString(text)
                }
                b if b.is_ascii_digit() => {
                    let start = self.at;
                    self.digits();
                    if self.peek() == Some(b'.') {
                        self.at += 1;
                        if !self.digits() {
                            return None;
                        }
                    }
                    // Exponents, `1_000`, `0x1f` and numbers running into words: general parser.
                    if matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
                        return None;
                    }
                    Value::Number(self.text[start..self.at].to_string(), false)
                }
                _ => match self.word()?.to_ascii_lowercase().as_str() {
                    "true" => Value::Boolean(true),
                    "false" => Value::Boolean(false),
                    "null" => Value::Null,
                    _ => return None,
                },
            };
            let expr = Expr::value(value);
            Some(if negative {
                Expr::UnaryOp {
                    op: UnaryOperator::Minus,
                    expr: Box::new(expr),
                }
            } else {
                expr
            })
        }
    }
    fn keyword(word: &str) -> bool {
        let upper = word.to_ascii_uppercase();
        sqlparser::keywords::ALL_KEYWORDS
            .binary_search(&upper.as_str())
            .is_ok()
    }

    let mut cursor = Cursor { text: sql, at: 0 };
    if !cursor.word()?.eq_ignore_ascii_case("call") {
        return None;
    }
    let mut name = Vec::with_capacity(2);
    loop {
        let part = cursor.word()?;
        if keyword(part) {
            return None;
        }
        name.push(Ident::new(part));
        if !cursor.eat(b'.') {
            break;
        }
        if name.len() == 2 {
            return None;
        }
    }
    if !cursor.eat(b'(') {
        return None;
    }
    let mut args = Vec::new();
    if !cursor.eat(b')') {
        loop {
            args.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(cursor.literal()?)));
            if cursor.eat(b')') {
                break;
            }
            if !cursor.eat(b',') {
                return None;
            }
        }
    }
    cursor.eat(b';');
    cursor.skip_space();
    if cursor.at != sql.len() {
        return None;
    }
    Some(Statement::Call(Function {
        name: ObjectName::from(name),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args,
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    }))
}

/// Finds a query's `AS OF BLOCK n` clause: the whole statement then reads the state after block
/// `n`. The clause may stand anywhere at the statement's top level (conventionally after its
/// `FROM` list, as CockroachDB places `AS OF SYSTEM TIME`), at most once, and is cut out of the
/// text the query planner sees. Returns the text unchanged and `None` when there is no clause.
pub fn split_as_of(sql: &str) -> Result<(String, Option<u64>)> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};

    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Sql(e.to_string()))?;
    // Byte offset of each line's start, to turn token locations (line, char column) into bytes.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> usize {
        let start = line_starts
            .get(line.saturating_sub(1) as usize)
            .copied()
            .unwrap_or(sql.len());
        sql[start..]
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let words: Vec<(usize, &Token)> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)))
        .map(|(i, t)| (i, &t.token))
        .collect();
    let keyword =
        |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k && w.quote_style.is_none());
    let mut depth = 0i64;
    let mut found: Option<(usize, usize, u64)> = None;
    for (w, (_, token)) in words.iter().enumerate() {
        match token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ => {}
        }
        let is_clause = keyword(token, Keyword::AS)
            && words.get(w + 1).is_some_and(|(_, t)| keyword(t, Keyword::OF))
            && words
                .get(w + 2)
                .is_some_and(|(_, t)| matches!(t, Token::Word(b) if b.quote_style.is_none() && b.value.eq_ignore_ascii_case("block")));
        if !is_clause {
            continue;
        }
        if depth != 0 {
            return Err(Error::Sql(
                "AS OF BLOCK applies to a whole statement: write it once, outside parentheses".into(),
            ));
        }
        if found.is_some() {
            return Err(Error::Sql(
                "AS OF BLOCK may appear only once in a statement".into(),
            ));
        }
        let height = match words.get(w + 3) {
            Some((_, Token::Number(n, false))) => n.parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            Error::Sql("AS OF BLOCK takes a block height: a whole number, such as AS OF BLOCK 42".into())
        })?;
        let first = &tokens[words[w].0].span.start;
        let last = &tokens[words[w + 3].0].span.end;
        found = Some((
            offset(first.line, first.column),
            offset(last.line, last.column),
            height,
        ));
    }
    Ok(match found {
        None => (sql.to_string(), None),
        Some((start, end, height)) => (format!("{}{}", &sql[..start], &sql[end..]), Some(height)),
    })
}

/// The result of splitting a script at its top-level semicolons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// Complete statements, without their terminating `;`, trimmed, comments-only pieces left out.
    pub statements: Vec<&'a str>,
    /// Text after the last `;`: an unfinished statement (or only whitespace and comments).
    pub remainder: &'a str,
}

impl Split<'_> {
    /// True when the remainder holds something besides whitespace and comments.
    pub fn has_unfinished_statement(&self) -> bool {
        has_content(self.remainder)
    }
}

/// Splits SQL text at the semicolons that end statements, respecting quoted strings and
/// identifiers, dollar-quoted bodies, and comments.
pub fn split_statements(text: &str) -> Split<'_> {
    let bytes = text.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => {
                let piece = text[start..i].trim();
                if has_content(piece) {
                    statements.push(piece);
                }
                start = i + 1;
                i += 1;
            }
            _ => i = skip_token(bytes, i),
        }
    }
    Split {
        statements,
        remainder: &text[start..],
    }
}

/// True when `text` holds something besides whitespace and comments.
fn has_content(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if starts_comment(bytes, i) {
            i = skip_token(bytes, i);
        } else {
            return true;
        }
    }
    false
}

fn starts_comment(bytes: &[u8], i: usize) -> bool {
    matches!(
        (bytes.get(i), bytes.get(i + 1)),
        (Some(b'-'), Some(b'-')) | (Some(b'/'), Some(b'*'))
    )
}

/// Returns the index just past the token starting at `i`: a whole quoted string, identifier,
/// dollar-quoted body or comment, or a single byte otherwise. An unterminated token runs to the
/// end of the text.
fn skip_token(bytes: &[u8], i: usize) -> usize {
    let len = bytes.len();
    match bytes[i] {
        b'-' if bytes.get(i + 1) == Some(&b'-') => {
            let mut j = i + 2;
            while j < len && bytes[j] != b'\n' {
                j += 1;
            }
            j
        }
        b'/' if bytes.get(i + 1) == Some(&b'*') => {
            // PostgreSQL block comments nest.
            let mut depth = 1;
            let mut j = i + 2;
            while j < len && depth > 0 {
                if bytes[j] == b'/' && bytes.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if bytes[j] == b'*' && bytes.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            j
        }
        quote @ (b'\'' | b'"') => {
            // E'...' strings allow backslash escapes.
            let backslash_escapes = quote == b'\''
                && i > 0
                && matches!(bytes[i - 1], b'e' | b'E')
                && (i < 2 || !(bytes[i - 2].is_ascii_alphanumeric() || bytes[i - 2] == b'_'));
            let mut j = i + 1;
            while j < len {
                if backslash_escapes && bytes[j] == b'\\' {
                    j += 2;
                } else if bytes[j] == quote {
                    if bytes.get(j + 1) == Some(&quote) {
                        j += 2;
                    } else {
                        return j + 1;
                    }
                } else {
                    j += 1;
                }
            }
            len
        }
        b'$' => match dollar_tag(bytes, i) {
            Some(tag_end) => {
                let tag = &bytes[i..tag_end];
                let mut j = tag_end;
                while j + tag.len() <= len {
                    if &bytes[j..j + tag.len()] == tag {
                        return j + tag.len();
                    }
                    j += 1;
                }
                len
            }
            None => i + 1,
        },
        _ => i + 1,
    }
}

/// If a dollar-quote opening tag (`$$` or `$name$`) starts at `i`, returns the index past it.
/// `$1` is a parameter, not a tag: a tag never starts with a digit.
fn dollar_tag(bytes: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
        return None;
    }
    let mut j = i + 1;
    if bytes.get(j).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    while let Some(&c) = bytes.get(j) {
        if c == b'$' {
            return Some(j + 1);
        }
        if !(c.is_ascii_alphanumeric() || c == b'_') {
            return None;
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path for `CALL name(literals)` builds exactly what the general parser builds,
    /// and leaves everything else to it.
    #[test]
    fn literal_calls_parse_as_the_general_parser_does() {
        let general = |sql: &str| parse_statement(sql).ok();
        let taken = [
            "CALL transfer('0x00000000000000000000000000000000000000aa', 1)",
            "call Transfer ( 'it''s' ,\n\t-5 , 1.25, TRUE, false, NULL ) ;",
            "CALL tokens.transfer('0xbb', 7)",
            "CALL f()",
            "CALL f('')",
            "CALL f('''')",
            "CALL f(- 3)",
            "CALL f(007)",
            "CALL f('é ✓')",
            "CALL my_contract_2(0.5, '', 12345678901234567890123)",
        ];
        for sql in taken {
            let fast = parse_literal_call(sql).unwrap_or_else(|| panic!("{sql} takes the fast path"));
            assert_eq!(Some(fast), general(sql), "{sql}");
        }
        let left = [
            "CALL f(E'a\\nb')",
            "CALL f('a\\b')",
            "CALL f(1e5)",
            "CALL f(1.)",
            "CALL f(.5)",
            "CALL f(0x1f)",
            "CALL f(1_000)",
            "CALL f(x)",
            "CALL f(1 + 2)",
            "CALL f(-'a')",
            "CALL f(--1\n)",
            "CALL f(1) -- comment",
            "CALL f(1) /* c */",
            "CALL f(1); CALL g(2)",
            "CALL select(1)",
            "CALL chain.transfer('0xbb', 7)",
            "CALL \"f\"(1)",
            "CALL a.b.c(1)",
            "CALL f(1,)",
            "CALL f(1",
            "CALL f('unterminated)",
            "CALL f(a => 1)",
            "CALL f",
            "SELECT 1",
            "CALLS f(1)",
            "CALL f(1)x",
        ];
        for sql in left {
            assert_eq!(
                parse_literal_call(sql),
                None,
                "{sql} is left to the general parser"
            );
        }
        // Random calls built from literal pieces agree with the general parser whenever the
        // fast path takes them.
        let pieces = [
            "'a'", "''", "'x''y'", "0", "42", "-7", "3.14", "TRUE", "null", "x", "1e3", "'\\'",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut taken = 0;
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let count = (state % 4) as usize;
            let args: Vec<&str> = (0..count)
                .map(|i| pieces[((state >> (8 * i + 8)) % pieces.len() as u64) as usize])
                .collect();
            let sql = format!(
                "CALL f({})",
                args.join(if state.is_multiple_of(3) { "," } else { " , " })
            );
            if let Some(fast) = parse_literal_call(&sql) {
                taken += 1;
                assert_eq!(Some(fast), general(&sql), "{sql}");
            }
        }
        assert!(taken > 500, "{taken}");
    }

    #[test]
    fn as_of_block_is_cut_out_of_the_statement() {
        let (sql, height) =
            split_as_of("SELECT * FROM t AS OF BLOCK 42 WHERE a = 'AS OF BLOCK 7'").expect("splits");
        assert_eq!(sql, "SELECT * FROM t  WHERE a = 'AS OF BLOCK 7'");
        assert_eq!(height, Some(42));
        let (sql, height) = split_as_of("SELECT 'é'\n  FROM t as of block 3;").expect("splits");
        assert_eq!(sql, "SELECT 'é'\n  FROM t ;");
        assert_eq!(height, Some(3));
        let (sql, height) = split_as_of("SELECT x AS \"of\" FROM t").expect("splits");
        assert_eq!((sql.as_str(), height), ("SELECT x AS \"of\" FROM t", None));
        for bad in [
            "SELECT * FROM t AS OF BLOCK -1",
            "SELECT * FROM t AS OF BLOCK 1.5",
            "SELECT * FROM t AS OF BLOCK",
            "SELECT * FROM t AS OF BLOCK 1 AS OF BLOCK 2",
            "SELECT * FROM (SELECT * FROM t AS OF BLOCK 1) s",
        ] {
            assert!(split_as_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let split = split_statements(
            "INSERT INTO t VALUES ('a;b'); -- c;d\n SELECT \"x;y\" FROM t; SELECT $$;$$, $q$;$q$; /* ; /* ; */ ; */ SELECT 1",
        );
        assert_eq!(
            split.statements,
            [
                "INSERT INTO t VALUES ('a;b')",
                "-- c;d\n SELECT \"x;y\" FROM t",
                "SELECT $$;$$, $q$;$q$",
            ]
        );
        assert_eq!(split.remainder.trim(), "/* ; /* ; */ ; */ SELECT 1");
        assert!(split.has_unfinished_statement());
    }

    #[test]
    fn unterminated_quotes_stay_in_the_remainder() {
        let split = split_statements("SELECT 'abc;\ndef");
        assert!(split.statements.is_empty());
        assert!(split.has_unfinished_statement());
        let split = split_statements("SELECT E'it\\'s;' ; SELECT $1;");
        assert_eq!(split.statements, ["SELECT E'it\\'s;'", "SELECT $1"]);
        let split = split_statements("-- only a comment\n;  ");
        assert!(split.statements.is_empty());
        assert!(!split.has_unfinished_statement());
    }

    #[test]
    fn transaction_statements_are_writes_and_deterministic() {
        assert_eq!(
            parse_transaction_statement("INSERT INTO t VALUES (1)")
                .expect("ok")
                .1,
            StatementKind::Insert
        );
        assert!(matches!(
            parse_transaction_statement("SELECT 1"),
            Err(Error::NotATransactionStatement(_))
        ));
        assert!(matches!(
            parse_transaction_statement("INSERT INTO t VALUES (random())"),
            Err(Error::NonDeterministic(name)) if name == "random"
        ));
        assert!(matches!(
            parse_transaction_statement("UPDATE t SET a = (SELECT max(x) FROM u WHERE y = uuid())"),
            Err(Error::NonDeterministic(name)) if name == "uuid"
        ));
        assert!(parse_transaction_statement("INSERT INTO t VALUES (now())").is_ok());
        assert!(matches!(
            parse_transaction_statement("INSERT INTO"),
            Err(Error::Sql(_))
        ));
        assert!(parse_transaction_statement("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let sql = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(parse_statement(&sql), Err(Error::Sql(_))));
    }
}
