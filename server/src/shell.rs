//! `chainql shell`: a psql-style interactive shell over a [`Session`].
//!
//! Statements end at `;` and may span lines; backslash commands (`\dt`, `\d NAME`, `\timing`,
//! `\x`, `\q`, `\?`) take the rest of their line. Writes are signed as transactions and the
//! shell waits for their block; `BEGIN ... COMMIT` sends the writes in between as one
//! transaction. Interactive input keeps a history file; piped input runs as a script that stops
//! at the first error.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use chainql::Hash;
use chainql::sql::split_statements;
use chainql::wire::Receipt;

use crate::error::{Error, Result};
use crate::format::{aligned_table, expanded};
use crate::session::{Outcome, Session};

const HELP: &str = r"General
  \q                 quit
  \? or \h           this help
  \conninfo          the node, chain, height and account of this session
Informational
  \dt                list tables
  \d [NAME]          describe a table (columns, types, key); without NAME, list tables
  \dC [NAME]         list contracts; with NAME, show one's signature, access, owner and source
Formatting
  \x [on|off]        expanded output: one line per column
  \timing [on|off]   show how long each statement took
SQL
  Statements end with ';' and may span lines. SELECT and other queries read the latest
  committed block. INSERT, UPDATE, DELETE, CREATE TABLE and DROP TABLE are signed with your
  key and committed in a block; the shell waits and prints the receipt.
  BEGIN; ...; COMMIT; sends the writes in between as one atomic transaction (ROLLBACK drops them).
  System tables: chain.blocks, chain.transactions, chain.accounts, chain.tables, chain.columns.
";

/// The shell's state: the session and display settings.
pub struct Shell {
    session: Session,
    runtime: tokio::runtime::Handle,
    timing: bool,
    expanded: bool,
    out: Box<dyn Write>,
    err: Box<dyn Write>,
    describe_target: String,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

enum Meta {
    Continue,
    Quit,
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn on_off(argument: Option<&str>, current: bool) -> std::result::Result<bool, String> {
    match argument.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(!current),
        Some("on" | "true" | "1") => Ok(true),
        Some("off" | "false" | "0") => Ok(false),
        Some(other) => Err(format!("unrecognized value \"{other}\": expected on or off")),
    }
}

impl Shell {
    /// A shell writing to stdout and stderr. `describe_target` names the node in `\conninfo`.
    pub fn new(session: Session, runtime: tokio::runtime::Handle, describe_target: String) -> Shell {
        Shell {
            session,
            runtime,
            timing: false,
            expanded: false,
            out: Box::new(std::io::stdout()),
            err: Box::new(std::io::stderr()),
            describe_target,
        }
    }

    /// Runs an interactive session until `\q` or end of input.
    pub fn run_interactive(&mut self, history: &Path) -> Result<()> {
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| Error::Client(format!("cannot start the line editor: {e}")))?;
        if let Some(parent) = history.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = editor.load_history(history);
        let status = self.runtime.block_on(self.session.connection().status())?;
        let _ = writeln!(
            self.out,
            "chainql {} — chain {} at height {}, signing as {}\nType \\? for help, \\q to quit.",
            env!("CARGO_PKG_VERSION"),
            status.chain_id,
            status.height,
            self.session.address()
        );
        let mut buffer = String::new();
        loop {
            let prompt = match (buffer.trim().is_empty(), self.session.in_transaction()) {
                (true, false) => "chainql=> ",
                (true, true) => "chainql=*> ",
                (false, _) => "chainql-> ",
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
                        if let Meta::Quit = self.meta(line.trim()) {
                            break;
                        }
                        continue;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    let split = split_statements(&buffer);
                    let statements: Vec<String> = split.statements.iter().map(|s| s.to_string()).collect();
                    let remainder = split.remainder.to_string();
                    for statement in statements {
                        self.statement(&statement);
                    }
                    buffer = if remainder.trim().is_empty() {
                        String::new()
                    } else {
                        remainder
                    };
                }
                Err(rustyline::error::ReadlineError::Interrupted) => buffer.clear(),
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(Error::Client(format!("reading input: {e}"))),
            }
        }
        let _ = editor.save_history(history);
        Ok(())
    }

    /// Runs a script: statements and backslash commands, in order. Stops at the first error
    /// (psql's `ON_ERROR_STOP`) and returns whether everything succeeded.
    pub fn run_script(&mut self, text: &str) -> bool {
        let mut buffer = String::new();
        for line in text.lines() {
            if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
                match self.meta(line.trim()) {
                    Meta::Quit => return true,
                    Meta::Continue => continue,
                }
            }
            buffer.push_str(line);
            buffer.push('\n');
            let split = split_statements(&buffer);
            let statements: Vec<String> = split.statements.iter().map(|s| s.to_string()).collect();
            let remainder = split.remainder.to_string();
            for statement in statements {
                if !self.statement(&statement) {
                    return false;
                }
            }
            buffer = remainder;
        }
        if split_statements(&buffer).has_unfinished_statement() {
            // A last statement without ';' still runs, as psql -f does.
            let statement = buffer.trim().to_string();
            return self.statement(&statement);
        }
        true
    }

    /// Runs one statement and prints its outcome; returns whether it succeeded.
    fn statement(&mut self, sql: &str) -> bool {
        let started = Instant::now();
        let outcome = self.runtime.block_on(self.session.run(sql));
        let elapsed = started.elapsed();
        let ok = match outcome {
            Ok(outcome) => {
                self.print_outcome(sql, outcome);
                true
            }
            Err(error) => {
                self.print_error(&error);
                false
            }
        };
        if self.timing {
            let _ = writeln!(self.out, "Time: {:.3} ms", elapsed.as_secs_f64() * 1e3);
        }
        let _ = self.out.flush();
        ok
    }

    fn print_outcome(&mut self, sql: &str, outcome: Outcome) {
        let text = match outcome {
            Outcome::Rows(result) if self.expanded => expanded(&result),
            Outcome::Rows(result) => aligned_table(&result),
            Outcome::Committed(receipt) => receipt_text(&receipt),
            Outcome::Began => {
                let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                if first == "BEGIN" || first == "START" {
                    "BEGIN\n".to_string()
                } else {
                    format!("{first} (sent at COMMIT)\n")
                }
            }
            Outcome::RolledBack => "ROLLBACK\n".to_string(),
        };
        let _ = write!(self.out, "{text}");
    }

    fn print_error(&mut self, error: &Error) {
        let _ = self.out.flush();
        let _ = writeln!(self.err, "ERROR:  {error}");
        if let Error::TransactionFailed { receipt, .. } = error {
            let hash = Hash::from_slice(&receipt.transaction_hash).unwrap_or_default();
            let _ = writeln!(
                self.err,
                "DETAIL:  transaction {hash} failed in block {}; none of its statements were applied",
                receipt.block_height
            );
        }
        let _ = self.err.flush();
    }

    fn query_and_print(&mut self, sql: &str, title: Option<&str>) -> bool {
        match self.runtime.block_on(self.session.query(sql)) {
            Ok(result) => {
                if let Some(title) = title {
                    let _ = writeln!(self.out, "{title}");
                }
                let text = if self.expanded {
                    expanded(&result)
                } else {
                    aligned_table(&result)
                };
                let _ = write!(self.out, "{text}");
                true
            }
            Err(error) => {
                self.print_error(&error);
                false
            }
        }
    }

    fn meta(&mut self, line: &str) -> Meta {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let argument = words.next().map(|w| w.trim_end_matches(';'));
        match command {
            "\\q" | "\\quit" => return Meta::Quit,
            "\\?" | "\\h" | "\\help" => {
                let _ = write!(self.out, "{HELP}");
            }
            "\\timing" => match on_off(argument, self.timing) {
                Ok(value) => {
                    self.timing = value;
                    let _ = writeln!(self.out, "Timing is {}.", if value { "on" } else { "off" });
                }
                Err(message) => {
                    let _ = writeln!(self.err, "ERROR:  {message}");
                }
            },
            "\\x" => match on_off(argument, self.expanded) {
                Ok(value) => {
                    self.expanded = value;
                    let _ = writeln!(
                        self.out,
                        "Expanded display is {}.",
                        if value { "on" } else { "off" }
                    );
                }
                Err(message) => {
                    let _ = writeln!(self.err, "ERROR:  {message}");
                }
            },
            "\\dt" => self.list_tables(),
            "\\dC" => match argument {
                None => self.list_contracts(),
                Some(name) => self.describe_contract(name),
            },
            "\\d" => match argument {
                None => self.list_tables(),
                Some(name) => self.describe(name),
            },
            "\\conninfo" => {
                let status = self.runtime.block_on(self.session.connection().status());
                match status {
                    Ok(status) => {
                        let _ = writeln!(
                            self.out,
                            "Connected to {} (chain {}, height {}), signing as {}.",
                            self.describe_target,
                            status.chain_id,
                            status.height,
                            self.session.address()
                        );
                    }
                    Err(error) => self.print_error(&error),
                }
            }
            other => {
                let _ = writeln!(self.err, "invalid command {other}\nTry \\? for help.");
            }
        }
        let _ = self.out.flush();
        Meta::Continue
    }

    fn list_tables(&mut self) {
        self.query_and_print(
            "SELECT table_name AS \"Name\", row_count AS \"Rows\", \
             coalesce(primary_key, '(hidden row id)') AS \"Primary key\", owner AS \"Owner\" \
             FROM chain.tables ORDER BY table_name",
            Some("List of tables"),
        );
    }

    fn list_contracts(&mut self) {
        self.query_and_print(
            "SELECT contract_name AS \"Name\", signature AS \"Signature\", \
             coalesce(returns, '') AS \"Returns\", \
             access || CASE WHEN view THEN ' VIEW' ELSE '' END AS \"Access\", owner AS \"Owner\" \
             FROM chain.contracts ORDER BY contract_name",
            Some("List of contracts"),
        );
    }

    fn describe_contract(&mut self, name: &str) {
        let name = name.trim_matches('"').to_lowercase();
        let sql = format!(
            "SELECT signature, coalesce(returns, ''), access || CASE WHEN view THEN ' VIEW' ELSE '' END, \
             owner, source FROM chain.contracts WHERE contract_name = {}",
            quote_literal(&name)
        );
        let result = match self.runtime.block_on(self.session.query(&sql)) {
            Ok(result) => result,
            Err(error) => return self.print_error(&error),
        };
        let Some(batch) = result.batches.iter().find(|b| b.num_rows() > 0) else {
            let _ = writeln!(self.err, "Did not find any contract named \"{name}\".");
            return;
        };
        let cell = |c: usize| crate::format::cell_text(batch.column(c), 0).unwrap_or_default();
        let _ = writeln!(self.out, "Contract \"{name}\"");
        let _ = writeln!(self.out, "Signature: {}", cell(0));
        let returns = cell(1);
        if !returns.is_empty() {
            let _ = writeln!(self.out, "Returns:   {returns}");
        }
        let _ = writeln!(self.out, "Access:    {}", cell(2));
        let _ = writeln!(self.out, "Owner:     {}", cell(3));
        let _ = writeln!(self.out, "Source:\n{}", cell(4));
    }

    fn describe(&mut self, name: &str) {
        let name = name.trim_matches('"');
        if let Some(system) = name.strip_prefix("chain.") {
            self.query_and_print(
                &format!(
                    "SELECT column_name AS \"Column\", data_type AS \"Type\", is_nullable AS \"Nullable\" \
                     FROM information_schema.columns WHERE table_schema = 'chain' AND table_name = {} \
                     ORDER BY ordinal_position",
                    quote_literal(system)
                ),
                Some(&format!("System table \"chain.{system}\"")),
            );
            return;
        }
        let name = name.strip_prefix("public.").unwrap_or(name);
        let sql = format!(
            "SELECT column_name AS \"Column\", data_type AS \"Type\", \
             CASE WHEN nullable THEN '' ELSE 'not null' END AS \"Nullable\", \
             coalesce(default_value, '') AS \"Default\", key_ordinal \
             FROM chain.columns WHERE table_name = {} ORDER BY ordinal",
            quote_literal(name)
        );
        let result = match self.runtime.block_on(self.session.query(&sql)) {
            Ok(result) => result,
            Err(error) => return self.print_error(&error),
        };
        if result.row_count() == 0 {
            let _ = writeln!(self.err, "Did not find any relation named \"{name}\".");
            return;
        }
        let mut key: Vec<(i32, String)> = Vec::new();
        for batch in &result.batches {
            let names = batch.column(0);
            let ordinals = batch.column(4);
            for row in 0..batch.num_rows() {
                if let (Some(column), Some(ordinal)) = (
                    crate::format::cell_text(names, row),
                    crate::format::cell_text(ordinals, row).and_then(|o| o.parse().ok()),
                ) {
                    key.push((ordinal, column));
                }
            }
        }
        key.sort();
        let shown = chainql_executor::QueryResult {
            schema: std::sync::Arc::new(
                result
                    .schema
                    .project(&[0, 1, 2, 3])
                    .unwrap_or_else(|_| (*result.schema).clone()),
            ),
            batches: result
                .batches
                .iter()
                .filter_map(|b| b.project(&[0, 1, 2, 3]).ok())
                .collect(),
        };
        let _ = writeln!(self.out, "Table \"public.{name}\"");
        let _ = write!(self.out, "{}", aligned_table(&shown));
        let key_text = if key.is_empty() {
            "(hidden row id)".to_string()
        } else {
            key.into_iter().map(|(_, c)| c).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(self.out, "Primary key: {key_text}");
    }
}

/// How a committed receipt reads: `INSERT 1` per statement, then where it was committed.
pub fn receipt_text(receipt: &Receipt) -> String {
    let mut text = String::new();
    if !receipt.result.is_empty() {
        match chainql_executor::QueryResult::from_ipc(&receipt.result) {
            Ok(result) => text.push_str(&aligned_table(&result)),
            Err(error) => text.push_str(&format!("(the result does not decode: {error})\n")),
        }
    }
    for event in &receipt.events {
        let args: Vec<String> = event
            .args
            .iter()
            .map(|a| a.text.clone().unwrap_or_else(|| "NULL".into()))
            .collect();
        text.push_str(&format!(
            "EMIT {}.{}({})\n",
            event.contract,
            event.name,
            args.join(", ")
        ));
    }
    for statement in &receipt.statements {
        match statement.command.as_str() {
            "CREATE TABLE" | "DROP TABLE" | "CREATE CONTRACT" | "DROP CONTRACT" | "GRANT" | "REVOKE"
            | "CALL" => text.push_str(&format!("{}\n", statement.command)),
            command => text.push_str(&format!("{command} {}\n", statement.rows)),
        }
    }
    let hash = Hash::from_slice(&receipt.transaction_hash).unwrap_or_default();
    text.push_str(&format!(
        "(committed in block {}, transaction {hash})\n",
        receipt.block_height
    ));
    text
}
