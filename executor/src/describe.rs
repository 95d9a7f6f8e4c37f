//! Describing a statement before it runs: the types of its parameters (`$1`, `$2`, ...) and the
//! columns of its answer. This is what a PostgreSQL client asks of a prepared statement, so it can
//! encode its arguments and decode the rows.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Expr, Statement, Value, Visit, Visitor};

use chainql::contract::call_target;
use chainql::sql::StatementKind;

use crate::execute::{Executor, read_only_options};
use crate::state::State;
use crate::{Error, Result};

/// The most parameters one statement may have (PostgreSQL's own bound).
pub const PARAMETERS_MAX: usize = 65_535;

/// What a statement takes and what it answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// The type of each parameter, `$1` first; `None` where it cannot be inferred.
    pub parameters: Vec<Option<DataType>>,
    /// The columns of the answer; `None` for a statement that answers with no rows.
    pub columns: Option<SchemaRef>,
}

impl Executor {
    /// Describes `sql` against `state`: the parameters' types and the answer's columns. A query
    /// that does not plan is an error here, as it would be when it runs; a write's parameter types
    /// are inferred where DataFusion can (its values and comparisons with columns), and its errors
    /// wait until it runs in a block.
    pub async fn describe(&self, state: &State, sql: &str) -> Result<Description> {
        if crate::explain::explain_block_height(sql)?.is_some() {
            // `EXPLAIN BLOCK n` answers with its own columns: learn them by answering.
            let answer = self.query(state, sql).await?;
            return Ok(Description {
                parameters: Vec::new(),
                columns: Some(answer.schema),
            });
        }
        let session = self.read_session(state)?;
        let mut statement = session.sql_to_statement(sql, &datafusion::config::Dialect::PostgreSQL)?;
        if let DFStatement::Statement(inner) = &mut statement {
            crate::pg_catalog::rewrite(inner);
        }
        let count = match &statement {
            DFStatement::Statement(inner) => parameter_count(inner)?,
            _ => 0,
        };
        let unknown = |count| Description {
            parameters: vec![None; count],
            columns: None,
        };
        let explains_call = match &statement {
            DFStatement::Explain(explain) => matches!(
                explain.statement.as_ref(),
                DFStatement::Statement(inner) if matches!(inner.as_ref(), Statement::Call(_))
            ),
            _ => false,
        };
        if explains_call {
            // `EXPLAIN CALL` answers from the call's key sets, with its own columns.
            let answer = self.query(state, sql).await?;
            return Ok(Description {
                parameters: Vec::new(),
                columns: Some(answer.schema),
            });
        }
        let DFStatement::Statement(inner) = &statement else {
            let plan = session.statement_to_plan(statement).await?;
            return Ok(Description {
                parameters: plan_parameters(&plan, count)?,
                columns: Some(Arc::new(plan.schema().as_arrow().clone())),
            });
        };
        if let Statement::Call(function) = inner.as_ref() {
            return self.describe_call(state, function, count);
        }
        let kind = chainql::sql::classify(inner);
        if kind.is_write() {
            let parameters = match session.statement_to_plan(statement).await {
                Ok(plan) => plan_parameters(&plan, count)?,
                Err(_) => vec![None; count],
            };
            return Ok(Description {
                parameters,
                columns: None,
            });
        }
        if matches!(
            kind,
            StatementKind::Begin | StatementKind::Commit | StatementKind::Rollback
        ) {
            return Ok(unknown(count));
        }
        let plan = session.statement_to_plan(statement).await?;
        read_only_options().verify_plan(&plan)?;
        Ok(Description {
            parameters: plan_parameters(&plan, count)?,
            columns: Some(Arc::new(plan.schema().as_arrow().clone())),
        })
    }

    /// A call's parameters take the contract's parameter types; its answer is the contract's
    /// `RETURNS TABLE`, if it has one.
    fn describe_call(&self, state: &State, function: &ast::Function, count: usize) -> Result<Description> {
        let mut parameters = vec![None; count];
        let arguments = crate::contract::call_arguments(function)?;
        if crate::contract::is_native_transfer(&function.name) {
            // `chain.transfer(to_address, amount)`.
            for (argument, data_type) in arguments.iter().zip([DataType::Utf8, DataType::Int64]) {
                if let Some(slot) = placeholder_index(argument).and_then(|i| parameters.get_mut(i)) {
                    *slot = Some(data_type);
                }
            }
            return Ok(Description {
                parameters,
                columns: None,
            });
        }
        let name = call_target(&function.name)?;
        let contract = state
            .contract(&name)
            .ok_or_else(|| Error::UndefinedContract(name.clone()))?;
        for (argument, (_, data_type)) in arguments.iter().zip(&contract.definition.parameters) {
            if let Some(index) = placeholder_index(argument)
                && let Some(slot) = parameters.get_mut(index)
            {
                *slot = Some(chainql_planner::column_type(data_type)?.data_type);
            }
        }
        let columns = match &contract.definition.returns {
            Some(columns) => Some(Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|(name, declared)| {
                        Ok(Field::new(
                            name,
                            chainql_planner::column_type(declared)?.data_type,
                            true,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ))),
            None => None,
        };
        Ok(Description { parameters, columns })
    }
}

/// The parameter types DataFusion inferred for a plan, `$1` first.
fn plan_parameters(
    plan: &datafusion::logical_expr::LogicalPlan,
    count: usize,
) -> Result<Vec<Option<DataType>>> {
    let inferred = plan.get_parameter_types()?;
    Ok((1..=count)
        .map(|n| inferred.get(&format!("${n}")).cloned().flatten())
        .collect())
}

/// The zero-based index of a `$n` placeholder.
fn placeholder_index(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Placeholder(name) => name.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1),
            _ => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => placeholder_index(expr),
        _ => None,
    }
}

/// How many parameters a statement takes: the largest `$n` it names. Every placeholder must be
/// `$1` to `$65535`.
pub fn parameter_count(statement: &Statement) -> Result<usize> {
    struct Placeholders {
        max: usize,
        bad: Option<String>,
    }
    impl Visitor for Placeholders {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Value(value) = expr
                && let Value::Placeholder(name) = &value.value
            {
                match name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) if (1..=PARAMETERS_MAX).contains(&n) => self.max = self.max.max(n),
                    _ => {
                        self.bad = Some(name.clone());
                        return std::ops::ControlFlow::Break(());
                    }
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut visitor = Placeholders { max: 0, bad: None };
    let _ = statement.visit(&mut visitor);
    match visitor.bad {
        Some(name) => Err(Error::Invalid(format!(
            "invalid parameter {name}: parameters are $1 to ${PARAMETERS_MAX}"
        ))),
        None => Ok(visitor.max),
    }
}
