//! Read and write key sets of transactions, and the conflict stages of a block: the analysis
//! half of the R2 runtime.
//!
//! A statement whose primary-key predicate is bound to literals, a contract's parameters or
//! `CALLER()` touches known keys of its table; anything else touches the whole table. Known keys
//! are claimed only where the executor's work (and so the gas) for them is independent of the
//! rest of the table: point lookups through the index by a single-column key, `INSERT`s by any
//! key, and upserts, whose updates read only the conflicting rows. A statement that assigns a key
//! column may move a row anywhere, so it touches the whole table. Statements
//! that change the catalog (DDL, grants, contracts) and native transfers are barriers: they
//! conflict with every other transaction. Two transactions conflict when one writes what the
//! other reads or writes. Stages are cut in block order: a transaction's stage is one past the
//! latest stage of an earlier transaction it conflicts with, so the transactions of a stage are
//! mutually conflict-free and running the stages in order is equivalent to the block order.
//!
//! Each transaction also writes its sender's account (the nonce, the gas reservation); the fee
//! paid to the proposer is an addition that commutes, so it does not order transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::ControlFlow;

use chainql::Address;
use chainql::contract::{ChainStatement, ContractStatement, call_target, placeholder_position};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Expr, FromTable, FunctionArguments, ObjectName, Query, SetExpr, Statement,
    TableFactor, TableObject, Value, Visit, Visitor,
};

use crate::contract::{CALL_DEPTH_MAX, call_arguments, is_native_transfer};
use crate::state::State;

/// The keys of one table a transaction touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// These primary keys (each rendered as text, key columns joined by `|`).
    Known(BTreeSet<String>),
    /// Any row.
    All,
}

impl Keys {
    fn add(&mut self, other: Keys) {
        match (self, other) {
            (Keys::All, _) => {}
            (this, Keys::All) => *this = Keys::All,
            (Keys::Known(mine), Keys::Known(theirs)) => mine.extend(theirs),
        }
    }

    #[cfg(test)]
    fn overlaps(&self, other: &Keys) -> bool {
        match (self, other) {
            (Keys::Known(a), Keys::Known(b)) => a.intersection(b).next().is_some(),
            _ => true,
        }
    }
}

/// What a transaction (or one statement of it) reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySets {
    pub reads: BTreeMap<String, Keys>,
    pub writes: BTreeMap<String, Keys>,
    /// Why it conflicts with everything, when it does.
    pub barrier: Option<String>,
}

impl KeySets {
    fn read(&mut self, table: &str, keys: Keys) {
        self.reads
            .entry(table.to_string())
            .or_insert(Keys::Known(BTreeSet::new()))
            .add(keys);
    }

    fn write(&mut self, table: &str, keys: Keys) {
        self.writes
            .entry(table.to_string())
            .or_insert(Keys::Known(BTreeSet::new()))
            .add(keys);
    }

    fn merge(&mut self, other: KeySets) {
        for (table, keys) in other.reads {
            self.read(&table, keys);
        }
        for (table, keys) in other.writes {
            self.write(&table, keys);
        }
        if self.barrier.is_none() {
            self.barrier = other.barrier;
        }
    }

    /// True when running `self` and `other` in either order could give different results.
    /// (The definition [`stages`] implements with per-key maps; the tests check one against the
    /// other.)
    #[cfg(test)]
    pub fn conflicts_with(&self, other: &KeySets) -> bool {
        if self.barrier.is_some() || other.barrier.is_some() {
            return true;
        }
        let touches = |writes: &BTreeMap<String, Keys>, sets: &KeySets| {
            writes.iter().any(|(table, keys)| {
                [sets.reads.get(table), sets.writes.get(table)]
                    .into_iter()
                    .flatten()
                    .any(|theirs| keys.overlaps(theirs))
            })
        };
        touches(&self.writes, other) || touches(&other.writes, self)
    }
}

fn render(sets: &BTreeMap<String, Keys>) -> String {
    let parts: Vec<String> = sets
        .iter()
        .map(|(table, keys)| match keys {
            Keys::All => format!("{table}[*]"),
            Keys::Known(keys) => format!("{table}[{}]", keys.iter().cloned().collect::<Vec<_>>().join(", ")),
        })
        .collect();
    parts.join(" ")
}

impl fmt::Display for KeySets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(reason) = &self.barrier {
            return write!(f, "barrier ({reason})");
        }
        write!(f, "reads {} writes {}", render(&self.reads), render(&self.writes))
    }
}

impl KeySets {
    pub fn reads_text(&self) -> String {
        render(&self.reads)
    }

    pub fn writes_text(&self) -> String {
        render(&self.writes)
    }
}

/// Derives key sets against the tables and contracts of one state version.
pub struct Analyzer<'a> {
    state: &'a State,
    /// The sender; `None` leaves `CALLER()` symbolic (as `EXPLAIN CALL` shows it).
    caller: Option<Address>,
    /// Contract bodies with their names bound, kept across the transactions of a stretch of a
    /// block (no contract changes inside one).
    bodies: Option<&'a BoundBodies>,
}

/// Contract bodies with parameter and `LET` names bound to placeholders, by contract name.
pub type BoundBodies = std::cell::RefCell<BTreeMap<String, std::sync::Arc<Vec<ContractStatement>>>>;

impl<'a> Analyzer<'a> {
    pub fn new(state: &'a State, caller: Option<Address>) -> Analyzer<'a> {
        Analyzer {
            state,
            caller,
            bodies: None,
        }
    }

    /// An analyzer that binds each contract's body once and keeps it in `bodies`.
    pub fn with_bodies(state: &'a State, caller: Option<Address>, bodies: &'a BoundBodies) -> Analyzer<'a> {
        Analyzer {
            state,
            caller,
            bodies: Some(bodies),
        }
    }

    /// The key sets of a transaction of one statement, already parsed, and its sender's account.
    pub fn single(&self, statement: &ChainStatement) -> KeySets {
        let mut sets = KeySets::default();
        if let Some(caller) = self.caller {
            sets.write("chain.accounts", Keys::Known(BTreeSet::from([caller.to_hex()])));
        }
        match statement {
            ChainStatement::Sql(statement) => sets.merge(self.statement(statement, &[], 0)),
            _ => sets.barrier = Some("it changes contracts".into()),
        }
        sets
    }

    /// A contract's body with its names bound.
    fn bound_body(
        &self,
        definition: &chainql::contract::ContractDefinition,
    ) -> std::sync::Arc<Vec<ContractStatement>> {
        if let Some(bodies) = self.bodies
            && let Some(body) = bodies.borrow().get(&definition.name)
        {
            return body.clone();
        }
        let body = std::sync::Arc::new(definition.bound_statements());
        if let Some(bodies) = self.bodies {
            bodies.borrow_mut().insert(definition.name.clone(), body.clone());
        }
        body
    }

    /// The key sets of a whole transaction: its statements, and its sender's account.
    pub fn transaction(&self, statements: &[String]) -> KeySets {
        let mut sets = KeySets::default();
        if let Some(caller) = self.caller {
            sets.write("chain.accounts", Keys::Known(BTreeSet::from([caller.to_hex()])));
        }
        for sql in statements {
            match chainql::contract::parse_chain_statement(sql) {
                Ok(ChainStatement::Sql(statement)) => sets.merge(self.statement(&statement, &[], 0)),
                Ok(_) => sets.barrier = Some("it changes contracts".into()),
                Err(_) => sets.barrier = Some("a statement does not parse".into()),
            }
        }
        sets
    }

    /// The key sets of one statement; `params` are the values of its placeholders (`None`
    /// when not known).
    pub fn statement(&self, statement: &Statement, params: &[Option<ScalarValue>], depth: u32) -> KeySets {
        let mut sets = KeySets::default();
        match statement {
            Statement::Insert(insert) => {
                let TableObject::TableName(name) = &insert.table else {
                    sets.barrier = Some("an INSERT into a table function".into());
                    return sets;
                };
                let table = object_name(name);
                let mut keys = self.insert_keys(&table, insert, params);
                if let Some(ast::OnInsert::OnConflict(conflict)) = &insert.on
                    && let ast::OnConflictAction::DoUpdate(update) = &conflict.action
                    && self.assigns_key(&table, &update.assignments)
                {
                    keys = Keys::All;
                }
                if insert.on.is_some() {
                    sets.read(&table, keys.clone());
                }
                sets.write(&table, keys);
                self.queries(statement, params, &mut sets);
            }
            Statement::Update(update) => {
                let (table, alias) = match &update.table.relation {
                    TableFactor::Table { name, alias, .. } => (
                        object_name(name),
                        alias.as_ref().map(|a| a.name.value.to_lowercase()),
                    ),
                    _ => {
                        sets.barrier = Some("an UPDATE of a derived table".into());
                        return sets;
                    }
                };
                let keys = if update.from.is_none()
                    && update.table.joins.is_empty()
                    && !self.assigns_key(&table, &update.assignments)
                {
                    self.predicate_keys(&table, alias.as_deref(), update.selection.as_ref(), params)
                } else {
                    Keys::All
                };
                sets.read(&table, keys.clone());
                sets.write(&table, keys);
                self.queries(statement, params, &mut sets);
            }
            Statement::Delete(delete) => {
                let from = match &delete.from {
                    FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => from,
                };
                let target = match from.first().map(|t| &t.relation) {
                    Some(TableFactor::Table { name, alias, .. }) if from.len() == 1 => (
                        object_name(name),
                        alias.as_ref().map(|a| a.name.value.to_lowercase()),
                    ),
                    _ => {
                        sets.barrier = Some("a DELETE of several tables".into());
                        return sets;
                    }
                };
                let keys = if delete.using.is_none() && from[0].joins.is_empty() {
                    self.predicate_keys(&target.0, target.1.as_deref(), delete.selection.as_ref(), params)
                } else {
                    Keys::All
                };
                sets.read(&target.0, keys.clone());
                sets.write(&target.0, keys);
                self.queries(statement, params, &mut sets);
            }
            Statement::Query(query) => self.queries(query.as_ref(), params, &mut sets),
            Statement::Call(function) => sets.merge(self.call(function, params, depth)),
            _ => sets.barrier = Some("it changes the catalog or grants".into()),
        }
        sets
    }

    /// The key sets of `CALL name(args)`.
    pub fn call(&self, function: &ast::Function, params: &[Option<ScalarValue>], depth: u32) -> KeySets {
        let mut sets = KeySets::default();
        if is_native_transfer(&function.name) {
            sets.barrier = Some("a native transfer".into());
            return sets;
        }
        let Ok(name) = call_target(&function.name) else {
            sets.barrier = Some("an unknown contract".into());
            return sets;
        };
        let Ok(args) = call_arguments(function) else {
            sets.barrier = Some("a call with arguments that are not positional".into());
            return sets;
        };
        let values: Vec<Option<ScalarValue>> = args.iter().map(|a| self.value(a, params)).collect();
        self.contract(&name, &values, depth, &mut sets);
        sets
    }

    /// Adds what contract `name` touches when called with `values`.
    fn contract(&self, name: &str, values: &[Option<ScalarValue>], depth: u32, sets: &mut KeySets) {
        let Some(contract) = self.state.contract(name) else {
            sets.barrier = Some(format!("contract {name} does not exist"));
            return;
        };
        if depth >= CALL_DEPTH_MAX {
            sets.barrier = Some("calls nest too deep".into());
            return;
        }
        for (_, statement) in self.steps(&contract.definition, values, depth, false) {
            sets.merge(statement);
        }
    }

    /// Each body statement of a contract with its key sets, for `values` of its parameters.
    pub fn contract_steps(
        &self,
        definition: &chainql::contract::ContractDefinition,
        values: &[Option<ScalarValue>],
        depth: u32,
    ) -> Vec<(String, KeySets)> {
        self.steps(definition, values, depth, true)
    }

    /// Each body statement's key sets, with its text when `describe` is set (formatting SQL
    /// costs more than the analysis, and ordering a block needs only the sets).
    fn steps(
        &self,
        definition: &chainql::contract::ContractDefinition,
        values: &[Option<ScalarValue>],
        depth: u32,
        describe: bool,
    ) -> Vec<(String, KeySets)> {
        let mut params: Vec<Option<ScalarValue>> = values.to_vec();
        params.resize(definition.parameters.len(), None);
        let body = self.bound_body(definition);
        let mut steps = Vec::with_capacity(body.len());
        for statement in body.iter() {
            let mut sets = KeySets::default();
            let text = match statement {
                ContractStatement::Require { condition, .. } => {
                    self.queries(condition, &params, &mut sets);
                    if describe {
                        format!("REQUIRE {condition}")
                    } else {
                        String::new()
                    }
                }
                ContractStatement::Let { name, value } => {
                    self.queries(value, &params, &mut sets);
                    // The value is known only when it reads no table.
                    let known = if sets.reads.is_empty() {
                        self.value(value, &params)
                    } else {
                        None
                    };
                    params.push(known);
                    if describe {
                        format!("LET {name} = {value}")
                    } else {
                        String::new()
                    }
                }
                ContractStatement::Emit { event, args } => {
                    for arg in args {
                        self.queries(arg, &params, &mut sets);
                    }
                    if describe {
                        format!("EMIT {event}(...)")
                    } else {
                        String::new()
                    }
                }
                ContractStatement::Call { contract, args } => {
                    let mut values = Vec::with_capacity(args.len());
                    for arg in args {
                        self.queries(arg, &params, &mut sets);
                        values.push(self.value(arg, &params));
                    }
                    self.contract(contract, &values, depth + 1, &mut sets);
                    if describe {
                        format!("CALL {contract}(...)")
                    } else {
                        String::new()
                    }
                }
                ContractStatement::Sql(statement) => {
                    sets.merge(self.statement(statement, &params, depth));
                    if describe {
                        let text = statement.to_string();
                        text.split_whitespace().collect::<Vec<_>>().join(" ")
                    } else {
                        String::new()
                    }
                }
            };
            steps.push((text, sets));
        }
        steps
    }

    /// Adds the reads of every query inside `node`.
    fn queries<T: Visit>(&self, node: &T, params: &[Option<ScalarValue>], sets: &mut KeySets) {
        struct Queries<'b, 'c> {
            analyzer: &'b Analyzer<'c>,
            params: &'b [Option<ScalarValue>],
            sets: &'b mut KeySets,
        }
        impl Visitor for Queries<'_, '_> {
            type Break = ();
            fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
                self.analyzer.query_reads(query, self.params, self.sets);
                ControlFlow::Continue(())
            }
        }
        let _ = node.visit(&mut Queries {
            analyzer: self,
            params,
            sets,
        });
    }

    /// The tables a query's own `FROM` reads: known keys for a single table pinned by its key.
    fn query_reads(&self, query: &Query, params: &[Option<ScalarValue>], sets: &mut KeySets) {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return;
        };
        let single = select.from.len() == 1 && select.from[0].joins.is_empty();
        for from in &select.from {
            for relation in std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation)) {
                if let TableFactor::Table { name, alias, .. } = relation {
                    let table = object_name(name);
                    let keys = if single {
                        let alias = alias.as_ref().map(|a| a.name.value.to_lowercase());
                        self.predicate_keys(&table, alias.as_deref(), select.selection.as_ref(), params)
                    } else {
                        Keys::All
                    };
                    sets.read(&table, keys);
                }
            }
        }
    }

    /// True when `assignments` set a primary-key column (so the row may move to any key).
    fn assigns_key(&self, table: &str, assignments: &[ast::Assignment]) -> bool {
        let Some(definition) = self.state.table(table).map(|t| t.definition()) else {
            return true;
        };
        assignments.iter().any(|a| {
            let names: Vec<&ObjectName> = match &a.target {
                ast::AssignmentTarget::ColumnName(name) => vec![name],
                ast::AssignmentTarget::Tuple(names) => names.iter().collect(),
            };
            names.iter().any(|n| {
                let column = object_name(n);
                definition
                    .primary_key
                    .iter()
                    .any(|&k| definition.columns[k].name == column)
            })
        })
    }

    /// The keys an `INSERT ... VALUES` writes.
    fn insert_keys(&self, table: &str, insert: &ast::Insert, params: &[Option<ScalarValue>]) -> Keys {
        let Some(definition) = self.state.table(table).map(|t| t.definition()) else {
            return Keys::All;
        };
        if definition.primary_key.is_empty() {
            return Keys::All;
        }
        let Some(SetExpr::Values(values)) = insert.source.as_ref().map(|s| s.body.as_ref()) else {
            return Keys::All;
        };
        let positions: Option<Vec<usize>> = if insert.columns.is_empty() {
            Some(definition.primary_key.clone())
        } else {
            let columns: Vec<String> = insert.columns.iter().map(object_name).collect();
            definition
                .primary_key
                .iter()
                .map(|&k| columns.iter().position(|c| *c == definition.columns[k].name))
                .collect()
        };
        let Some(positions) = positions else {
            return Keys::All;
        };
        let mut keys = BTreeSet::new();
        for row in &values.rows {
            let parts: Option<Vec<String>> = positions
                .iter()
                .zip(&definition.primary_key)
                .map(|(&p, &k)| {
                    let key_type = &definition.columns[k].column_type.data_type;
                    row.get(p).and_then(|e| self.key_text(e, params, key_type))
                })
                .collect();
            match parts {
                Some(parts) => keys.insert(parts.join("|")),
                None => return Keys::All,
            };
        }
        Keys::Known(keys)
    }

    /// The keys a `WHERE` pins: every primary-key column equal to a known value.
    fn predicate_keys(
        &self,
        table: &str,
        alias: Option<&str>,
        selection: Option<&Expr>,
        params: &[Option<ScalarValue>],
    ) -> Keys {
        let Some(definition) = self.state.table(table).map(|t| t.definition()) else {
            return Keys::All;
        };
        let Some(selection) = selection else {
            return Keys::All;
        };
        // Only a single-column key is found through the index; a predicate on a composite key
        // scans the table, and what a scan costs depends on every row.
        if definition.primary_key.len() != 1 {
            return Keys::All;
        }
        let mut conjuncts = Vec::new();
        split_and(selection, &mut conjuncts);
        let mut parts = Vec::with_capacity(definition.primary_key.len());
        for &k in &definition.primary_key {
            let column = &definition.columns[k].name;
            let key_type = &definition.columns[k].column_type.data_type;
            let value = conjuncts.iter().find_map(|c| match c {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } => {
                    if names_column(left, table, alias, column) {
                        self.key_text(right, params, key_type)
                    } else if names_column(right, table, alias, column) {
                        self.key_text(left, params, key_type)
                    } else {
                        None
                    }
                }
                _ => None,
            });
            match value {
                Some(value) => parts.push(value),
                None => return Keys::All,
            }
        }
        Keys::Known(BTreeSet::from([parts.join("|")]))
    }

    /// A key value as text: a literal, a bound parameter, or `CALLER()`, as the key column's
    /// type holds it (so `'01'` and `1` name the same `BIGINT` key). A value the type cannot
    /// hold names no known key.
    fn key_text(&self, expr: &Expr, params: &[Option<ScalarValue>], key_type: &DataType) -> Option<String> {
        match expr {
            Expr::Function(function) if is_caller(function) && self.caller.is_none() => {
                Some("CALLER()".into())
            }
            _ => self
                .value(expr, params)
                .filter(|v| !v.is_null())
                .and_then(|v| v.cast_to(key_type).ok())
                .filter(|v| !v.is_null())
                .map(|v| v.to_string()),
        }
    }

    /// The value of a literal argument.
    pub fn literal(&self, expr: &Expr) -> Option<ScalarValue> {
        self.value(expr, &[])
    }

    /// The value of a literal or a bound placeholder.
    fn value(&self, expr: &Expr, params: &[Option<ScalarValue>]) -> Option<ScalarValue> {
        match expr {
            Expr::Nested(inner) => self.value(inner, params),
            Expr::Value(value) => match &value.value {
                Value::Number(n, _) => n.parse::<i64>().ok().map(|n| ScalarValue::Int64(Some(n))),
                Value::SingleQuotedString(s) => Some(ScalarValue::Utf8(Some(s.clone()))),
                Value::Placeholder(p) => {
                    placeholder_position(p).and_then(|n| params.get(n).cloned().flatten())
                }
                _ => None,
            },
            Expr::Function(function) if is_caller(function) => {
                self.caller.map(|c| ScalarValue::Utf8(Some(c.to_hex())))
            }
            _ => None,
        }
    }
}

fn is_caller(function: &ast::Function) -> bool {
    function.name.0.len() == 1
        && function.name.0[0]
            .as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case("caller"))
        && match &function.args {
            FunctionArguments::None => true,
            FunctionArguments::List(list) => list.args.is_empty(),
            FunctionArguments::Subquery(_) => false,
        }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| {
            if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_lowercase()
            }
        })
        .unwrap_or_default()
}

fn names_column(expr: &Expr, table: &str, alias: Option<&str>, column: &str) -> bool {
    match expr {
        Expr::Identifier(ident) => ident.value.to_lowercase() == column,
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            let qualifier = parts[0].value.to_lowercase();
            (qualifier == table || Some(qualifier.as_str()) == alias)
                && parts[1].value.to_lowercase() == column
        }
        Expr::Nested(inner) => names_column(inner, table, alias, column),
        _ => false,
    }
}

fn split_and<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

/// Cuts a block's transactions (their key sets, in block order) into stages: each transaction
/// goes one stage past the latest earlier transaction it conflicts with.
pub fn stages(transactions: &[KeySets]) -> Vec<Vec<usize>> {
    let mut seen = Seen::default();
    let mut stages: Vec<Vec<usize>> = Vec::new();
    for (i, sets) in transactions.iter().enumerate() {
        let stage = seen.stage_of(sets);
        seen.record(sets, stage);
        if stages.len() <= stage {
            stages.resize(stage + 1, Vec::new());
        }
        stages[stage].push(i);
    }
    stages
}

/// The latest stage (plus one) of earlier accesses, per table and key: a transaction's stage is
/// the largest of these over what it conflicts with, found in O(keys · log n) rather than by
/// comparing it with every earlier transaction.
#[derive(Default)]
struct Seen {
    /// Per table: after the latest stage that read (or wrote) each known key, any key (`All`),
    /// and anything at all in the table.
    reads: BTreeMap<String, Accesses>,
    writes: BTreeMap<String, Accesses>,
    /// After the latest stage of any transaction, and of any barrier.
    any: usize,
    barrier: usize,
}

#[derive(Default)]
struct Accesses {
    /// Membership and maxima only: the map's iteration order is never observed.
    keys: std::collections::HashMap<String, usize>,
    all: usize,
    any: usize,
}

impl Accesses {
    /// After the latest stage of an access that overlaps `keys`.
    fn after(&self, keys: &Keys) -> usize {
        match keys {
            Keys::All => self.any,
            Keys::Known(keys) => keys
                .iter()
                .filter_map(|k| self.keys.get(k))
                .copied()
                .max()
                .unwrap_or(0)
                .max(self.all),
        }
    }

    fn record(&mut self, keys: &Keys, after: usize) {
        match keys {
            Keys::All => self.all = self.all.max(after),
            Keys::Known(keys) => {
                for key in keys {
                    match self.keys.get_mut(key) {
                        Some(latest) => *latest = (*latest).max(after),
                        None => {
                            self.keys.insert(key.clone(), after);
                        }
                    }
                }
            }
        }
        self.any = self.any.max(after);
    }
}

impl Seen {
    fn stage_of(&self, sets: &KeySets) -> usize {
        if sets.barrier.is_some() {
            return self.any;
        }
        let mut stage = self.barrier;
        let after = |map: &BTreeMap<String, Accesses>, table: &String, keys: &Keys| {
            map.get(table).map_or(0, |accesses| accesses.after(keys))
        };
        for (table, keys) in &sets.writes {
            stage = stage
                .max(after(&self.reads, table, keys))
                .max(after(&self.writes, table, keys));
        }
        for (table, keys) in &sets.reads {
            stage = stage.max(after(&self.writes, table, keys));
        }
        stage
    }

    fn record(&mut self, sets: &KeySets, stage: usize) {
        let after = stage + 1;
        self.any = self.any.max(after);
        if sets.barrier.is_some() {
            self.barrier = self.barrier.max(after);
            return;
        }
        for (table, keys) in &sets.reads {
            self.reads.entry(table.clone()).or_default().record(keys, after);
        }
        for (table, keys) in &sets.writes {
            self.writes.entry(table.clone()).or_default().record(keys, after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(keys: &[&str]) -> Keys {
        Keys::Known(keys.iter().map(|k| k.to_string()).collect())
    }

    fn writes(table: &str, keys: Keys) -> KeySets {
        let mut sets = KeySets::default();
        sets.write(table, keys);
        sets
    }

    /// The stages the definition gives: one past the latest earlier conflicting transaction.
    fn stages_by_definition(transactions: &[KeySets]) -> Vec<Vec<usize>> {
        let mut stage_of: Vec<usize> = Vec::new();
        let mut stages: Vec<Vec<usize>> = Vec::new();
        for (i, sets) in transactions.iter().enumerate() {
            let stage = (0..i)
                .filter(|&j| transactions[j].conflicts_with(sets))
                .map(|j| stage_of[j] + 1)
                .max()
                .unwrap_or(0);
            stage_of.push(stage);
            if stages.len() <= stage {
                stages.resize(stage + 1, Vec::new());
            }
            stages[stage].push(i);
        }
        stages
    }

    #[test]
    fn stages_match_their_definition_on_random_key_sets() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for _ in 0..200 {
            let block: Vec<KeySets> = (0..40)
                .map(|_| {
                    let mut sets = KeySets::default();
                    for _ in 0..1 + next(3) {
                        let table = ["t", "u"][next(2) as usize];
                        let keys = if next(10) == 0 {
                            Keys::All
                        } else {
                            known(&[["1", "2", "3", "4", "5", "6"][next(6) as usize]])
                        };
                        if next(2) == 0 {
                            sets.read(table, keys);
                        } else {
                            sets.write(table, keys);
                        }
                    }
                    if next(30) == 0 {
                        sets.barrier = Some("ddl".into());
                    }
                    sets
                })
                .collect();
            assert_eq!(stages(&block), stages_by_definition(&block));
        }
    }

    #[test]
    fn stages_follow_conflicts_in_block_order() {
        let block = vec![
            writes("t", known(&["1"])),
            writes("t", known(&["2"])),
            writes("t", known(&["1"])),
            writes("u", Keys::All),
            writes("t", Keys::All),
            writes("u", known(&["9"])),
        ];
        assert_eq!(stages(&block), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
        let barrier = KeySets {
            barrier: Some("ddl".into()),
            ..KeySets::default()
        };
        let block = vec![writes("t", known(&["1"])), barrier, writes("u", known(&["2"]))];
        assert_eq!(stages(&block), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn reads_conflict_only_with_writes() {
        let mut reader = KeySets::default();
        reader.read("t", known(&["1"]));
        let mut other_reader = KeySets::default();
        other_reader.read("t", Keys::All);
        assert!(!reader.conflicts_with(&other_reader));
        assert!(reader.conflicts_with(&writes("t", known(&["1"]))));
        assert!(!reader.conflicts_with(&writes("t", known(&["2"]))));
        assert!(reader.conflicts_with(&writes("t", Keys::All)));
    }
}
