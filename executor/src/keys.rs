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

use crate::contract::{CALL_DEPTH_MAX, call_argument_refs, is_native_transfer};
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
        add_keys(&mut self.reads, table, keys);
    }

    fn write(&mut self, table: &str, keys: Keys) {
        add_keys(&mut self.writes, table, keys);
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

fn add_keys(sets: &mut BTreeMap<String, Keys>, table: &str, keys: Keys) {
    match sets.get_mut(table) {
        Some(known) => known.add(keys),
        None => {
            sets.insert(table.to_string(), keys);
        }
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

/// A value the analysis knows before a call binds it: a literal, an argument of the contract
/// being analyzed (by position), or the caller.
#[derive(Debug, Clone, PartialEq)]
enum Sym {
    Value(ScalarValue),
    Arg(usize),
    Caller,
}

/// One column of a key: text already known, or an argument or the caller, cast to the key
/// column's type when bound.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Bound(Sym, DataType),
}

/// The keys of one table a statement touches, some of them still symbolic.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Keys, each a list of key-column parts; if any part cannot be bound (a null, a value the
    /// column cannot hold, an argument that is not a literal), any row.
    Rows(Vec<Vec<Part>>),
    All,
}

/// Key sets with arguments and the caller left symbolic: what a contract touches for any call
/// of it, derived from its body once per state version and then bound to each call's values.
/// Entries are merged (and `All` absorbs known keys) when bound.
#[derive(Debug, Clone, Default)]
pub struct Template {
    reads: Vec<(String, Shape)>,
    writes: Vec<(String, Shape)>,
    barrier: Option<String>,
}

impl Template {
    fn read(&mut self, table: &str, shape: Shape) {
        if !self.reads.iter().any(|(t, s)| t == table && *s == shape) {
            self.reads.push((table.to_string(), shape));
        }
    }

    fn write(&mut self, table: &str, shape: Shape) {
        if !self.writes.iter().any(|(t, s)| t == table && *s == shape) {
            self.writes.push((table.to_string(), shape));
        }
    }

    fn barrier(reason: impl Into<String>) -> Template {
        Template {
            barrier: Some(reason.into()),
            ..Template::default()
        }
    }

    fn merge(&mut self, other: Template) {
        for (table, shape) in other.reads {
            self.read(&table, shape);
        }
        for (table, shape) in other.writes {
            self.write(&table, shape);
        }
        if self.barrier.is_none() {
            self.barrier = other.barrier;
        }
    }

    /// The template with its arguments replaced by `args` (symbols of the calling statement).
    fn substitute(&self, args: &[Option<Sym>]) -> Template {
        let shapes = |entries: &[(String, Shape)]| {
            entries
                .iter()
                .map(|(table, shape)| (table.clone(), substitute_shape(shape, args)))
                .collect()
        };
        Template {
            reads: shapes(&self.reads),
            writes: shapes(&self.writes),
            barrier: self.barrier.clone(),
        }
    }

    /// The key sets of a call with arguments `args`, by `caller` (`None` leaves `CALLER()`
    /// symbolic, as `EXPLAIN CALL` shows it).
    fn bind(&self, args: &[Option<Sym>], caller: Option<Address>) -> KeySets {
        let mut sets = KeySets {
            barrier: self.barrier.clone(),
            ..KeySets::default()
        };
        if sets.barrier.is_some() {
            return sets;
        }
        let caller = caller.map(|c| c.to_hex());
        let part_text = |part: &Part| -> Option<String> {
            let (sym, key_type) = match part {
                Part::Text(text) => return Some(text.clone()),
                Part::Bound(sym, key_type) => (resolve(sym, args)?, key_type),
            };
            match (sym, &caller) {
                (Sym::Value(value), _) => cast_text(value, key_type),
                (Sym::Caller, None) => Some("CALLER()".into()),
                (Sym::Caller, Some(caller)) => cast_text(&ScalarValue::Utf8(Some(caller.clone())), key_type),
                // An argument left unbound: a statement's placeholder with no value.
                (Sym::Arg(_), _) => None,
            }
        };
        let keys = |shape: &Shape| match shape {
            Shape::All => Keys::All,
            Shape::Rows(rows) => {
                let mut keys = BTreeSet::new();
                for row in rows {
                    let mut text = String::new();
                    for (i, part) in row.iter().enumerate() {
                        let Some(part) = part_text(part) else {
                            return Keys::All;
                        };
                        if i > 0 {
                            text.push('|');
                        }
                        text.push_str(&part);
                    }
                    keys.insert(text);
                }
                Keys::Known(keys)
            }
        };
        for (table, shape) in &self.reads {
            sets.read(table, keys(shape));
        }
        for (table, shape) in &self.writes {
            sets.write(table, keys(shape));
        }
        sets
    }
}

/// A shape with its arguments replaced by `args`; a row with an argument that is unknown, null
/// or not of the key's type makes it `All`.
fn substitute_shape(shape: &Shape, args: &[Option<Sym>]) -> Shape {
    let Shape::Rows(rows) = shape else {
        return Shape::All;
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut parts = Vec::with_capacity(row.len());
        for part in row {
            let part = match part {
                Part::Text(text) => Part::Text(text.clone()),
                Part::Bound(sym, key_type) => match resolve(sym, args) {
                    Some(Sym::Value(value)) => match cast_text(value, key_type) {
                        Some(text) => Part::Text(text),
                        None => return Shape::All,
                    },
                    Some(sym) => Part::Bound(sym.clone(), key_type.clone()),
                    None => return Shape::All,
                },
            };
            parts.push(part);
        }
        out.push(parts);
    }
    Shape::Rows(out)
}

/// A symbol with an argument replaced by its value in `args` (`None`: unknown).
fn resolve<'s>(sym: &'s Sym, args: &'s [Option<Sym>]) -> Option<&'s Sym> {
    match sym {
        Sym::Arg(i) => args.get(*i)?.as_ref(),
        other => Some(other),
    }
}

/// A key value as text, as the key column's type holds it (so `'01'` and `1` name the same
/// `BIGINT` key). A null, or a value the type cannot hold, names no known key.
fn cast_text(value: &ScalarValue, key_type: &DataType) -> Option<String> {
    if value.is_null() {
        return None;
    }
    if let (ScalarValue::Utf8(Some(text)), DataType::Utf8) = (value, key_type) {
        return Some(text.clone());
    }
    value
        .cast_to(key_type)
        .ok()
        .filter(|v| !v.is_null())
        .map(|v| v.to_string())
}

/// Derives key sets against the tables and contracts of one state version.
pub struct Analyzer<'a> {
    state: &'a State,
    /// The sender; `None` leaves `CALLER()` symbolic (as `EXPLAIN CALL` shows it).
    caller: Option<Address>,
    /// Contract templates, kept across the transactions of a stretch of a block (no contract
    /// changes inside one).
    templates: Option<&'a ContractTemplates>,
}

/// The templates of contracts (by name and call depth) derived so far against one state version.
pub type ContractTemplates = std::cell::RefCell<BTreeMap<(String, u32), std::sync::Arc<Template>>>;

impl<'a> Analyzer<'a> {
    pub fn new(state: &'a State, caller: Option<Address>) -> Analyzer<'a> {
        Analyzer {
            state,
            caller,
            templates: None,
        }
    }

    /// An analyzer that derives each contract's template once and keeps it in `templates`.
    pub fn with_templates(
        state: &'a State,
        caller: Option<Address>,
        templates: &'a ContractTemplates,
    ) -> Analyzer<'a> {
        Analyzer {
            state,
            caller,
            templates: Some(templates),
        }
    }

    /// The key sets of a transaction of one statement, already parsed, and its sender's account.
    ///
    /// Statements other than plain SQL change what no key set describes (contracts, stake), so
    /// they run alone.
    pub fn single(&self, statement: &ChainStatement) -> KeySets {
        let mut sets = match statement {
            ChainStatement::Sql(statement) => match statement.as_ref() {
                Statement::Call(function) => self.call(function),
                statement => self.statement(statement, &[], 0).bind(&[], self.caller),
            },
            other => KeySets {
                barrier: Some(barrier_of(other).into()),
                ..KeySets::default()
            },
        };
        self.sender_account(&mut sets);
        sets
    }

    /// The key sets of a whole transaction: its statements, and its sender's account.
    pub fn transaction(&self, statements: &[String]) -> KeySets {
        let mut template = Template::default();
        for sql in statements {
            match chainql::contract::parse_chain_statement(sql) {
                Ok(ChainStatement::Sql(statement)) => template.merge(self.statement(&statement, &[], 0)),
                Ok(other) => template.barrier = Some(barrier_of(&other).into()),
                Err(_) => template.barrier = Some("a statement does not parse".into()),
            }
        }
        let mut sets = template.bind(&[], self.caller);
        self.sender_account(&mut sets);
        sets
    }

    /// Every transaction writes its sender's account (the nonce, the gas reservation).
    fn sender_account(&self, sets: &mut KeySets) {
        if let Some(caller) = self.caller {
            sets.write("chain.accounts", Keys::Known(BTreeSet::from([caller.to_hex()])));
        }
    }

    /// The key sets of `CALL name(args)` of literal arguments: the contract's template bound to
    /// them.
    pub fn call(&self, function: &ast::Function) -> KeySets {
        match self.callee(function, &[], 0) {
            Ok((template, values)) => template.bind(&values, self.caller),
            Err(barrier) => barrier.bind(&[], self.caller),
        }
    }

    /// The template of one statement; `params` are the symbols of its placeholders (`None`
    /// when not known).
    fn statement(&self, statement: &Statement, params: &[Option<Sym>], depth: u32) -> Template {
        let mut sets = Template::default();
        match statement {
            Statement::Insert(insert) => {
                let TableObject::TableName(name) = &insert.table else {
                    return Template::barrier("an INSERT into a table function");
                };
                let table = object_name(name);
                let mut keys = self.insert_keys(&table, insert, params);
                if let Some(ast::OnInsert::OnConflict(conflict)) = &insert.on
                    && let ast::OnConflictAction::DoUpdate(update) = &conflict.action
                    && self.assigns_key(&table, &update.assignments)
                {
                    keys = Shape::All;
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
                    _ => return Template::barrier("an UPDATE of a derived table"),
                };
                let keys = if update.from.is_none()
                    && update.table.joins.is_empty()
                    && !self.assigns_key(&table, &update.assignments)
                {
                    self.predicate_keys(&table, alias.as_deref(), update.selection.as_ref(), params)
                } else {
                    Shape::All
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
                    _ => return Template::barrier("a DELETE of several tables"),
                };
                let keys = if delete.using.is_none() && from[0].joins.is_empty() {
                    self.predicate_keys(&target.0, target.1.as_deref(), delete.selection.as_ref(), params)
                } else {
                    Shape::All
                };
                sets.read(&target.0, keys.clone());
                sets.write(&target.0, keys);
                self.queries(statement, params, &mut sets);
            }
            Statement::Query(query) => self.queries(query.as_ref(), params, &mut sets),
            Statement::Call(function) => sets.merge(self.call_template(function, params, depth)),
            _ => return Template::barrier("it changes the catalog or grants"),
        }
        sets
    }

    /// The template of `CALL name(args)` in a statement with placeholders `params`.
    fn call_template(&self, function: &ast::Function, params: &[Option<Sym>], depth: u32) -> Template {
        match self.callee(function, params, depth) {
            Ok((template, values)) => template.substitute(&values),
            Err(barrier) => barrier,
        }
    }

    /// The template of the contract `CALL name(args)` calls and the symbols of its arguments,
    /// or a barrier.
    fn callee(
        &self,
        function: &ast::Function,
        params: &[Option<Sym>],
        depth: u32,
    ) -> std::result::Result<(std::sync::Arc<Template>, Vec<Option<Sym>>), Template> {
        if is_native_transfer(&function.name) {
            return Err(Template::barrier("a native transfer"));
        }
        let Ok(name) = call_target(&function.name) else {
            return Err(Template::barrier("an unknown contract"));
        };
        let Ok(args) = call_argument_refs(function) else {
            return Err(Template::barrier("a call with arguments that are not positional"));
        };
        let values: Vec<Option<Sym>> = args.iter().map(|a| self.value(a, params)).collect();
        Ok((self.contract(&name, depth), values))
    }

    /// What contract `name` touches, called at `depth`, with its arguments symbolic.
    fn contract(&self, name: &str, depth: u32) -> std::sync::Arc<Template> {
        let key = (name.to_string(), depth);
        if let Some(templates) = self.templates
            && let Some(template) = templates.borrow().get(&key)
        {
            return template.clone();
        }
        let template = std::sync::Arc::new(self.derive_contract(name, depth));
        if let Some(templates) = self.templates {
            templates.borrow_mut().insert(key, template.clone());
        }
        template
    }

    fn derive_contract(&self, name: &str, depth: u32) -> Template {
        let Some(contract) = self.state.contract(name) else {
            return Template::barrier(format!("contract {name} does not exist"));
        };
        if depth >= CALL_DEPTH_MAX {
            return Template::barrier("calls nest too deep");
        }
        let mut template = Template::default();
        for (_, step) in self.steps(&contract.definition, depth, false) {
            template.merge(step);
        }
        template
    }

    /// Each body statement of a contract with its key sets, for `values` of its parameters
    /// (`CALLER()` as this analyzer's caller).
    pub fn contract_steps(
        &self,
        definition: &chainql::contract::ContractDefinition,
        values: &[Option<ScalarValue>],
        depth: u32,
    ) -> Vec<(String, KeySets)> {
        let args: Vec<Option<Sym>> = values.iter().map(|v| v.clone().map(Sym::Value)).collect();
        self.steps(definition, depth, true)
            .into_iter()
            .map(|(text, template)| (text, template.bind(&args, self.caller)))
            .collect()
    }

    /// Each body statement's template, with its text when `describe` is set (formatting SQL
    /// costs more than the analysis, and ordering a block needs only the sets).
    fn steps(
        &self,
        definition: &chainql::contract::ContractDefinition,
        depth: u32,
        describe: bool,
    ) -> Vec<(String, Template)> {
        let mut params: Vec<Option<Sym>> = (0..definition.parameters.len())
            .map(|i| Some(Sym::Arg(i)))
            .collect();
        let body = definition.bound_statements();
        let mut steps = Vec::with_capacity(body.len());
        for statement in &body {
            let mut sets = Template::default();
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
                    sets.merge(self.contract(contract, depth + 1).substitute(&values));
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
    fn queries<T: Visit>(&self, node: &T, params: &[Option<Sym>], sets: &mut Template) {
        struct Queries<'b, 'c> {
            analyzer: &'b Analyzer<'c>,
            params: &'b [Option<Sym>],
            sets: &'b mut Template,
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
    fn query_reads(&self, query: &Query, params: &[Option<Sym>], sets: &mut Template) {
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
                        Shape::All
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
    fn insert_keys(&self, table: &str, insert: &ast::Insert, params: &[Option<Sym>]) -> Shape {
        let Some(definition) = self.state.table(table).map(|t| t.definition()) else {
            return Shape::All;
        };
        if definition.primary_key.is_empty() {
            return Shape::All;
        }
        let Some(SetExpr::Values(values)) = insert.source.as_ref().map(|s| s.body.as_ref()) else {
            return Shape::All;
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
            return Shape::All;
        };
        let mut rows = Vec::with_capacity(values.rows.len());
        for row in &values.rows {
            let parts: Option<Vec<Part>> = positions
                .iter()
                .zip(&definition.primary_key)
                .map(|(&p, &k)| {
                    let key_type = &definition.columns[k].column_type.data_type;
                    row.get(p).and_then(|e| self.key_part(e, params, key_type))
                })
                .collect();
            match parts {
                Some(parts) => rows.push(parts),
                None => return Shape::All,
            };
        }
        Shape::Rows(rows)
    }

    /// The keys a `WHERE` pins: every primary-key column equal to a known value.
    fn predicate_keys(
        &self,
        table: &str,
        alias: Option<&str>,
        selection: Option<&Expr>,
        params: &[Option<Sym>],
    ) -> Shape {
        let Some(definition) = self.state.table(table).map(|t| t.definition()) else {
            return Shape::All;
        };
        let Some(selection) = selection else {
            return Shape::All;
        };
        // Only a single-column key is found through the index; a predicate on a composite key
        // scans the table, and what a scan costs depends on every row.
        if definition.primary_key.len() != 1 {
            return Shape::All;
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
                        self.key_part(right, params, key_type)
                    } else if names_column(right, table, alias, column) {
                        self.key_part(left, params, key_type)
                    } else {
                        None
                    }
                }
                _ => None,
            });
            match value {
                Some(value) => parts.push(value),
                None => return Shape::All,
            }
        }
        Shape::Rows(vec![parts])
    }

    /// A key column's value: a literal (cast now), or an argument or `CALLER()` (cast when
    /// bound). `None` when it is neither, or a literal the type cannot hold.
    fn key_part(&self, expr: &Expr, params: &[Option<Sym>], key_type: &DataType) -> Option<Part> {
        match self.value(expr, params)? {
            Sym::Value(value) => cast_text(&value, key_type).map(Part::Text),
            sym => Some(Part::Bound(sym, key_type.clone())),
        }
    }

    /// The value of a literal argument.
    pub fn literal(&self, expr: &Expr) -> Option<ScalarValue> {
        match self.value(expr, &[]) {
            Some(Sym::Value(value)) => Some(value),
            _ => None,
        }
    }

    /// The symbol of a literal, a placeholder or `CALLER()`.
    fn value(&self, expr: &Expr, params: &[Option<Sym>]) -> Option<Sym> {
        match expr {
            Expr::Nested(inner) => self.value(inner, params),
            Expr::Value(value) => match &value.value {
                Value::Number(n, _) => n
                    .parse::<i64>()
                    .ok()
                    .map(|n| Sym::Value(ScalarValue::Int64(Some(n)))),
                Value::SingleQuotedString(s) => Some(Sym::Value(ScalarValue::Utf8(Some(s.clone())))),
                Value::Placeholder(p) => {
                    placeholder_position(p).and_then(|n| params.get(n).cloned().flatten())
                }
                _ => None,
            },
            Expr::Function(function) if is_caller(function) => Some(Sym::Caller),
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

/// What cutting stages needs of a transaction's key sets: fingerprints of its tables and keys.
/// Computed where the key sets are derived (on the analysis threads), so [`stages`], which runs
/// in block order on one thread, only compares numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    barrier: bool,
    /// The key fingerprints of every entry, entry after entry.
    prints: Vec<u64>,
    /// Per table read, then per table written: the table's fingerprint, and the range of
    /// `prints` holding its keys' (`None`: any key).
    reads: Vec<(u64, Option<std::ops::Range<usize>>)>,
    writes: Vec<(u64, Option<std::ops::Range<usize>>)>,
}

impl Footprint {
    pub fn of(sets: &KeySets) -> Footprint {
        let mut prints = Vec::new();
        let mut entries = |map: &BTreeMap<String, Keys>| -> Vec<(u64, Option<std::ops::Range<usize>>)> {
            map.iter()
                .map(|(table, keys)| {
                    let range = match keys {
                        Keys::All => None,
                        Keys::Known(keys) => {
                            let start = prints.len();
                            prints.extend(keys.iter().map(|key| fingerprint(table, key)));
                            Some(start..prints.len())
                        }
                    };
                    (fingerprint(table, ""), range)
                })
                .collect()
        };
        let reads = entries(&sets.reads);
        let writes = entries(&sets.writes);
        Footprint {
            barrier: sets.barrier.is_some(),
            prints,
            reads,
            writes,
        }
    }

    pub fn is_barrier(&self) -> bool {
        self.barrier
    }

    /// The key fingerprints of an entry (`None`: any key).
    fn keys(&self, range: &Option<std::ops::Range<usize>>) -> Option<&[u64]> {
        range.clone().map(|range| &self.prints[range])
    }
}

/// Cuts a block's transactions (their footprints, in block order) into stages: each transaction
/// goes one stage past the latest earlier transaction it conflicts with.
pub fn stages(transactions: &[Footprint]) -> Vec<Vec<usize>> {
    let mut seen = Seen::with_capacity(transactions.len());
    let mut stages: Vec<Vec<usize>> = Vec::new();
    for (i, footprint) in transactions.iter().enumerate() {
        let stage = seen.stage_of(footprint);
        seen.record(footprint, stage);
        if stages.len() <= stage {
            stages.resize(stage + 1, Vec::new());
        }
        stages[stage].push(i);
    }
    stages
}

/// The latest stage (plus one) of earlier accesses, per table and key: a transaction's stage is
/// the largest of these over what it conflicts with, found in O(keys) rather than by comparing
/// it with every earlier transaction.
struct Seen {
    /// What was read (or written), by key and by table.
    reads: Accesses,
    writes: Accesses,
    /// After the latest stage of any transaction, and of any barrier.
    any: usize,
    barrier: usize,
}

/// Accesses by key and by table. Keys and tables are known by 64-bit fingerprints (a key's
/// covers its table and its text): two that share one are treated as one, which can only put a
/// transaction in a later stage than it needs (never an earlier one), so the stages stay
/// serially equivalent.
struct Accesses {
    /// Per key fingerprint, after the latest stage that accessed it. Membership and maxima
    /// only: the map's iteration order is never observed.
    keys: std::collections::HashMap<u64, usize, FingerprintState>,
    /// Per table fingerprint: after the latest stage that accessed any key (`All`), and that
    /// accessed anything at all.
    tables: std::collections::HashMap<u64, (usize, usize), FingerprintState>,
}

impl Accesses {
    fn with_capacity(keys: usize) -> Accesses {
        Accesses {
            keys: std::collections::HashMap::with_capacity_and_hasher(keys, FingerprintState),
            tables: std::collections::HashMap::with_hasher(FingerprintState),
        }
    }

    /// After the latest stage of an access that overlaps `keys` (fingerprints; `None`: any
    /// key) of `table`.
    fn after(&self, table: u64, keys: Option<&[u64]>) -> usize {
        let Some(&(all, any)) = self.tables.get(&table) else {
            return 0;
        };
        match keys {
            None => any,
            Some(keys) => keys
                .iter()
                .filter_map(|k| self.keys.get(k))
                .copied()
                .max()
                .unwrap_or(0)
                .max(all),
        }
    }

    fn record(&mut self, table: u64, keys: Option<&[u64]>, after: usize) {
        let (all, any) = self.tables.entry(table).or_insert((0, 0));
        *any = (*any).max(after);
        match keys {
            None => *all = (*all).max(after),
            Some(keys) => {
                for &key in keys {
                    let latest = self.keys.entry(key).or_insert(0);
                    *latest = (*latest).max(after);
                }
            }
        }
    }
}

impl Seen {
    fn with_capacity(transactions: usize) -> Seen {
        Seen {
            reads: Accesses::with_capacity(2 * transactions),
            writes: Accesses::with_capacity(3 * transactions),
            any: 0,
            barrier: 0,
        }
    }

    fn stage_of(&self, footprint: &Footprint) -> usize {
        if footprint.barrier {
            return self.any;
        }
        let mut stage = self.barrier;
        for (table, keys) in &footprint.writes {
            let keys = footprint.keys(keys);
            stage = stage
                .max(self.reads.after(*table, keys))
                .max(self.writes.after(*table, keys));
        }
        for (table, keys) in &footprint.reads {
            stage = stage.max(self.writes.after(*table, footprint.keys(keys)));
        }
        stage
    }

    fn record(&mut self, footprint: &Footprint, stage: usize) {
        let after = stage + 1;
        self.any = self.any.max(after);
        if footprint.barrier {
            self.barrier = self.barrier.max(after);
            return;
        }
        for (table, keys) in &footprint.reads {
            self.reads.record(*table, footprint.keys(keys), after);
        }
        for (table, keys) in &footprint.writes {
            self.writes.record(*table, footprint.keys(keys), after);
        }
    }
}

/// FxHash's multiplier.
const FX_SEED: u64 = 0x517c_c1b7_2722_0a95;

/// A key's fingerprint: a hash of its table and text, eight bytes at a time (FxHash's step),
/// then mixed by MurmurHash3's finalizer. A table's own fingerprint is that of its empty key
/// (the two are kept in different maps).
fn fingerprint(table: &str, key: &str) -> u64 {
    let mut hash: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            hash = (hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        // The length keeps "ab" + "c" apart from "a" + "bc".
        last[7] = bytes.len() as u8;
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(FX_SEED);
    };
    add(table.as_bytes());
    add(key.as_bytes());
    crate::encode::fmix64(hash)
}

/// Hashes fingerprints as themselves: they are already mixed.
#[derive(Clone, Copy, Default)]
struct FingerprintState;

impl std::hash::BuildHasher for FingerprintState {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); fold anything else in.
        for &byte in bytes {
            self.0 = (self.0 ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Why a ChainQL statement that is not plain SQL runs alone in its stage.
fn barrier_of(statement: &ChainStatement) -> &'static str {
    match statement {
        ChainStatement::Stake(_) | ChainStatement::Unstake(_) => "it changes stake",
        _ => "it changes contracts",
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

    fn stages(transactions: &[KeySets]) -> Vec<Vec<usize>> {
        super::stages(&transactions.iter().map(Footprint::of).collect::<Vec<_>>())
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
        let mut next = crate::test_numbers(0x2545_f491_4f6c_dd1du64);
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
