//! The R2 runtime's vectorized calls: many calls of one contract in one conflict-free stage run
//! as one set-oriented evaluation per body statement.
//!
//! The calls' arguments become one Arrow batch (a column per parameter, plus the caller and the
//! transaction hash); each body statement is evaluated once over it with DataFusion's physical
//! expressions. Point lookups (`(SELECT v FROM t WHERE key = ...)`, and the rows an `UPDATE`,
//! `DELETE` or upsert targets by key) go through the primary-key index for every call at once,
//! and each statement's writes land in the table as one delete and one insert.
//!
//! Serial equivalence is the contract: a stage's calls touch disjoint keys (their key sets do not
//! conflict), so evaluating a statement for all of them against the state the earlier statements
//! left gives every call what it would see run alone. Gas is charged per call exactly as the
//! serial path charges it: the statement, 10 per row read, 100 per row written (a point
//! statement's computation is within a plan's free allowance). Only the success path is
//! vectorized: a call that fails anywhere (a `REQUIRE`, a constraint, an expression error, gas)
//! is taken out of the batch — the stage is run again without it if it had already written —
//! and runs through the serial executor, which produces its error and its gas. A contract whose
//! body has anything else (nested calls, a result, subqueries other than point lookups, tables
//! without a primary key) is not compiled, and its calls run serially.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use chainql::Address;
use chainql::contract::{Access, ContractStatement, placeholder_position};
use chainql_planner::{Privileges, RESERVED_PREFIX, TableDefinition, plan_write};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, new_null_array,
};
use datafusion::arrow::compute::{concat, filter as filter_array, filter_record_batch, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ScalarValue, TableReference};
use datafusion::execution::SessionState;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, BinaryOperator, Expr, FromTable, Ident, OnConflictAction, OnInsert, Query,
    SetExpr, Statement, TableFactor, TableObject, Value, Visit, Visitor, visit_expressions_mut,
};

use crate::contract::{Contract, EVENT_ARGS_MAX, EmittedEvent, parameter_type, render};
use crate::encode::encode_key;
use crate::execute::{BlockContext, GAS_PER_ROW_WRITTEN, GAS_PER_STATEMENT, cast_column};
use crate::gas::GAS_PER_ROW_READ;
use crate::parallel::Split;
use crate::state::State;
use crate::table::{RowLocation, Table, TableUndo, check_constraints};
use crate::{Error, Executor, Result};

/// A contract body compiled for vectorized calls. It lives for one stretch of a block (the
/// compiled contracts are made again after a barrier), so what it keeps is planned against
/// one block's values and one catalog.
#[derive(Debug)]
pub(crate) struct VectorContract {
    pub contract: Arc<Contract>,
    pub parameter_types: Vec<DataType>,
    steps: Vec<Step>,
    /// Physical expressions planned so far, by expression and then by the columns they were
    /// planned over: every stage of the stretch evaluates the same expressions over columns of
    /// the same names and types, and only the first plans them. Looking one up borrows the
    /// expression and the frame's columns; only planning copies them.
    plans: Mutex<HashMap<Expr, Vec<(FrameFields, Arc<dyn PhysicalExpr>)>>>,
}

/// The (qualified) columns of a frame.
type FrameFields = Vec<(Option<TableReference>, Arc<Field>)>;

#[derive(Debug)]
enum Step {
    Require(Vectorized),
    Let(Vectorized),
    Emit {
        event: String,
        args: Vec<Vectorized>,
    },
    Update {
        target: Target,
        key: Expr,
        filter: Option<Expr>,
        assignments: Vec<(usize, Expr)>,
    },
    Delete {
        target: Target,
        key: Expr,
        filter: Option<Expr>,
    },
    Insert {
        target: Target,
        values: Vec<Option<Expr>>,
        conflict: Conflict,
    },
}

/// A table a statement reads or writes by key, and the name its columns are qualified by.
#[derive(Debug, Clone)]
struct Target {
    table: String,
    qualifier: String,
}

#[derive(Debug)]
enum Conflict {
    /// No `ON CONFLICT`: an existing key fails the call.
    Fail,
    Nothing,
    Update {
        assignments: Vec<(usize, Expr)>,
        filter: Option<Expr>,
    },
}

/// An expression over the calls' values, with the point lookups it reads (each replaced in
/// `expr` by the column `__chainql_sqN`).
#[derive(Debug)]
struct Vectorized {
    expr: Expr,
    lookups: Vec<Lookup>,
}

/// `(SELECT value FROM target WHERE key_column = key AND filter)`.
#[derive(Debug)]
struct Lookup {
    target: Target,
    key: Expr,
    filter: Option<Expr>,
    value: Expr,
}

fn param_column(n: usize) -> String {
    format!("{RESERVED_PREFIX}_p{}", n + 1)
}

fn caller_column() -> String {
    format!("{RESERVED_PREFIX}_caller")
}

fn transaction_column() -> String {
    format!("{RESERVED_PREFIX}_tx")
}

fn lookup_column(n: usize) -> String {
    format!("{RESERVED_PREFIX}_sq{}", n + 1)
}

fn is_function(function: &ast::Function, name: &str) -> bool {
    function.name.0.len() == 1
        && function.name.0[0]
            .as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(name))
        && match &function.args {
            ast::FunctionArguments::None => true,
            ast::FunctionArguments::List(list) => list.args.is_empty(),
            ast::FunctionArguments::Subquery(_) => false,
        }
}

fn lowercase(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The table of a one-part name (user tables only).
fn table_name(name: &ast::ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [part] => part.as_ident().map(lowercase),
        _ => None,
    }
}

/// Rewrites placeholders, `CALLER()` and `TX_HASH()` to the batch's columns, and refuses what a
/// vectorized evaluation cannot do: subqueries, aggregate and window functions.
fn normalize(mut expr: Expr, session: &SessionState) -> Option<Expr> {
    let mut ok = true;
    let _ = visit_expressions_mut(&mut expr, |e: &mut Expr| {
        let replacement = match &*e {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => match placeholder_position(p) {
                    Some(n) => Some(param_column(n)),
                    None => {
                        ok = false;
                        None
                    }
                },
                _ => None,
            },
            Expr::Function(f) if is_function(f, "caller") => Some(caller_column()),
            Expr::Function(f) if is_function(f, "tx_hash") => Some(transaction_column()),
            Expr::Function(f) => {
                let name = f.name.to_string().to_lowercase();
                if f.over.is_some()
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                    || !session.scalar_functions().contains_key(&name)
                {
                    ok = false;
                }
                None
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                ok = false;
                None
            }
            _ => None,
        };
        if let Some(column) = replacement {
            *e = Expr::Identifier(Ident::new(column));
        }
        ControlFlow::<()>::Continue(())
    });
    ok.then_some(expr)
}

/// True when an expression reads only the calls' values: no column of any table.
fn reads_only_values(expr: &Expr) -> bool {
    struct Columns;
    impl Visitor for Columns {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Identifier(ident) if ident.value.starts_with(RESERVED_PREFIX) => {
                    ControlFlow::Continue(())
                }
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    expr.visit(&mut Columns).is_continue()
}

fn split_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner) => split_and(*inner, out),
        other => out.push(other),
    }
}

fn join_and(conjuncts: Vec<Expr>) -> Option<Expr> {
    conjuncts.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    })
}

fn names_column(expr: &Expr, qualifier: &str, column: &str) -> bool {
    match expr {
        Expr::Identifier(ident) => lowercase(ident) == column,
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            lowercase(&parts[0]) == qualifier && lowercase(&parts[1]) == column
        }
        Expr::Nested(inner) => names_column(inner, qualifier, column),
        _ => false,
    }
}

/// Splits a normalized `WHERE` into the key the single-column primary key is equal to (an
/// expression of the calls' values only) and the rest.
fn key_predicate(
    selection: Expr,
    definition: &TableDefinition,
    qualifier: &str,
) -> Option<(Expr, Option<Expr>)> {
    let [key] = definition.primary_key.as_slice() else {
        return None;
    };
    let column = &definition.columns[*key].name;
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    let is_key_equality = |c: &Expr| match c {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            (names_column(left, qualifier, column) && reads_only_values(right))
                || (names_column(right, qualifier, column) && reads_only_values(left))
        }
        _ => false,
    };
    // Two equalities on the key find at most one row through the index, or none: the serial
    // path's reads depend on both, so such a statement is not compiled.
    if conjuncts.iter().filter(|c| is_key_equality(c)).count() != 1 {
        return None;
    }
    let position = conjuncts.iter().position(is_key_equality)?;
    let Expr::BinaryOp { left, right, .. } = conjuncts.remove(position) else {
        return None;
    };
    let key = if names_column(&left, qualifier, column) {
        *right
    } else {
        *left
    };
    Some((key, join_and(conjuncts)))
}

/// What compiling needs to know of the tables.
struct Compiler<'a> {
    state: &'a State,
    session: &'a SessionState,
    owner: Address,
}

impl Compiler<'_> {
    /// A user table with a single-column primary key that the contract's owner may change as
    /// `wanted` says.
    fn table(&self, name: &str, wanted: Privileges) -> Option<&Arc<Table>> {
        let table = self.state.table(name)?;
        let definition = table.definition();
        if definition.has_hidden_row_id() || definition.primary_key.len() != 1 {
            return None;
        }
        let held = table.privileges_of(&self.owner);
        wanted.without(held).is_empty().then_some(table)
    }

    fn expression(&self, expr: Expr) -> Option<Vectorized> {
        let mut expr = expr;
        let mut subqueries = Vec::new();
        let mut ok = true;
        let _ = visit_expressions_mut(&mut expr, |e: &mut Expr| {
            if let Expr::Subquery(query) = e {
                let n = subqueries.len();
                subqueries.push(query.as_ref().clone());
                *e = Expr::Identifier(Ident::new(lookup_column(n)));
            } else if matches!(e, Expr::Exists { .. } | Expr::InSubquery { .. }) {
                ok = false;
            }
            ControlFlow::<()>::Continue(())
        });
        if !ok {
            return None;
        }
        let lookups = subqueries
            .into_iter()
            .map(|q| self.lookup(q))
            .collect::<Option<Vec<_>>>()?;
        Some(Vectorized {
            expr: normalize(expr, self.session)?,
            lookups,
        })
    }

    /// A scalar subquery that reads one row of one table by its key.
    fn lookup(&self, query: Query) -> Option<Lookup> {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        let [ast::SelectItem::UnnamedExpr(value) | ast::SelectItem::ExprWithAlias { expr: value, .. }] =
            select.projection.as_slice()
        else {
            return None;
        };
        let [from] = select.from.as_slice() else {
            return None;
        };
        let selection = select.selection.as_ref()?;
        // Nothing but SELECT value FROM table WHERE selection: no grouping, ordering, limits.
        if query.to_string() != format!("SELECT {} FROM {from} WHERE {selection}", select.projection[0]) {
            return None;
        }
        if !from.joins.is_empty() {
            return None;
        }
        let (target, _, key, filter) = self.keyed(&from.relation, Privileges::default(), selection)?;
        let value = self.scalar(value)?;
        Some(Lookup {
            target,
            key,
            filter,
            value,
        })
    }

    /// The table a statement reads or writes one row of, with the key its `WHERE` pins and the
    /// rest of the `WHERE`.
    fn keyed(
        &self,
        relation: &TableFactor,
        wanted: Privileges,
        selection: &Expr,
    ) -> Option<(Target, &TableDefinition, Expr, Option<Expr>)> {
        let TableFactor::Table { name, alias, .. } = relation else {
            return None;
        };
        let table = table_name(name)?;
        let definition = self.table(&table, wanted)?.definition();
        let qualifier = alias
            .as_ref()
            .map(|a| lowercase(&a.name))
            .unwrap_or_else(|| table.clone());
        let (key, filter) = key_predicate(self.scalar(selection)?, definition, &qualifier)?;
        Some((Target { table, qualifier }, definition, key, filter))
    }

    /// An expression of a write statement: no subqueries.
    fn scalar(&self, expr: &Expr) -> Option<Expr> {
        normalize(expr.clone(), self.session)
    }

    fn assignments(
        &self,
        definition: &TableDefinition,
        assignments: &[ast::Assignment],
    ) -> Option<Vec<(usize, Expr)>> {
        assignments
            .iter()
            .map(|a| {
                let AssignmentTarget::ColumnName(name) = &a.target else {
                    return None;
                };
                let column = definition.column_index(&table_name(name)?)?;
                if definition.primary_key.contains(&column) {
                    return None;
                }
                Some((column, self.scalar(&a.value)?))
            })
            .collect()
    }

    fn statement(&self, statement: &Statement) -> Option<Step> {
        // The planner's checks (supported clauses, known columns) hold for what is compiled.
        plan_write(statement).ok()?;
        match statement {
            Statement::Update(update) => {
                if update.from.is_some()
                    || !update.table.joins.is_empty()
                    || update.returning.is_some()
                    || update.limit.is_some()
                    || !update.order_by.is_empty()
                {
                    return None;
                }
                let wanted = Privileges {
                    update: true,
                    ..Privileges::default()
                };
                let (target, definition, key, filter) =
                    self.keyed(&update.table.relation, wanted, update.selection.as_ref()?)?;
                let assignments = self.assignments(definition, &update.assignments)?;
                Some(Step::Update {
                    target,
                    key,
                    filter,
                    assignments,
                })
            }
            Statement::Delete(delete) => {
                let from = match &delete.from {
                    FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => from,
                };
                if delete.using.is_some()
                    || !delete.tables.is_empty()
                    || delete.returning.is_some()
                    || delete.limit.is_some()
                    || !delete.order_by.is_empty()
                {
                    return None;
                }
                let [from] = from.as_slice() else {
                    return None;
                };
                if !from.joins.is_empty() {
                    return None;
                }
                let wanted = Privileges {
                    delete: true,
                    ..Privileges::default()
                };
                let (target, _, key, filter) =
                    self.keyed(&from.relation, wanted, delete.selection.as_ref()?)?;
                Some(Step::Delete { target, key, filter })
            }
            Statement::Insert(insert) => {
                if insert.or.is_some()
                    || insert.ignore
                    || insert.overwrite
                    || !insert.assignments.is_empty()
                    || insert.partitioned.is_some()
                    || !insert.after_columns.is_empty()
                    || insert.returning.is_some()
                    || insert.replace_into
                    || insert.priority.is_some()
                    || insert.insert_alias.is_some()
                    || insert.settings.is_some()
                    || insert.format_clause.is_some()
                    || insert.output.is_some()
                {
                    return None;
                }
                // An alias would name the target in `DO UPDATE`; the serial path knows it by its
                // table name only.
                if insert.table_alias.is_some() {
                    return None;
                }
                let TableObject::TableName(name) = &insert.table else {
                    return None;
                };
                let table = table_name(name)?;
                let wanted = Privileges {
                    insert: true,
                    ..Privileges::default()
                };
                let definition = self.table(&table, wanted)?.definition();
                let qualifier = table.clone();
                let source = insert.source.as_ref()?;
                let SetExpr::Values(values) = source.body.as_ref() else {
                    return None;
                };
                let [row] = values.rows.as_slice() else {
                    return None;
                };
                if source.to_string() != values.to_string() {
                    return None;
                }
                let columns: Vec<usize> = if insert.columns.is_empty() {
                    (0..definition.columns.len()).collect()
                } else {
                    insert
                        .columns
                        .iter()
                        .map(|c| definition.column_index(&table_name(c)?))
                        .collect::<Option<_>>()?
                };
                if columns.len() != row.content.len() {
                    return None;
                }
                let mut exprs: Vec<Option<Expr>> = vec![None; definition.columns.len()];
                for (&column, expr) in columns.iter().zip(&row.content) {
                    exprs[column] = Some(self.scalar(expr)?);
                }
                // A missing column takes NULL; a DEFAULT expression is the serial path's work.
                if exprs
                    .iter()
                    .zip(&definition.columns)
                    .any(|(e, c)| e.is_none() && c.default.is_some())
                {
                    return None;
                }
                let conflict = match &insert.on {
                    None => Conflict::Fail,
                    Some(OnInsert::OnConflict(on)) => match &on.action {
                        OnConflictAction::DoNothing => Conflict::Nothing,
                        OnConflictAction::DoUpdate(update) => Conflict::Update {
                            assignments: self.assignments(definition, &update.assignments)?,
                            filter: match &update.selection {
                                Some(selection) => Some(self.scalar(selection)?),
                                None => None,
                            },
                        },
                    },
                    Some(_) => return None,
                };
                Some(Step::Insert {
                    target: Target { table, qualifier },
                    values: exprs,
                    conflict,
                })
            }
            _ => None,
        }
    }
}

/// Compiles a contract for vectorized calls, or `None` when its calls must run serially.
pub(crate) fn compile(
    state: &State,
    session: &SessionState,
    contract: &Arc<Contract>,
) -> Option<VectorContract> {
    let definition = &contract.definition;
    if definition.view || definition.returns.is_some() {
        return None;
    }
    let compiler = Compiler {
        state,
        session,
        owner: contract.owner,
    };
    let parameter_types = definition
        .parameters
        .iter()
        .map(|(_, t)| parameter_type(t).ok())
        .collect::<Option<Vec<_>>>()?;
    let mut steps = Vec::with_capacity(definition.statements.len());
    for statement in definition.bound_statements() {
        steps.push(match statement {
            ContractStatement::Require { condition, .. } => Step::Require(compiler.expression(condition)?),
            ContractStatement::Let { value, .. } => Step::Let(compiler.expression(value)?),
            ContractStatement::Emit { event, args } => {
                if args.len() > EVENT_ARGS_MAX {
                    return None;
                }
                let args = args
                    .into_iter()
                    .map(|arg| compiler.expression(arg))
                    .collect::<Option<Vec<_>>>()?;
                Step::Emit { event, args }
            }
            ContractStatement::Call { .. } => return None,
            ContractStatement::Sql(statement) => compiler.statement(&statement)?,
        });
    }
    Some(VectorContract {
        contract: Arc::clone(contract),
        parameter_types,
        steps,
        plans: Mutex::default(),
    })
}

/// One call of a vectorized group.
#[derive(Debug)]
pub(crate) struct VectorCall {
    pub caller: Address,
    pub transaction: chainql::Hash,
    pub gas_limit: u64,
    /// The arguments, cast to the parameters' types.
    pub args: Vec<ScalarValue>,
}

/// What a call that succeeded did, besides its writes.
#[derive(Debug)]
pub(crate) struct CallSuccess {
    pub gas_used: u64,
    pub events: Vec<EmittedEvent>,
}

/// Columns over the live calls of a batch, each qualified or not, with a DataFusion schema.
struct Frame {
    fields: FrameFields,
    columns: Vec<ArrayRef>,
    rows: usize,
}

impl Frame {
    fn new(rows: usize) -> Frame {
        Frame {
            fields: Vec::new(),
            columns: Vec::new(),
            rows,
        }
    }

    fn push(&mut self, qualifier: Option<&str>, name: &str, column: ArrayRef) {
        self.fields.push((
            qualifier.map(TableReference::bare),
            Arc::new(Field::new(name, column.data_type().clone(), true)),
        ));
        self.columns.push(column);
    }

    /// The rows of a table (`rows`: the user columns, in order), qualified by `qualifier`.
    fn push_table(&mut self, qualifier: &str, definition: &TableDefinition, rows: &[ArrayRef]) {
        for (column, values) in definition.columns.iter().zip(rows) {
            self.push(Some(qualifier), &column.name, values.clone());
        }
    }

    /// Only the rows of `mask`.
    fn select(&self, mask: &BooleanArray) -> Result<Frame> {
        let columns = self
            .columns
            .iter()
            .map(|c| filter_array(c, mask))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Frame {
            fields: self.fields.clone(),
            columns,
            rows: mask.true_count(),
        })
    }

    fn slice(&self, row: usize) -> Frame {
        Frame {
            fields: self.fields.clone(),
            columns: self.columns.iter().map(|c| c.slice(row, 1)).collect(),
            rows: 1,
        }
    }

    /// The physical expression of `expr` over this frame's columns.
    fn plan(&self, session: &SessionState, expr: &Expr) -> Result<Arc<dyn PhysicalExpr>> {
        let schema = DFSchema::new_with_metadata(self.fields.clone(), Default::default())?;
        let logical = session.create_logical_expr_from_sql_expr(
            ast::ExprWithAlias {
                expr: expr.clone(),
                alias: None,
            },
            &schema,
        )?;
        Ok(session.create_physical_expr(logical, &schema)?)
    }

    fn evaluate_all(&self, physical: &Arc<dyn PhysicalExpr>) -> Result<ArrayRef> {
        let arrow_schema = Arc::new(Schema::new(
            self.fields.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new_with_options(
            arrow_schema,
            self.columns.clone(),
            &RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )?;
        Ok(physical.evaluate(&batch)?.into_array(self.rows)?)
    }

    /// Evaluates `physical` for every row; a row whose evaluation fails is flagged in the
    /// second result (its value in the first is null).
    fn evaluate(&self, physical: &Arc<dyn PhysicalExpr>) -> Option<(ArrayRef, Vec<bool>)> {
        match self.evaluate_all(physical) {
            Ok(values) => Some((values, vec![false; self.rows])),
            Err(_) if self.rows > 0 => {
                let mut failed = vec![false; self.rows];
                let mut parts: Vec<Option<ArrayRef>> = Vec::with_capacity(self.rows);
                for (row, failed) in failed.iter_mut().enumerate() {
                    match self.slice(row).evaluate_all(physical) {
                        Ok(value) => parts.push(Some(value)),
                        Err(_) => {
                            *failed = true;
                            parts.push(None);
                        }
                    }
                }
                let data_type = parts
                    .iter()
                    .flatten()
                    .next()
                    .map(|a| a.data_type().clone())
                    .unwrap_or(DataType::Null);
                let null = new_null_array(&data_type, 1);
                let pieces: Vec<&dyn Array> = parts
                    .iter()
                    .map(|p| p.as_deref().unwrap_or(null.as_ref()))
                    .collect();
                Some((concat(&pieces).ok()?, failed))
            }
            Err(_) => None,
        }
    }
}

/// Spreads the values of the selected rows back over all rows, with nulls elsewhere.
fn scatter(values: &ArrayRef, mask: &BooleanArray) -> Result<ArrayRef> {
    let null = new_null_array(values.data_type(), 1);
    let mut next = 0;
    let indices: Vec<(usize, usize)> = mask
        .iter()
        .map(|selected| {
            if selected == Some(true) {
                next += 1;
                (0, next - 1)
            } else {
                (1, 0)
            }
        })
        .collect();
    Ok(interleave(&[values.as_ref(), null.as_ref()], &indices)?)
}

/// True where `values` is a true boolean.
fn truths(values: &ArrayRef) -> Option<Vec<bool>> {
    let values = values.as_any().downcast_ref::<BooleanArray>()?;
    Some(values.iter().map(|v| v == Some(true)).collect())
}

/// The value of a frame's expression, or, when it cannot be planned, the attempt abandoned.
macro_rules! evaluated {
    ($pass:expr, $working:expr, $frame:expr, $expr:expr) => {
        match $pass.evaluate($working, &$frame, $expr)? {
            Some(evaluated) => evaluated,
            None => return Ok(Attempt::Abandon),
        }
    };
}

/// The outcome of trying a step over the live calls.
enum Attempt<T> {
    Done(T),
    /// These live calls fail (the rest may be tried again without them).
    Failing(Vec<bool>),
    /// Every live call fails: the step cannot be vectorized for them.
    Abandon,
}

/// Spreads per-row flags of the rows `selected` picked back over all rows.
fn spread(flags: &[bool], selected: &BooleanArray) -> Vec<bool> {
    let mut flags = flags.iter();
    selected
        .iter()
        .map(|s| s == Some(true) && *flags.next().unwrap_or(&false))
        .collect()
}

/// Casts values to a table's column types and checks its constraints; on failure, which rows
/// fail.
fn checked_columns(
    definition: &TableDefinition,
    columns: &[ArrayRef],
) -> Result<Result<Vec<ArrayRef>, Vec<bool>>> {
    let check = |columns: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
        let cast = columns
            .iter()
            .enumerate()
            .map(|(i, c)| cast_column(definition, i, c))
            .collect::<Result<Vec<_>>>()?;
        check_constraints(definition, &cast)?;
        Ok(cast)
    };
    if let Ok(cast) = check(columns) {
        return Ok(Ok(cast));
    }
    let rows = columns.first().map_or(0, |c| c.len());
    let failing: Vec<bool> = (0..rows)
        .map(|row| {
            let one: Vec<ArrayRef> = columns.iter().map(|c| c.slice(row, 1)).collect();
            check(&one).is_err()
        })
        .collect();
    if failing.iter().any(|f| *f) {
        Ok(Err(failing))
    } else {
        Ok(Err(vec![true; rows]))
    }
}

/// What a write step does to its table.
struct Writes {
    /// Gas per live call.
    gas: Vec<u64>,
    /// Live calls that write.
    writers: Vec<bool>,
    deleted: Vec<RowLocation>,
    inserted: Option<RecordBatch>,
}

/// The session a group's expressions are planned in, made the first time one is not in the
/// contract's plans (in a stretch's later stages, usually never).
struct StageSession<'a> {
    executor: &'a Executor,
    block: &'a BlockContext,
    made: OnceCell<SessionState>,
}

impl StageSession<'_> {
    /// The session, made over `state` (the group's working state) the first time.
    fn get(&self, state: &State) -> Result<&SessionState> {
        if let Some(session) = self.made.get() {
            return Ok(session);
        }
        let session = self.executor.stage_session(state, self.block)?;
        Ok(self.made.get_or_init(|| session))
    }
}

/// One pass over a group: the calls still in it and what each has done.
struct Pass<'a> {
    session: &'a StageSession<'a>,
    compiled: &'a VectorContract,
    /// How the row work of a step (key lookups, keying written rows) is shared over threads.
    split: Split,
    calls: &'a [VectorCall],
    /// Positions (into `calls`) of the live calls, in order.
    live: Vec<usize>,
    /// Parameter and `LET` columns over the live calls.
    values: Vec<ArrayRef>,
    caller: ArrayRef,
    transaction: ArrayRef,
    gas: Vec<u64>,
    events: Vec<Vec<EmittedEvent>>,
    wrote: Vec<bool>,
    failed: Vec<bool>,
    /// A call failed after it had written: the pass's writes must be redone without it.
    redo: bool,
    /// What takes back each write of the pass, by table, in the order written.
    undo: Vec<(String, TableUndo)>,
    /// Rows `locate` found, by table and key expression, for the live calls as they are: a
    /// later step after the same rows (a `REQUIRE` reads the caller's row, then an `UPDATE`
    /// writes it) finds them here. Forgotten when calls drop out or anything is written.
    located: RefCell<Vec<Located>>,
}

/// Rows found by key: the table, the key expression, and each live call's row.
type Located = (String, Expr, Vec<Option<RowLocation>>);

impl Pass<'_> {
    /// Evaluates `expr` over `frame` for every row, as [`Frame::evaluate`]; `None` when the
    /// expression cannot be planned over these columns at all. The physical expression comes
    /// from the contract's plans, or is planned and kept there.
    fn evaluate(&self, working: &State, frame: &Frame, expr: &Expr) -> Result<Option<(ArrayRef, Vec<bool>)>> {
        let mut plans = self
            .compiled
            .plans
            .lock()
            .map_err(|_| Error::Internal("a contract's plans were poisoned".into()))?;
        let planned = plans
            .get(expr)
            .and_then(|by_fields| by_fields.iter().find(|(fields, _)| *fields == frame.fields));
        let physical = match planned {
            Some((_, physical)) => Arc::clone(physical),
            None => {
                let Ok(physical) = frame.plan(self.session.get(working)?, expr) else {
                    return Ok(None);
                };
                plans
                    .entry(expr.clone())
                    .or_default()
                    .push((frame.fields.clone(), Arc::clone(&physical)));
                physical
            }
        };
        drop(plans);
        Ok(frame.evaluate(&physical))
    }

    fn frame(&self) -> Frame {
        let mut frame = Frame::new(self.live.len());
        for (n, column) in self.values.iter().enumerate() {
            frame.push(None, &param_column(n), column.clone());
        }
        frame.push(None, &caller_column(), self.caller.clone());
        frame.push(None, &transaction_column(), self.transaction.clone());
        frame
    }

    /// Takes the calls marked in `failing` (positions among the live calls) out of the batch.
    fn drop_failed(&mut self, failing: &[bool]) -> Result<()> {
        if !failing.iter().any(|f| *f) {
            return Ok(());
        }
        self.located.get_mut().clear();
        for (live, failing) in failing.iter().enumerate() {
            if *failing {
                let call = self.live[live];
                self.failed[call] = true;
                self.redo |= self.wrote[call];
            }
        }
        let keep = BooleanArray::from(failing.iter().map(|f| !f).collect::<Vec<_>>());
        self.live = self
            .live
            .iter()
            .zip(failing)
            .filter(|(_, f)| !**f)
            .map(|(c, _)| *c)
            .collect();
        for column in &mut self.values {
            *column = filter_array(column, &keep)?;
        }
        self.caller = filter_array(&self.caller, &keep)?;
        self.transaction = filter_array(&self.transaction, &keep)?;
        Ok(())
    }

    /// Runs `attempt` until it succeeds for the calls left, taking out those it fails.
    fn retry<T>(&mut self, attempt: impl Fn(&Self) -> Result<Attempt<T>>) -> Result<Option<T>> {
        loop {
            if self.live.is_empty() {
                return Ok(None);
            }
            match attempt(self)? {
                Attempt::Done(value) => return Ok(Some(value)),
                Attempt::Failing(failing) => self.drop_failed(&failing)?,
                Attempt::Abandon => {
                    let all = vec![true; self.live.len()];
                    self.drop_failed(&all)?;
                    return Ok(None);
                }
            }
        }
    }

    fn charge_all(&mut self, gas: &[u64]) {
        for (live, gas) in gas.iter().enumerate() {
            let call = self.live[live];
            self.gas[call] = self.gas[call].saturating_add(*gas);
        }
    }

    /// Fails the calls that spent more gas than their limit.
    fn check_gas(&mut self) -> Result<()> {
        let failing: Vec<bool> = self
            .live
            .iter()
            .map(|&c| self.gas[c] > self.calls[c].gas_limit)
            .collect();
        self.drop_failed(&failing)
    }

    /// Each live call's row of `table` by the key `key` evaluates to. A call whose key is null
    /// or fails to evaluate fails; a key of another type than the key column fails them all (the
    /// serial path would not find it through the index).
    fn locate(
        &self,
        working: &State,
        frame: &Frame,
        table: &Table,
        key: &Expr,
    ) -> Result<Attempt<Vec<Option<RowLocation>>>> {
        if let Some((_, _, found)) = self
            .located
            .borrow()
            .iter()
            .find(|(name, expr, _)| name == table.name() && expr == key)
        {
            return Ok(Attempt::Done(found.clone()));
        }
        let (keys, mut failing) = evaluated!(self, working, frame, key);
        let definition = table.definition();
        let key_type = &definition.columns[definition.primary_key[0]]
            .column_type
            .data_type;
        if keys.data_type() != key_type {
            return Ok(Attempt::Abandon);
        }
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("k", key_type.clone(), true)])),
            vec![keys.clone()],
        )?;
        for (row, failing) in failing.iter_mut().enumerate() {
            *failing |= keys.is_null(row);
        }
        let locations = self.find(table, &batch, &[0], &failing)?;
        if failing.iter().any(|f| *f) {
            return Ok(Attempt::Failing(failing));
        }
        self.located
            .borrow_mut()
            .push((table.name().to_string(), key.clone(), locations.clone()));
        Ok(Attempt::Done(locations))
    }

    /// The row of `table` whose key is `key_columns` of each row of `batch`, or `None` for rows
    /// that are absent or `skipped`: the lookups shared over the pass's threads.
    ///
    /// The keys are looked up in key order, each thread taking a contiguous run of them: the
    /// calls' keys are scattered over the index, and in order, consecutive lookups descend
    /// through nodes the previous ones brought into cache instead of missing it at every level.
    fn find(
        &self,
        table: &Table,
        batch: &RecordBatch,
        key_columns: &[usize],
        skipped: &[bool],
    ) -> Result<Vec<Option<RowLocation>>> {
        let mut keys = self.split.map(batch.num_rows(), |range| {
            range
                .filter(|&row| !skipped[row])
                .map(|row| Ok((encode_key(batch, key_columns, row)?, row)))
                .collect::<Result<Vec<_>>>()
        })?;
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let found = self.split.map(keys.len(), |range| {
            Ok::<_, Error>(keys[range].iter().map(|(key, _)| table.locate(key)).collect())
        })?;
        let mut locations = vec![None; batch.num_rows()];
        for ((_, row), location) in keys.iter().zip(found) {
            locations[*row] = location;
        }
        Ok(locations)
    }

    /// Evaluates an expression with its point lookups for every live call, with the read gas
    /// of each.
    fn expression(&self, working: &State, vectorized: &Vectorized) -> Result<Attempt<(ArrayRef, Vec<u64>)>> {
        let mut gas = vec![0; self.live.len()];
        let mut frame = self.frame();
        for (n, lookup) in vectorized.lookups.iter().enumerate() {
            let table = working
                .table(&lookup.target.table)
                .ok_or_else(|| Error::Internal("a compiled contract's table is gone".into()))?;
            let locations = match self.locate(working, &self.frame(), table, &lookup.key)? {
                Attempt::Done(locations) => locations,
                Attempt::Failing(failing) => return Ok(Attempt::Failing(failing)),
                Attempt::Abandon => return Ok(Attempt::Abandon),
            };
            for (live, location) in locations.iter().enumerate() {
                if location.is_some() {
                    gas[live] += GAS_PER_ROW_READ;
                }
            }
            let rows = table.gather(&locations)?;
            let mut rows_frame = self.frame();
            rows_frame.push_table(&lookup.target.qualifier, table.definition(), &rows);
            let found: Vec<bool> = locations.iter().map(Option::is_some).collect();
            let selected = match &lookup.filter {
                None => BooleanArray::from(found),
                Some(filter) => {
                    let chosen = rows_frame.select(&BooleanArray::from(found.clone()))?;
                    let (matches, failing) = evaluated!(self, working, chosen, filter);
                    let found_mask = BooleanArray::from(found.clone());
                    if failing.iter().any(|f| *f) {
                        return Ok(Attempt::Failing(spread(&failing, &found_mask)));
                    }
                    let Some(matches) = truths(&matches) else {
                        return Ok(Attempt::Abandon);
                    };
                    BooleanArray::from(spread(&matches, &found_mask))
                }
            };
            let chosen = rows_frame.select(&selected)?;
            let (values, failing) = evaluated!(self, working, chosen, &lookup.value);
            if failing.iter().any(|f| *f) {
                return Ok(Attempt::Failing(spread(&failing, &selected)));
            }
            frame.push(None, &lookup_column(n), scatter(&values, &selected)?);
        }
        let (values, failing) = evaluated!(self, working, frame, &vectorized.expr);
        if failing.iter().any(|f| *f) {
            return Ok(Attempt::Failing(failing));
        }
        Ok(Attempt::Done((values, gas)))
    }

    /// The new rows of an update: `rows` (the current rows, over all live calls) with
    /// `assignments` applied where `selected`, checked against the table's constraints.
    fn updated_rows(
        &self,
        working: &State,
        frame: &Frame,
        definition: &TableDefinition,
        rows: &[ArrayRef],
        selected: &BooleanArray,
        assignments: &[(usize, Expr)],
    ) -> Result<Attempt<Vec<ArrayRef>>> {
        let chosen = frame.select(selected)?;
        let mut columns = Vec::with_capacity(rows.len());
        for (i, current) in rows.iter().enumerate() {
            match assignments.iter().find(|(c, _)| *c == i) {
                Some((_, expr)) => {
                    let (values, failing) = evaluated!(self, working, chosen, expr);
                    if failing.iter().any(|f| *f) {
                        return Ok(Attempt::Failing(spread(&failing, selected)));
                    }
                    columns.push(values);
                }
                None => columns.push(filter_array(current, selected)?),
            }
        }
        Ok(match checked_columns(definition, &columns)? {
            Ok(columns) => Attempt::Done(columns),
            Err(failing) => Attempt::Failing(spread(&failing, selected)),
        })
    }

    /// An `UPDATE` or `DELETE` of one row per call, found by key.
    fn change(
        &self,
        working: &State,
        target: &Target,
        key: &Expr,
        filter: Option<&Expr>,
        assignments: Option<&[(usize, Expr)]>,
    ) -> Result<Attempt<Writes>> {
        let table = working
            .table(&target.table)
            .ok_or_else(|| Error::Internal("a compiled contract's table is gone".into()))?;
        let definition = table.definition();
        let locations = match self.locate(working, &self.frame(), table, key)? {
            Attempt::Done(locations) => locations,
            Attempt::Failing(failing) => return Ok(Attempt::Failing(failing)),
            Attempt::Abandon => return Ok(Attempt::Abandon),
        };
        let rows = table.gather(&locations)?;
        let mut frame = self.frame();
        frame.push_table(&target.qualifier, definition, &rows);
        let found = BooleanArray::from(locations.iter().map(Option::is_some).collect::<Vec<_>>());
        let selected = match filter {
            None => found.clone(),
            Some(filter) => {
                let (matches, failing) = evaluated!(self, working, frame.select(&found)?, filter);
                if failing.iter().any(|f| *f) {
                    return Ok(Attempt::Failing(spread(&failing, &found)));
                }
                let Some(matches) = truths(&matches) else {
                    return Ok(Attempt::Abandon);
                };
                BooleanArray::from(spread(&matches, &found))
            }
        };
        let writers: Vec<bool> = selected.iter().map(|s| s == Some(true)).collect();
        let gas = locations
            .iter()
            .zip(&writers)
            .map(|(l, w)| {
                (if l.is_some() { GAS_PER_ROW_READ } else { 0 }) + if *w { GAS_PER_ROW_WRITTEN } else { 0 }
            })
            .collect();
        let deleted: Vec<RowLocation> = locations
            .iter()
            .zip(&writers)
            .filter_map(|(l, w)| if *w { *l } else { None })
            .collect();
        let inserted = match assignments {
            None => None,
            Some(assignments) => {
                match self.updated_rows(working, &frame, definition, &rows, &selected, assignments)? {
                    Attempt::Done(columns) => {
                        Some(RecordBatch::try_new(table.storage_schema().clone(), columns)?)
                    }
                    Attempt::Failing(failing) => return Ok(Attempt::Failing(failing)),
                    Attempt::Abandon => return Ok(Attempt::Abandon),
                }
            }
        };
        Ok(Attempt::Done(Writes {
            gas,
            writers,
            deleted,
            inserted,
        }))
    }

    /// An `INSERT` of one row per call, with its `ON CONFLICT`.
    fn insert(
        &self,
        working: &State,
        target: &Target,
        values: &[Option<Expr>],
        conflict: &Conflict,
    ) -> Result<Attempt<Writes>> {
        let table = working
            .table(&target.table)
            .ok_or_else(|| Error::Internal("a compiled contract's table is gone".into()))?;
        let definition = table.definition();
        let frame = self.frame();
        let rows = self.live.len();
        let mut columns = Vec::with_capacity(values.len());
        for (value, column) in values.iter().zip(&definition.columns) {
            match value {
                Some(expr) => {
                    let (values, failing) = evaluated!(self, working, frame, expr);
                    if failing.iter().any(|f| *f) {
                        return Ok(Attempt::Failing(failing));
                    }
                    columns.push(values);
                }
                None => columns.push(new_null_array(&column.column_type.data_type, rows)),
            }
        }
        let proposed = match checked_columns(definition, &columns)? {
            Ok(columns) => RecordBatch::try_new(table.storage_schema().clone(), columns)?,
            Err(failing) => return Ok(Attempt::Failing(failing)),
        };
        let mut gas = vec![GAS_PER_ROW_WRITTEN; rows];
        let existing = self.find(table, &proposed, &definition.primary_key, &vec![false; rows])?;
        let conflicting = BooleanArray::from(existing.iter().map(Option::is_some).collect::<Vec<_>>());
        let fresh = BooleanArray::from(existing.iter().map(Option::is_none).collect::<Vec<_>>());
        let mut writers: Vec<bool> = existing.iter().map(Option::is_none).collect();
        let mut deleted = Vec::new();
        let mut inserted = vec![filter_record_batch(&proposed, &fresh)?];
        match conflict {
            Conflict::Fail => {
                if conflicting.true_count() > 0 {
                    let failing: Vec<bool> = existing.iter().map(Option::is_some).collect();
                    return Ok(Attempt::Failing(failing));
                }
            }
            Conflict::Nothing => {}
            Conflict::Update { assignments, filter } => {
                if conflicting.true_count() > 0 {
                    let current = table.gather(&existing)?;
                    let mut frame = self.frame();
                    frame.push_table(&target.qualifier, definition, &current);
                    frame.push_table(chainql_planner::EXCLUDED_TABLE, definition, proposed.columns());
                    let selected = match filter {
                        None => conflicting.clone(),
                        Some(filter) => {
                            let (matches, failing) =
                                evaluated!(self, working, frame.select(&conflicting)?, filter);
                            if failing.iter().any(|f| *f) {
                                return Ok(Attempt::Failing(spread(&failing, &conflicting)));
                            }
                            let Some(matches) = truths(&matches) else {
                                return Ok(Attempt::Abandon);
                            };
                            BooleanArray::from(spread(&matches, &conflicting))
                        }
                    };
                    for (row, location) in existing.iter().enumerate() {
                        if location.is_some() {
                            gas[row] += GAS_PER_ROW_READ;
                        }
                        if selected.value(row) && selected.is_valid(row) {
                            gas[row] += GAS_PER_ROW_WRITTEN;
                            writers[row] = true;
                            deleted.push(location.expect("a conflicting row exists"));
                        }
                    }
                    match self.updated_rows(working, &frame, definition, &current, &selected, assignments)? {
                        Attempt::Done(columns) => {
                            inserted.push(RecordBatch::try_new(table.storage_schema().clone(), columns)?)
                        }
                        Attempt::Failing(failing) => return Ok(Attempt::Failing(failing)),
                        Attempt::Abandon => return Ok(Attempt::Abandon),
                    }
                }
            }
        }
        let inserted = datafusion::arrow::compute::concat_batches(table.storage_schema(), &inserted)?;
        Ok(Attempt::Done(Writes {
            gas,
            writers,
            deleted,
            inserted: Some(inserted),
        }))
    }

    /// Applies a write step's changes to its table.
    fn write(&mut self, working: &mut State, name: &str, writes: Writes) -> Result<()> {
        self.located.get_mut().clear();
        self.charge_all(&writes.gas);
        for (live, writes) in writes.writers.iter().enumerate() {
            if *writes {
                let call = self.live[live];
                self.wrote[call] = true;
            }
        }
        let table = working
            .tables
            .get_mut(name)
            .ok_or_else(|| Error::Internal("a compiled contract's table is gone".into()))?;
        let table = Arc::make_mut(table);
        let inserted = match writes.inserted {
            Some(batch) => batch,
            None => RecordBatch::new_empty(Arc::clone(table.storage_schema())),
        };
        let undo = table.replace_undoable(&writes.deleted, inserted, self.split)?;
        self.undo.push((name.to_string(), undo));
        Ok(())
    }

    /// Takes back every write of the pass, latest first: `working` is again what the pass
    /// started from.
    fn take_back(&mut self, working: &mut State) -> Result<()> {
        while let Some((name, undo)) = self.undo.pop() {
            let table = working
                .tables
                .get_mut(&name)
                .ok_or_else(|| Error::Internal("a compiled contract's table is gone".into()))?;
            Arc::make_mut(table).take_back(undo);
        }
        Ok(())
    }

    /// Runs one body statement for every live call.
    fn step(&mut self, working: &mut State, contract: &str, step: &Step) -> Result<()> {
        match step {
            Step::Require(condition) => {
                let held = self.retry(|pass| {
                    Ok(match pass.expression(working, condition)? {
                        Attempt::Done((values, gas)) => match truths(&values) {
                            Some(truths) if truths.iter().all(|t| *t) => Attempt::Done(gas),
                            Some(truths) => Attempt::Failing(truths.iter().map(|t| !t).collect()),
                            None => Attempt::Abandon,
                        },
                        Attempt::Failing(failing) => Attempt::Failing(failing),
                        Attempt::Abandon => Attempt::Abandon,
                    })
                })?;
                if let Some(gas) = held {
                    self.charge_all(&gas);
                }
            }
            Step::Let(value) => {
                if let Some((values, gas)) = self.retry(|pass| pass.expression(working, value))? {
                    self.charge_all(&gas);
                    self.values.push(values);
                }
            }
            Step::Emit { event, args } => {
                let evaluated = self.retry(|pass| {
                    let mut columns = Vec::with_capacity(args.len());
                    let mut gas = vec![0; pass.live.len()];
                    for arg in args {
                        match pass.expression(working, arg)? {
                            Attempt::Done((values, reads)) => {
                                for (g, r) in gas.iter_mut().zip(reads) {
                                    *g += r;
                                }
                                columns.push(values);
                            }
                            Attempt::Failing(failing) => return Ok(Attempt::Failing(failing)),
                            Attempt::Abandon => return Ok(Attempt::Abandon),
                        }
                    }
                    Ok(Attempt::Done((columns, gas)))
                })?;
                if let Some((columns, gas)) = evaluated {
                    self.charge_all(&gas);
                    for (live, &call) in self.live.iter().enumerate() {
                        let args = columns
                            .iter()
                            .map(|c| Ok(render(&ScalarValue::try_from_array(c, live)?)))
                            .collect::<Result<Vec<_>>>()?;
                        self.events[call].push(EmittedEvent {
                            contract: contract.to_string(),
                            name: event.clone(),
                            args,
                        });
                    }
                }
            }
            Step::Update {
                target,
                key,
                filter,
                assignments,
            } => {
                let writes =
                    self.retry(|pass| pass.change(working, target, key, filter.as_ref(), Some(assignments)))?;
                if let Some(writes) = writes {
                    self.write(working, &target.table, writes)?;
                }
            }
            Step::Delete { target, key, filter } => {
                let writes = self.retry(|pass| pass.change(working, target, key, filter.as_ref(), None))?;
                if let Some(writes) = writes {
                    self.write(working, &target.table, writes)?;
                }
            }
            Step::Insert {
                target,
                values,
                conflict,
            } => {
                let writes = self.retry(|pass| pass.insert(working, target, values, conflict))?;
                if let Some(writes) = writes {
                    self.write(working, &target.table, writes)?;
                }
            }
        }
        self.check_gas()
    }
}

impl Executor {
    /// Runs calls of one compiled contract, vectorized, on `working`. Each call's entry is what
    /// it did if it succeeded, or `None` when it must run through the serial path (its writes
    /// are not in `working`).
    pub(crate) fn run_vectorized(
        &self,
        working: &mut State,
        block: &BlockContext,
        compiled: &VectorContract,
        calls: &[VectorCall],
    ) -> Result<Vec<Option<CallSuccess>>> {
        let session = StageSession {
            executor: self,
            block,
            made: OnceCell::new(),
        };
        let mut excluded = vec![false; calls.len()];
        // Each pass writes `working` in place and keeps what takes its writes back: a pass
        // that must be redone, or fails, leaves `working` as it found it.
        let results = loop {
            let mut pass = self.pass(&session, compiled, calls, &excluded)?;
            if let Err(error) = self.run_pass(&mut pass, working, compiled) {
                pass.take_back(working)?;
                return Err(error);
            }
            if pass.redo {
                for (call, failed) in pass.failed.iter().enumerate() {
                    excluded[call] |= *failed;
                }
                pass.take_back(working)?;
                continue;
            }
            let Pass {
                gas,
                mut events,
                failed,
                undo,
                ..
            } = pass;
            crate::parallel::drop_elsewhere(undo);
            let results: Vec<_> = (0..calls.len())
                .map(|c| {
                    (!excluded[c] && !failed[c]).then(|| CallSuccess {
                        gas_used: gas[c],
                        events: std::mem::take(&mut events[c]),
                    })
                })
                .collect();
            break results;
        };
        crate::parallel::drop_elsewhere(session.made.into_inner());
        Ok(results)
    }

    /// A pass over the calls not `excluded`, before its first step.
    fn pass<'a>(
        &self,
        session: &'a StageSession<'a>,
        compiled: &'a VectorContract,
        calls: &'a [VectorCall],
        excluded: &[bool],
    ) -> Result<Pass<'a>> {
        let live: Vec<usize> = (0..calls.len()).filter(|&c| !excluded[c]).collect();
        let values = (0..compiled.parameter_types.len())
            .map(|n| {
                if live.is_empty() {
                    return Ok(new_null_array(&compiled.parameter_types[n], 0));
                }
                Ok(ScalarValue::iter_to_array(
                    live.iter().map(|&c| calls[c].args[n].clone()),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let caller: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
            live.iter().map(|&c| calls[c].caller.to_hex()),
        ));
        let transaction: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
            live.iter().map(|&c| calls[c].transaction.to_hex()),
        ));
        let pass = Pass {
            session,
            compiled,
            split: self.row_split,
            calls,
            live,
            values,
            caller,
            transaction,
            // The `CALL` statement itself.
            gas: vec![GAS_PER_STATEMENT; calls.len()],
            events: (0..calls.len()).map(|_| Vec::new()).collect(),
            wrote: vec![false; calls.len()],
            failed: vec![false; calls.len()],
            redo: false,
            undo: Vec::new(),
            located: RefCell::default(),
        };
        Ok(pass)
    }

    /// Runs the body's steps over the pass's calls, until they are done, none is left, or a
    /// call that had written failed (`redo`).
    fn run_pass(&self, pass: &mut Pass<'_>, working: &mut State, compiled: &VectorContract) -> Result<()> {
        let name = &compiled.contract.definition.name;
        for step in &compiled.steps {
            if pass.live.is_empty() {
                break;
            }
            let statement = vec![GAS_PER_STATEMENT; pass.live.len()];
            pass.charge_all(&statement);
            pass.step(working, name, step)?;
            if pass.redo {
                break;
            }
        }
        Ok(())
    }
}

/// Whether a contract's access rule lets `caller` call it.
pub(crate) fn may_call(contract: &Contract, caller: &Address) -> bool {
    contract.definition.access == Access::Public || *caller == contract.owner
}

/// The value of a `CALL` argument that is a plain literal, typed as DataFusion types it.
pub(crate) fn literal_argument(expr: &Expr) -> Option<ScalarValue> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(ScalarValue::Utf8(Some(s.clone()))),
            Value::Number(n, false) => n.parse::<i64>().ok().map(|n| ScalarValue::Int64(Some(n))),
            Value::Boolean(b) => Some(ScalarValue::Boolean(Some(*b))),
            _ => None,
        },
        Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => match literal_argument(expr)? {
            ScalarValue::Int64(Some(n)) => n.checked_neg().map(|n| ScalarValue::Int64(Some(n))),
            _ => None,
        },
        _ => None,
    }
}

/// Compiled contracts of one stretch of a block, by name (`None`: not vectorizable).
pub(crate) type CompiledContracts = BTreeMap<String, Option<Arc<VectorContract>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExecutableTransaction, QueryLimits};
    use chainql::Hash;

    fn block(state: &State) -> BlockContext {
        BlockContext {
            height: state.height() + 1,
            hash: Hash::ZERO,
            parent_hash: state.block_hash(),
            timestamp_ms: 1,
            transactions_root: Hash::ZERO,
            state_root: state.root(),
            proposer: Address([9; 20]),
            offences: Vec::new(),
        }
    }

    fn holder(n: u8) -> Address {
        Address([n; 20])
    }

    /// One `transfer(to, 1)` from each of `senders`, each to the holder after it.
    fn calls(senders: std::ops::Range<u8>) -> Vec<VectorCall> {
        senders
            .map(|n| VectorCall {
                caller: holder(n),
                transaction: Hash::tagged("r2-plans", &[&[n]]),
                gas_limit: 1_000_000,
                args: vec![
                    ScalarValue::Utf8(Some(holder(n + 1).to_hex())),
                    ScalarValue::Int64(Some(1)),
                ],
            })
            .collect()
    }

    /// A later group of a stretch evaluates its expressions with the plans the first one made,
    /// planning nothing, and writes exactly what a freshly compiled contract writes.
    #[tokio::test]
    async fn later_groups_reuse_the_plans_of_the_first() {
        let owner = Address([1; 20]);
        let genesis = State::genesis(Hash::ZERO, 0, &[(owner, 0)]).expect("genesis");
        let executor = Executor::new(1, QueryLimits::default()).expect("executor");
        let mut statements = vec![
            "CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL)".to_string(),
            "CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
               REQUIRE amount > 0, 'amount must be positive';
               REQUIRE (SELECT balance FROM tokens WHERE owner = CALLER()) >= amount, 'insufficient';
               UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
               INSERT INTO tokens VALUES (to_addr, amount)
                 ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
               EMIT transferred(CALLER(), to_addr, amount);
             $$"
            .to_string(),
        ];
        statements
            .extend((10..40u8).map(|n| format!("INSERT INTO tokens VALUES ('{}', 100)", holder(n).to_hex())));
        let setup = ExecutableTransaction {
            hash: Hash::ZERO,
            sender: owner,
            sender_key: None,
            nonce: 0,
            gas_limit: 100_000_000,
            statements,
        };
        let (state, receipts) = executor
            .execute_block(&genesis, &block(&genesis), &[setup])
            .await
            .expect("setup");
        assert!(receipts[0].error.is_empty(), "{}", receipts[0].error);
        let context = block(&state);
        let contract = state.contract("transfer").expect("deployed");
        let session = executor.stage_session(&state, &context).expect("session");
        let compiled = compile(&state, &session, contract).expect("vectorizable");
        let planned = |c: &VectorContract| {
            c.plans
                .lock()
                .expect("plans")
                .values()
                .map(Vec::len)
                .sum::<usize>()
        };
        assert_eq!(planned(&compiled), 0);

        let mut working = state.clone();
        let first = executor
            .run_vectorized(&mut working, &context, &compiled, &calls(10..20))
            .expect("first group");
        assert!(first.iter().all(Option::is_some));
        let after_first = planned(&compiled);
        assert!(after_first > 0, "the first group plans its expressions");

        // The second group, on the state the first left: no new plans.
        let mut reused = working.clone();
        let second = executor
            .run_vectorized(&mut reused, &context, &compiled, &calls(20..30))
            .expect("second group");
        assert_eq!(planned(&compiled), after_first, "the second group planned again");

        // The same group through a freshly compiled contract gives the same writes and results.
        let fresh = compile(&working, &session, contract).expect("vectorizable");
        let mut planned_afresh = working.clone();
        let expected = executor
            .run_vectorized(&mut planned_afresh, &context, &fresh, &calls(20..30))
            .expect("fresh group");
        assert_eq!(planned(&fresh), after_first);
        assert_eq!(
            format!("{second:?}"),
            format!("{expected:?}"),
            "results with kept plans differ"
        );
        assert_eq!(
            reused.compute_root_with(executor.row_split).expect("root"),
            planned_afresh
                .compute_root_with(executor.row_split)
                .expect("root")
        );
        assert_ne!(
            reused.compute_root_with(executor.row_split).expect("root"),
            working.compute_root_with(executor.row_split).expect("root"),
            "the second group wrote"
        );
    }
}
