//! `chainql shell`: a psql-style interactive shell over a [`Session`].
//!
//! Statements end at `;` and may span lines; backslash commands (`\dt`, `\d NAME`, `\timing`,
//! `\x`, `\i FILE`, `\o FILE`, `\q`, `\?`) take the rest of their line. Writes are signed as
//! transactions and the shell waits for their block; `BEGIN ... COMMIT` sends the writes in
//! between as one transaction. Interactive input keeps a history file and completes names with
//! Tab; Ctrl-C cancels the running statement. Piped input runs as a script that stops at the
//! first error.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chainql::Hash;
use chainql::sql::split_statements;
use chainql::wire::Receipt;

use crate::completion::{Names, ShellHelper};
use crate::error::{Error, Result};
use crate::format::{aligned_table, expanded};
use crate::progress::Progress;
use crate::session::{Outcome, Session};

/// The largest file `\i` reads.
const INCLUDE_BYTES_MAX: u64 = 256 << 20;
/// How deeply `\i` files may include each other.
const INCLUDE_DEPTH_MAX: usize = 16;

const HELP: &str = r"General
  \q                 quit
  \? or \h           this help
  \conninfo          the node, chain, height and account of this session
Input/Output
  \i FILE            run the statements and commands in FILE (stops at its first error)
  \o [FILE]          send query results to FILE; without FILE, back to the terminal
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
  Tab completes keywords, tables, columns and contracts. Ctrl-C cancels the running statement
  (a write already submitted may still commit).
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
    /// The terminal's output while `\o FILE` sends results elsewhere.
    console: Option<Box<dyn Write>>,
    describe_target: String,
    /// Counts SIGINTs; a statement runs until it ends or this changes: Ctrl-C cancels it.
    interrupts: Option<tokio::sync::watch::Receiver<u64>>,
    /// The names tab completion offers, refreshed after each committed write (interactive only).
    names: Option<Arc<Mutex<Names>>>,
    /// `\i` files being run, innermost last.
    including: Vec<String>,
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
    /// The command failed: a script stops here.
    Failed,
    Quit,
}

impl From<bool> for Meta {
    fn from(ok: bool) -> Meta {
        if ok { Meta::Continue } else { Meta::Failed }
    }
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
            console: None,
            describe_target,
            interrupts: None,
            names: None,
            including: Vec::new(),
        }
    }

    /// Reads the names tab completion offers: tables, their columns, contracts, system tables.
    async fn load_names(session: &Session) -> Result<Names> {
        let mut names = Names::default();
        let pairs = session
            .query(
                "SELECT table_name, column_name FROM chain.columns \
                 UNION ALL SELECT 'chain.' || table_name, column_name FROM information_schema.columns \
                 WHERE table_schema = 'chain'",
            )
            .await?;
        for batch in &pairs.batches {
            for row in 0..batch.num_rows() {
                let cell = |c: usize| crate::format::cell_text(batch.column(c), row).unwrap_or_default();
                names.columns.push((cell(0), cell(1)));
            }
        }
        names.tables = names.columns.iter().map(|(table, _)| table.clone()).collect();
        names.tables.sort();
        names.tables.dedup();
        let contracts = session.query("SELECT contract_name FROM chain.contracts").await?;
        for batch in &contracts.batches {
            for row in 0..batch.num_rows() {
                names
                    .contracts
                    .extend(crate::format::cell_text(batch.column(0), row));
            }
        }
        Ok(names)
    }

    /// From here on SIGINT no longer ends the process: it cancels the running statement.
    fn listen_for_interrupts(&mut self) {
        if self.interrupts.is_none() {
            self.interrupts = listen_for_interrupts();
        }
    }

    fn refresh_names(&mut self) {
        if let Some(names) = &self.names
            && let Ok(fresh) = interruptible(
                &self.runtime,
                &mut self.interrupts,
                Self::load_names(&self.session),
            )
        {
            *names.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        }
    }

    /// Runs an interactive session until `\q` or end of input.
    pub fn run_interactive(&mut self, history: &Path) -> Result<()> {
        // At the prompt the editor reads Ctrl-C as a key (it clears the line); while a statement
        // runs, the terminal is back in its normal mode and Ctrl-C is SIGINT.
        let mut editor = rustyline::Editor::<ShellHelper, rustyline::history::FileHistory>::new()
            .map_err(|e| Error::Client(format!("cannot start the line editor: {e}")))?;
        // After the editor, which sets its own SIGINT handler: ours is chained before it.
        self.listen_for_interrupts();
        let helper = ShellHelper::default();
        self.names = Some(Arc::clone(&helper.names));
        editor.set_helper(Some(helper));
        self.refresh_names();
        if let Some(parent) = history.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = editor.load_history(history);
        let status = interruptible(
            &self.runtime,
            &mut self.interrupts,
            self.session.connection().status(),
        )?;
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
                    // Ctrl-C at the prompt only cleared the line: interrupts from before the
                    // line was entered are forgotten. Later ones stop what it runs, a `\i`
                    // file's remaining statements included.
                    if let Some(interrupts) = &mut self.interrupts {
                        interrupts.borrow_and_update();
                    }
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
                Err(
                    rustyline::error::ReadlineError::Interrupted
                    | rustyline::error::ReadlineError::Signal(rustyline::error::Signal::Interrupt),
                ) => buffer.clear(),
                Err(rustyline::error::ReadlineError::Signal(_)) => {}
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
        self.listen_for_interrupts();
        !matches!(self.script(text, None), Meta::Failed)
    }

    /// Runs a script file as `\\i` does (`chainql shell -f FILE`); returns whether it all
    /// succeeded.
    pub fn run_file(&mut self, path: &Path) -> bool {
        self.listen_for_interrupts();
        !matches!(self.include(&path.to_string_lossy()), Meta::Failed)
    }

    /// Runs `text` as a script, counting its statements in `progress`; `Quit` when it ran `\q`.
    fn script(&mut self, text: &str, mut progress: Option<&mut Progress>) -> Meta {
        let mut buffer = String::new();
        for line in text.lines() {
            if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
                match self.meta(line.trim()) {
                    Meta::Continue => continue,
                    stop => return stop,
                }
            }
            buffer.push_str(line);
            buffer.push('\n');
            let split = split_statements(&buffer);
            let statements: Vec<String> = split.statements.iter().map(|s| s.to_string()).collect();
            let remainder = split.remainder.to_string();
            for statement in statements {
                if !self.statement(&statement) {
                    return Meta::Failed;
                }
                if let Some(progress) = progress.as_deref_mut() {
                    progress.inc(1);
                }
            }
            buffer = remainder;
        }
        if split_statements(&buffer).has_unfinished_statement() {
            // A last statement without ';' still runs, as psql -f does.
            let statement = buffer.trim().to_string();
            return self.statement(&statement).into();
        }
        Meta::Continue
    }

    /// `\i FILE`: runs the file's statements and commands, with progress for long files.
    fn include(&mut self, path: &str) -> Meta {
        if self.including.len() >= INCLUDE_DEPTH_MAX {
            let _ = writeln!(
                self.err,
                "ERROR:  \\i {path}: files include each other more than {INCLUDE_DEPTH_MAX} deep"
            );
            return Meta::Failed;
        }
        let text = match read_bounded(Path::new(path), INCLUDE_BYTES_MAX) {
            Ok(text) => text,
            Err(message) => {
                let _ = writeln!(self.err, "ERROR:  {path}: {message}");
                return Meta::Failed;
            }
        };
        let total = split_statements(&text).statements.len() as u64;
        let mut progress = Progress::beside_output(format!("\\i {path}"), total, "statements");
        self.including.push(path.to_string());
        let outcome = self.script(&text, Some(&mut progress));
        self.including.pop();
        if !matches!(outcome, Meta::Failed) {
            progress.finish();
        }
        outcome
    }

    /// `\o [FILE]`: query results go to FILE, or back to the terminal.
    fn redirect(&mut self, path: Option<&str>) -> Meta {
        let _ = self.out.flush();
        match path {
            None => {
                if let Some(console) = self.console.take() {
                    self.out = console;
                }
                Meta::Continue
            }
            Some(path) => match std::fs::File::create(path) {
                Ok(file) => {
                    let previous = std::mem::replace(&mut self.out, Box::new(std::io::BufWriter::new(file)));
                    if self.console.is_none() {
                        self.console = Some(previous);
                    }
                    Meta::Continue
                }
                Err(error) => {
                    let _ = writeln!(self.err, "ERROR:  {path}: {error}");
                    Meta::Failed
                }
            },
        }
    }

    /// Runs one statement and prints its outcome; returns whether it succeeded.
    fn statement(&mut self, sql: &str) -> bool {
        let started = Instant::now();
        let session = &mut self.session;
        let interrupts = &mut self.interrupts;
        let outcome = self.runtime.block_on(async {
            if let Some(interrupts) = interrupts {
                // An interrupt not yet seen (even one that came between statements) cancels.
                return tokio::select! {
                    biased;
                    _ = interrupts.changed() => None,
                    outcome = session.run(sql) => Some(outcome),
                };
            }
            Some(session.run(sql).await)
        });
        let elapsed = started.elapsed();
        let ok = match outcome {
            Some(Ok(outcome)) => {
                let wrote = matches!(outcome, Outcome::Committed(_));
                self.print_outcome(sql, outcome);
                if wrote {
                    self.refresh_names();
                }
                true
            }
            Some(Err(error)) => {
                self.print_error(&error);
                false
            }
            None => {
                let _ = self.out.flush();
                let _ = writeln!(self.err, "ERROR:  canceling statement due to user request");
                if !is_query(sql) {
                    let _ = writeln!(
                        self.err,
                        "DETAIL:  the shell stopped waiting; a transaction already submitted may \
                         still commit (see chain.transactions)"
                    );
                }
                let _ = self.err.flush();
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
        match interruptible(&self.runtime, &mut self.interrupts, self.session.query(sql)) {
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
        let outcome = self.meta_command(line);
        let _ = self.out.flush();
        outcome
    }

    fn meta_command(&mut self, line: &str) -> Meta {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let argument = words.next().map(|w| w.trim_end_matches(';'));
        // A file name is the rest of the line, optionally in single quotes.
        let rest = line[command.len()..].trim();
        let file = (!rest.is_empty()).then(|| rest.trim_matches('\''));
        match command {
            "\\q" | "\\quit" => Meta::Quit,
            "\\i" | "\\include" => match file {
                Some(path) => self.include(path),
                None => {
                    let _ = writeln!(self.err, "ERROR:  \\i: missing required argument");
                    Meta::Failed
                }
            },
            "\\o" | "\\out" => self.redirect(file),
            "\\?" | "\\h" | "\\help" => {
                let _ = write!(self.out, "{HELP}");
                Meta::Continue
            }
            "\\timing" => match on_off(argument, self.timing) {
                Ok(value) => {
                    self.timing = value;
                    let _ = writeln!(self.out, "Timing is {}.", if value { "on" } else { "off" });
                    Meta::Continue
                }
                Err(message) => {
                    let _ = writeln!(self.err, "ERROR:  {message}");
                    Meta::Failed
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
                    Meta::Continue
                }
                Err(message) => {
                    let _ = writeln!(self.err, "ERROR:  {message}");
                    Meta::Failed
                }
            },
            "\\dt" => self.list_tables().into(),
            "\\dC" => match argument {
                None => self.list_contracts().into(),
                Some(name) => self.describe_contract(name).into(),
            },
            "\\d" => match argument {
                None => self.list_tables().into(),
                Some(name) => self.describe(name).into(),
            },
            "\\conninfo" => {
                let status = interruptible(
                    &self.runtime,
                    &mut self.interrupts,
                    self.session.connection().status(),
                );
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
                        Meta::Continue
                    }
                    Err(error) => {
                        self.print_error(&error);
                        Meta::Failed
                    }
                }
            }
            other => {
                let _ = writeln!(self.err, "invalid command {other}\nTry \\? for help.");
                Meta::Failed
            }
        }
    }

    fn list_tables(&mut self) -> bool {
        self.query_and_print(
            "SELECT table_name AS \"Name\", row_count AS \"Rows\", \
             coalesce(primary_key, '(hidden row id)') AS \"Primary key\", owner AS \"Owner\" \
             FROM chain.tables ORDER BY table_name",
            Some("List of tables"),
        )
    }

    fn list_contracts(&mut self) -> bool {
        self.query_and_print(
            "SELECT contract_name AS \"Name\", signature AS \"Signature\", \
             coalesce(returns, '') AS \"Returns\", \
             access || CASE WHEN view THEN ' VIEW' ELSE '' END AS \"Access\", owner AS \"Owner\" \
             FROM chain.contracts ORDER BY contract_name",
            Some("List of contracts"),
        )
    }

    fn describe_contract(&mut self, name: &str) -> bool {
        let name = name.trim_matches('"').to_lowercase();
        let sql = format!(
            "SELECT signature, coalesce(returns, ''), access || CASE WHEN view THEN ' VIEW' ELSE '' END, \
             owner, source FROM chain.contracts WHERE contract_name = {}",
            quote_literal(&name)
        );
        let result = match interruptible(&self.runtime, &mut self.interrupts, self.session.query(&sql)) {
            Ok(result) => result,
            Err(error) => {
                self.print_error(&error);
                return false;
            }
        };
        let Some(batch) = result.batches.iter().find(|b| b.num_rows() > 0) else {
            let _ = writeln!(self.err, "Did not find any contract named \"{name}\".");
            return false;
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
        true
    }

    fn describe(&mut self, name: &str) -> bool {
        let name = name.trim_matches('"');
        if let Some(system) = name.strip_prefix("chain.") {
            return self.query_and_print(
                &format!(
                    "SELECT column_name AS \"Column\", data_type AS \"Type\", is_nullable AS \"Nullable\" \
                     FROM information_schema.columns WHERE table_schema = 'chain' AND table_name = {} \
                     ORDER BY ordinal_position",
                    quote_literal(system)
                ),
                Some(&format!("System table \"chain.{system}\"")),
            );
        }
        let name = name.strip_prefix("public.").unwrap_or(name);
        let sql = format!(
            "SELECT column_name AS \"Column\", data_type AS \"Type\", \
             CASE WHEN nullable THEN '' ELSE 'not null' END AS \"Nullable\", \
             coalesce(default_value, '') AS \"Default\", key_ordinal \
             FROM chain.columns WHERE table_name = {} ORDER BY ordinal",
            quote_literal(name)
        );
        let result = match interruptible(&self.runtime, &mut self.interrupts, self.session.query(&sql)) {
            Ok(result) => result,
            Err(error) => {
                self.print_error(&error);
                return false;
            }
        };
        if result.row_count() == 0 {
            let _ = writeln!(self.err, "Did not find any relation named \"{name}\".");
            return false;
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
        true
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
            | "CALL" | "STAKE" | "UNSTAKE" => text.push_str(&format!("{}\n", statement.command)),
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

/// Runs `work` to its end, or until an interrupt (Ctrl-C) comes, which makes it an error saying
/// so: backslash commands and the shell's own queries stop on Ctrl-C like statements do.
fn interruptible<T>(
    runtime: &tokio::runtime::Handle,
    interrupts: &mut Option<tokio::sync::watch::Receiver<u64>>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    runtime.block_on(async {
        match interrupts {
            Some(interrupts) => tokio::select! {
                biased;
                _ = interrupts.changed() => {
                    Err(Error::Client("canceling statement due to user request".into()))
                }
                done = work => done,
            },
            None => work.await,
        }
    })
}

/// Listens for SIGINT on a thread of its own, with its own small runtime: the shell's runtime
/// may be saturated by the very statement the signal is to cancel. Returns a counter of the
/// signals received, once the handler is in place (`None` if it cannot be installed).
fn listen_for_interrupts() -> Option<tokio::sync::watch::Receiver<u64>> {
    #[cfg(unix)]
    {
        let (count, counted) = tokio::sync::watch::channel(0u64);
        let (ready, installed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("chainql-sigint".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    let _ = ready.send(false);
                    return;
                };
                runtime.block_on(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
                        let _ = ready.send(false);
                        return;
                    };
                    let _ = ready.send(true);
                    while interrupts.recv().await.is_some() {
                        count.send_modify(|n| *n += 1);
                    }
                });
            });
        if spawned.is_ok() && installed.recv().unwrap_or(false) {
            return Some(counted);
        }
        None
    }
    #[cfg(not(unix))]
    None
}

/// Whether `sql` only reads (so cancelling it leaves nothing behind).
fn is_query(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    matches!(
        first.as_str(),
        "SELECT" | "WITH" | "SHOW" | "EXPLAIN" | "VALUES" | "TABLE"
    )
}

/// Reads a UTF-8 text file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> std::result::Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than {} MiB", limit >> 20));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Node, NodeConfig, init_data_dir};
    use crate::session::Connection;

    #[test]
    fn a_receipt_counts_rows_only_for_statements_that_change_rows() {
        use chainql::wire::StatementResult;
        let statement = |command: &str, rows| StatementResult {
            command: command.into(),
            rows,
        };
        let receipt = Receipt {
            statements: vec![
                statement("INSERT", 2),
                statement("STAKE", 0),
                statement("UNSTAKE", 0),
                statement("CREATE TABLE", 0),
            ],
            block_height: 7,
            ..Receipt::default()
        };
        let text = receipt_text(&receipt);
        assert!(
            text.starts_with("INSERT 2\nSTAKE\nUNSTAKE\nCREATE TABLE\n"),
            "{text}"
        );
    }

    /// Backslash commands and the shell's own queries stop on an interrupt, even when the node
    /// never answers.
    #[test]
    fn work_that_never_ends_stops_on_an_interrupt() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (count, counted) = tokio::sync::watch::channel(0u64);
        let mut interrupts = Some(counted);
        let done = interruptible(runtime.handle(), &mut interrupts, async { Ok(7) });
        assert_eq!(done.expect("no interrupt yet"), 7);
        count.send_modify(|n| *n += 1);
        let stopped = interruptible(
            runtime.handle(),
            &mut interrupts,
            std::future::pending::<Result<()>>(),
        );
        let error = stopped.expect_err("interrupted");
        assert_eq!(error.to_string(), "canceling statement due to user request");
        // The interrupt was used up: the next piece of work runs.
        let next = interruptible(runtime.handle(), &mut interrupts, async { Ok(8) });
        assert_eq!(next.expect("runs"), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completion_names_come_from_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = NodeConfig::new(dir.path());
        config.block_interval_ms = 1;
        init_data_dir(&config, "names", &[]).expect("init");
        let node = Node::open(config).await.expect("open");
        let key = chainql::Keypair::from_seed([3; 32]);
        let mut session = Session::new(Connection::Embedded(node.clone()), key)
            .await
            .expect("session");
        for sql in [
            "CREATE TABLE wallets (owner TEXT PRIMARY KEY, funds BIGINT)",
            "CREATE CONTRACT deposit(amount BIGINT) PUBLIC AS $$ \
             INSERT INTO wallets VALUES (CALLER(), amount) $$",
        ] {
            session.run(sql).await.expect(sql);
        }
        let names = Shell::load_names(&session).await.expect("names");
        assert!(names.tables.contains(&"wallets".to_string()), "{names:?}");
        assert!(names.tables.contains(&"chain.blocks".to_string()), "{names:?}");
        assert!(
            names.columns.contains(&("wallets".into(), "funds".into())),
            "{names:?}"
        );
        assert!(
            names.columns.contains(&("chain.blocks".into(), "height".into())),
            "{names:?}"
        );
        assert_eq!(names.contracts, ["deposit"]);
        let (_, found) = crate::completion::complete(&names, "SELECT fu", 9);
        assert_eq!(found, ["funds"]);
        node.shutdown().await;
    }
}
