//! Contracts: deploying them (with every statement checked against the tables at deploy time),
//! calling them, and dropping them.
//!
//! A call binds the arguments to the contract's parameters and runs the body in order, with the
//! owner's rights: parameters and `LET` values become placeholders (`$1`, `$2`, ...) bound to
//! their values, so every statement is planned by DataFusion with the value's type. A `REQUIRE`
//! that does not hold fails the call, and with it the whole transaction.

use std::sync::Arc;

use chainql::contract::{Access, ContractDefinition, ContractStatement, call_target, placeholder_position};
use chainql::{Address, Hash};
use chainql_planner::{WritePlan, column_type, plan_write};
use std::ops::ControlFlow;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::{ColumnarValue, Expr as LogicalExpr};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Statement,
};
use datafusion::sql::sqlparser::ast::{Visit, Visitor};

use crate::execute::{GAS_PER_STATEMENT, QueryResult, TransactionScope, bind};
use crate::provider::Extras;
use crate::state::State;
use crate::{Error, Executor, Result};

/// How deep contracts may call contracts.
pub const CALL_DEPTH_MAX: u32 = 8;
/// Arguments an event carries, at most.
pub(crate) const EVENT_ARGS_MAX: usize = 32;

/// A deployed contract.
#[derive(Debug, Clone)]
pub struct Contract {
    pub definition: ContractDefinition,
    pub owner: Address,
}

impl Contract {
    /// What the state root commits to: the name, the owner and the source.
    pub fn digest(&self) -> Hash {
        Hash::tagged(
            "chainql/contract/v1",
            &[
                self.definition.name.as_bytes(),
                &self.owner.0,
                self.definition.source.as_bytes(),
            ],
        )
    }
}

/// An event a contract emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedEvent {
    pub contract: String,
    pub name: String,
    /// The arguments as text (NULL as `None`).
    pub args: Vec<Option<String>>,
}

impl EmittedEvent {
    pub fn to_wire(&self) -> chainql::wire::ContractEvent {
        chainql::wire::ContractEvent {
            contract: self.contract.clone(),
            name: self.name.clone(),
            args: self
                .args
                .iter()
                .map(|text| chainql::wire::EventValue { text: text.clone() })
                .collect(),
        }
    }
}

/// `SELECT (e1), (e2), ...`: the one-row query that evaluates expressions.
fn select_of(exprs: &[Expr]) -> Result<Statement> {
    let list: Vec<String> = exprs.iter().map(|e| format!("({e})")).collect();
    chainql::sql::parse_statement(&format!("SELECT {}", list.join(", "))).map_err(Error::from)
}

/// True when an expression holds a subquery, so evaluating it reads tables.
fn reads_tables(expr: &Expr) -> bool {
    struct Finder;
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    expr.visit(&mut Finder).is_break()
}

/// Replaces the placeholders `$n` of a logical expression with their values.
fn bind_placeholders(expr: LogicalExpr, params: &[ScalarValue]) -> Result<LogicalExpr> {
    Ok(expr
        .transform(|e| match &e {
            LogicalExpr::Placeholder(placeholder) => {
                let value = placeholder_position(&placeholder.id)
                    .and_then(|n| params.get(n))
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Plan(format!("no value for {}", placeholder.id))
                    })?;
                Ok(Transformed::yes(LogicalExpr::Literal(value.clone(), None)))
            }
            _ => Ok(Transformed::no(e)),
        })?
        .data)
}

/// True for `chain.transfer`, the native token transfer.
pub(crate) fn is_native_transfer(name: &ast::ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_lowercase()))
        .collect();
    parts == ["chain", "transfer"]
}

/// The expressions of a `CALL`'s argument list.
pub(crate) fn call_arguments(function: &ast::Function) -> Result<Vec<Expr>> {
    Ok(call_argument_refs(function)?.into_iter().cloned().collect())
}

/// The expressions of a `CALL`'s argument list, borrowed.
pub(crate) fn call_argument_refs(function: &ast::Function) -> Result<Vec<&Expr>> {
    let list = match &function.args {
        FunctionArguments::List(list) => &list.args,
        FunctionArguments::None => return Ok(Vec::new()),
        FunctionArguments::Subquery(_) => {
            return Err(Error::Invalid("CALL takes a list of arguments".into()));
        }
    };
    list.iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Ok(expr),
            other => Err(Error::Invalid(format!(
                "CALL takes positional arguments, not {other}"
            ))),
        })
        .collect()
}

pub(crate) fn render(value: &ScalarValue) -> Option<String> {
    (!value.is_null()).then(|| value.to_string())
}

/// The Arrow type of a declared parameter.
pub(crate) fn parameter_type(data_type: &ast::DataType) -> Result<DataType> {
    Ok(column_type(data_type)?.data_type)
}

impl Executor {
    /// Evaluates expressions (with the scope's placeholders bound) to one value each.
    async fn evaluate(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        exprs: &[Expr],
    ) -> Result<Vec<ScalarValue>> {
        if exprs.is_empty() {
            return Ok(Vec::new());
        }
        if !exprs.iter().any(reads_tables)
            && let Ok(values) = self.evaluate_directly(working, scope, exprs)
        {
            return Ok(values);
        }
        let statement = select_of(exprs)?;
        let session = self.transaction_session(working, scope, Extras::default())?;
        let batches = self.run_query(&session, scope, statement, 0).await?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::Internal("an expression list returned no row".into()))?;
        (0..batch.num_columns())
            .map(|c| Ok(ScalarValue::try_from_array(batch.column(c), 0)?))
            .collect()
    }

    /// Evaluates expressions that read no table without planning a query: each becomes a
    /// DataFusion logical expression with its placeholders bound, then a physical expression
    /// evaluated over one empty row. It costs no gas beyond the statement's, as the one-row query
    /// would not (its row is within a plan's free allowance). An expression this cannot handle
    /// (an aggregate, say) is an error, and the caller plans the query instead.
    fn evaluate_directly(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        exprs: &[Expr],
    ) -> Result<Vec<ScalarValue>> {
        let session = self.transaction_session(working, scope, Extras::default())?;
        let schema = DFSchema::empty();
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            Vec::new(),
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let mut values = Vec::with_capacity(exprs.len());
        for expr in exprs {
            let logical = session.create_logical_expr_from_sql_expr(
                ast::ExprWithAlias {
                    expr: expr.clone(),
                    alias: None,
                },
                &schema,
            )?;
            let logical = bind_placeholders(logical, &scope.params)?;
            let physical = session.create_physical_expr(logical, &schema)?;
            values.push(match physical.evaluate(&one_row)? {
                ColumnarValue::Scalar(value) => value,
                ColumnarValue::Array(array) => ScalarValue::try_from_array(&array, 0)?,
            });
        }
        Ok(values)
    }

    /// `CALL name(args)` as a statement of a transaction. Returns 0 (rows are reported by the
    /// statements inside).
    pub(crate) async fn call(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        function: &ast::Function,
    ) -> Result<usize> {
        let args = call_arguments(function)?;
        if is_native_transfer(&function.name) {
            return self.native_transfer(working, scope, &args).await;
        }
        let name = call_target(&function.name)?;
        self.invoke(working, scope, &name, &args).await?;
        Ok(0)
    }

    /// `CALL chain.transfer(to, amount)`: moves `amount` of the sender's native balance to `to`.
    /// Only a transaction's own statement may: a contract never moves its caller's funds.
    async fn native_transfer(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        args: &[Expr],
    ) -> Result<usize> {
        if scope.depth > 0 {
            return Err(Error::Invalid(
                "chain.transfer moves the sender's own funds: a contract cannot call it".into(),
            ));
        }
        if args.len() != 2 {
            return Err(Error::Invalid(format!(
                "chain.transfer(to TEXT, amount BIGINT) takes 2 arguments, {} given",
                args.len()
            )));
        }
        let values = self.evaluate(working, scope, args).await?;
        let to = match &values[0] {
            ScalarValue::Utf8(Some(text))
            | ScalarValue::LargeUtf8(Some(text))
            | ScalarValue::Utf8View(Some(text)) => Address::from_hex(text)?,
            other => {
                return Err(Error::Invalid(format!(
                    "chain.transfer: the recipient must be an address text, not {other}"
                )));
            }
        };
        let amount = match values[1].cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(amount))) if amount > 0 => amount as i128,
            _ => {
                return Err(Error::Invalid(format!(
                    "chain.transfer: the amount must be a positive BIGINT, not {}",
                    values[1]
                )));
            }
        };
        scope.gas.charge(2 * crate::execute::GAS_PER_ROW_WRITTEN)?;
        working.adjust_balance(&scope.caller, -amount)?;
        working.adjust_balance(&to, amount)?;
        Ok(2)
    }

    /// Calls contract `name` with `args` evaluated in `scope`.
    fn invoke<'a>(
        &'a self,
        working: &'a mut State,
        scope: &'a TransactionScope<'a>,
        name: &'a str,
        args: &'a [Expr],
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let contract = working
                .contracts
                .get(name)
                .cloned()
                .ok_or_else(|| Error::UndefinedContract(name.to_string()))?;
            let definition = &contract.definition;
            if scope.depth >= CALL_DEPTH_MAX {
                return Err(Error::LimitExceeded(format!(
                    "contracts call each other at most {CALL_DEPTH_MAX} deep"
                )));
            }
            if definition.access == Access::Owner && scope.caller != contract.owner {
                return Err(Error::CallDenied {
                    contract: name.to_string(),
                    account: scope.caller,
                });
            }
            if args.len() != definition.parameters.len() {
                return Err(Error::Invalid(format!(
                    "contract {} takes {} arguments, {} given",
                    definition.signature(),
                    definition.parameters.len(),
                    args.len()
                )));
            }
            let values = self.evaluate(working, scope, args).await?;
            let mut params = Vec::with_capacity(values.len());
            for ((parameter, declared), value) in definition.parameters.iter().zip(values) {
                let wanted = parameter_type(declared)?;
                let cast = value.cast_to(&wanted).map_err(|e| {
                    Error::Invalid(format!(
                        "argument {parameter} of {}: {value} is not a valid {declared}: {e}",
                        definition.name
                    ))
                })?;
                params.push(cast);
            }
            let mut inner = TransactionScope {
                actor: contract.owner,
                params: Arc::new(params),
                depth: scope.depth + 1,
                ..scope.clone()
            };
            for statement in definition.bound_statements() {
                scope.gas.charge(GAS_PER_STATEMENT)?;
                match statement {
                    ContractStatement::Require { condition, message } => {
                        let holds = self.evaluate(working, &inner, &[condition]).await?;
                        if holds.first() != Some(&ScalarValue::Boolean(Some(true))) {
                            return Err(Error::RequireFailed {
                                contract: name.to_string(),
                                message,
                            });
                        }
                    }
                    ContractStatement::Let { value, .. } => {
                        let mut values = self.evaluate(working, &inner, &[value]).await?;
                        let mut params = inner.params.as_ref().clone();
                        params.push(values.remove(0));
                        inner.params = Arc::new(params);
                    }
                    ContractStatement::Emit { event, args } => {
                        let values = self.evaluate(working, &inner, &args).await?;
                        if values.len() > EVENT_ARGS_MAX {
                            return Err(Error::LimitExceeded(format!(
                                "an event carries at most {EVENT_ARGS_MAX} values"
                            )));
                        }
                        lock(&inner).events.push(EmittedEvent {
                            contract: name.to_string(),
                            name: event,
                            args: values.iter().map(render).collect(),
                        });
                    }
                    ContractStatement::Call {
                        contract: callee,
                        args,
                    } => {
                        self.invoke(working, &inner, &callee, &args).await?;
                    }
                    ContractStatement::Sql(statement) => {
                        let statement = *statement;
                        if let Statement::Query(_) = statement {
                            let session = self.transaction_session(working, &inner, Extras::default())?;
                            let batches = self.run_query(&session, &inner, statement, 0).await?;
                            lock(&inner).result = Some(shape_result(definition, batches)?);
                        } else {
                            self.execute_write(working, &inner, &statement).await?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// `CREATE CONTRACT`: checks every statement against the current tables, then stores it.
    pub(crate) async fn deploy(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        definition: ContractDefinition,
    ) -> Result<()> {
        if working.contracts.contains_key(&definition.name) {
            return Err(Error::DuplicateContract(definition.name));
        }
        self.check_contract(working, scope, &definition)
            .await
            .map_err(|e| Error::DeployFailed {
                contract: definition.name.clone(),
                reason: e.to_string(),
            })?;
        working.contracts.insert(
            definition.name.clone(),
            Arc::new(Contract {
                definition,
                owner: scope.actor,
            }),
        );
        Ok(())
    }

    /// Plans every statement of a contract with typed placeholders, so unknown tables and
    /// columns, type mismatches and wrong argument counts are found at deploy.
    async fn check_contract(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        definition: &ContractDefinition,
    ) -> Result<()> {
        let mut params = Vec::new();
        for (_, declared) in &definition.parameters {
            params.push(ScalarValue::try_from(&parameter_type(declared)?)?);
        }
        if let Some(returns) = &definition.returns {
            for (_, declared) in returns {
                parameter_type(declared)?;
            }
        }
        for (i, statement) in definition.bound_statements().into_iter().enumerate() {
            let at = |e: Error| Error::Invalid(format!("statement {}: {e}", i + 1));
            let inner = TransactionScope {
                params: Arc::new(params.clone()),
                ..scope.clone()
            };
            match statement {
                ContractStatement::Require { condition, .. } => {
                    let types = self.plan_types(working, &inner, &[condition]).await.map_err(at)?;
                    if types[0] != DataType::Boolean && types[0] != DataType::Null {
                        return Err(at(Error::Invalid(format!(
                            "REQUIRE needs a boolean condition, not {}",
                            types[0]
                        ))));
                    }
                }
                ContractStatement::Let { value, .. } => {
                    let types = self.plan_types(working, &inner, &[value]).await.map_err(at)?;
                    params.push(ScalarValue::try_from(&types[0])?);
                }
                ContractStatement::Emit { args, .. } => {
                    self.plan_types(working, &inner, &args).await.map_err(at)?;
                }
                ContractStatement::Call { contract, args } => {
                    let callee = working
                        .contracts
                        .get(&contract)
                        .ok_or_else(|| at(Error::UndefinedContract(contract.clone())))?;
                    if callee.definition.parameters.len() != args.len() {
                        return Err(at(Error::Invalid(format!(
                            "{} takes {} arguments, {} given",
                            callee.definition.signature(),
                            callee.definition.parameters.len(),
                            args.len()
                        ))));
                    }
                    self.plan_types(working, &inner, &args).await.map_err(at)?;
                }
                ContractStatement::Sql(statement) => {
                    self.check_sql(working, &inner, definition, &statement)
                        .await
                        .map_err(at)?;
                }
            }
        }
        Ok(())
    }

    /// Plans `SELECT exprs` and returns the types of its columns.
    async fn plan_types(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        exprs: &[Expr],
    ) -> Result<Vec<DataType>> {
        if exprs.is_empty() {
            return Ok(Vec::new());
        }
        let statement = select_of(exprs)?;
        let plan = self
            .plan_checked(working, scope, Extras::default(), statement)
            .await?;
        Ok(plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect())
    }

    /// Plans a query with the scope's placeholders bound and runs the analyzer and optimizer on
    /// it (which is where types are checked), without executing it.
    async fn plan_checked(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        extras: Extras,
        statement: Statement,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        let session = self.transaction_session(working, scope, extras)?;
        let plan = session
            .statement_to_plan(DFStatement::Statement(Box::new(statement)))
            .await?;
        let plan = bind(plan, &scope.params)?;
        Ok(session.optimize(&plan)?)
    }

    /// Plans the queries a body's SQL statement will run.
    async fn check_sql(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        definition: &ContractDefinition,
        statement: &Statement,
    ) -> Result<()> {
        if let Statement::Query(_) = statement {
            let plan = self
                .plan_checked(working, scope, Extras::default(), statement.clone())
                .await?;
            let returns = definition.returns.as_ref().map(Vec::len).unwrap_or(0);
            let columns = plan.schema().fields().len();
            if columns != returns {
                return Err(Error::Invalid(format!(
                    "the final SELECT returns {columns} columns; RETURNS TABLE declares {returns}"
                )));
            }
            return Ok(());
        }
        let target = |table: &str| {
            working
                .table(table)
                .cloned()
                .ok_or_else(|| Error::UndefinedTable(table.to_string()))
        };
        match plan_write(statement)? {
            WritePlan::Insert(plan) => {
                let table = target(&plan.table)?;
                let definition = table.definition();
                let expected = plan
                    .columns
                    .as_ref()
                    .map(Vec::len)
                    .unwrap_or(definition.columns.len());
                for column in plan.columns.iter().flatten() {
                    if definition.column_index(column).is_none() {
                        return Err(Error::UndefinedColumn {
                            table: plan.table.clone(),
                            column: column.clone(),
                        });
                    }
                }
                if let Some(source) = plan.source {
                    let plan_checked = self
                        .plan_checked(working, scope, Extras::default(), Statement::Query(source))
                        .await?;
                    let found = plan_checked.schema().fields().len();
                    if found != expected {
                        return Err(Error::Invalid(format!(
                            "INSERT has {found} expressions but {expected} target columns"
                        )));
                    }
                }
                if let Some(update) = plan.on_conflict.and_then(|c| c.update) {
                    let sql = update.row_query(definition)?;
                    let empty = RecordBatch::new_empty(definition.schema());
                    let extras = Extras {
                        write_target: Some(table.clone()),
                        excluded: Some((definition.schema(), vec![empty])),
                        target_rows: None,
                    };
                    self.plan_checked(working, scope, extras, chainql::sql::parse_statement(&sql)?)
                        .await?;
                }
            }
            WritePlan::Update(plan) => {
                let table = target(&plan.table)?;
                let sql = plan.row_query(table.definition())?;
                let extras = Extras {
                    write_target: Some(table),
                    excluded: None,
                    target_rows: None,
                };
                self.plan_checked(working, scope, extras, chainql::sql::parse_statement(&sql)?)
                    .await?;
            }
            WritePlan::Delete(plan) => {
                let table = target(&plan.table)?;
                let extras = Extras {
                    write_target: Some(table),
                    excluded: None,
                    target_rows: None,
                };
                self.plan_checked(
                    working,
                    scope,
                    extras,
                    chainql::sql::parse_statement(&plan.row_query())?,
                )
                .await?;
            }
            _ => {
                return Err(Error::Invalid(
                    "a contract body holds INSERT, UPDATE, DELETE and a final SELECT".into(),
                ));
            }
        }
        Ok(())
    }

    /// `DROP CONTRACT`: only its owner may.
    pub(crate) fn drop_contract(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        name: &str,
        if_exists: bool,
    ) -> Result<()> {
        match working.contracts.get(name) {
            None if if_exists => Ok(()),
            None => Err(Error::UndefinedContract(name.to_string())),
            Some(contract) if contract.owner != scope.actor => Err(Error::DropDenied {
                contract: name.to_string(),
            }),
            Some(_) => {
                working.contracts.remove(name);
                Ok(())
            }
        }
    }

    /// Runs a `VIEW` contract as a query on `state`: no transaction, nothing written.
    pub(crate) async fn call_view(
        &self,
        state: &State,
        function: &ast::Function,
        gas_limit: u64,
    ) -> Result<QueryResult> {
        let name = call_target(&function.name)?;
        let contract = state
            .contracts
            .get(&name)
            .cloned()
            .ok_or_else(|| Error::UndefinedContract(name.clone()))?;
        if !contract.definition.view {
            return Err(Error::Invalid(format!(
                "{} is not a VIEW contract: calling it is a transaction",
                contract.definition.name
            )));
        }
        let args = call_arguments(function)?;
        let block = crate::execute::BlockContext {
            height: state.height(),
            hash: state.block_hash(),
            parent_hash: state.block_hash(),
            timestamp_ms: state.timestamp_ms(),
            transactions_root: Hash::ZERO,
            state_root: state.root(),
            proposer: Address([0; 20]),
            offences: Vec::new(),
        };
        let scope = TransactionScope {
            block: &block,
            gas: Arc::new(crate::gas::GasMeter::new(gas_limit)),
            actor: Address([0; 20]),
            caller: Address([0; 20]),
            transaction: Hash::ZERO,
            params: Arc::new(Vec::new()),
            depth: 0,
            output: Arc::new(std::sync::Mutex::new(Default::default())),
        };
        let mut scratch = state.clone();
        self.invoke(&mut scratch, &scope, &name, &args).await?;
        let result = lock(&scope).result.take();
        Ok(result.unwrap_or_else(|| QueryResult {
            schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            batches: Vec::new(),
        }))
    }
}

fn lock<'a>(scope: &'a TransactionScope<'_>) -> std::sync::MutexGuard<'a, crate::execute::CallOutput> {
    scope
        .output
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A contract's result: the final `SELECT`'s rows, with the names and types `RETURNS TABLE`
/// declares.
fn shape_result(definition: &ContractDefinition, batches: Vec<RecordBatch>) -> Result<QueryResult> {
    let declared = definition.returns.as_deref().unwrap_or_default();
    let mut fields = Vec::with_capacity(declared.len());
    for (name, data_type) in declared {
        fields.push(Field::new(name, parameter_type(data_type)?, true));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut shaped = Vec::with_capacity(batches.len());
    for batch in batches {
        if batch.num_columns() != schema.fields().len() {
            return Err(Error::Invalid(format!(
                "{} returns {} columns, its final SELECT {}",
                definition.name,
                schema.fields().len(),
                batch.num_columns()
            )));
        }
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| Ok(cast(column, field.data_type())?))
            .collect::<Result<Vec<_>>>()?;
        shaped.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
    }
    Ok(QueryResult {
        schema,
        batches: shaped,
    })
}
