//! DataFusion sessions for the two ways ChainQL runs SQL.
//!
//! - **Transactions** run inside block execution, where every validator must compute the same
//!   result: one partition (row order never depends on thread scheduling), no volatile functions
//!   (`random()`, `uuid()` are removed from the registry), and `now()` and its relatives folded to
//!   the block's timestamp instead of the wall clock.
//! - **Queries** read a committed state and are not part of consensus: all functions, as many
//!   partitions as the machine has cores, `information_schema` on.
//!
//! Building a `SessionState` costs about 100 µs and cloning one about 20 µs, so each kind is
//! built once and cloned per statement, with the catalog of the state version it must read.

use std::sync::Arc;

use datafusion::catalog::CatalogProviderList;
use datafusion::common::config::ConfigOptions;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::Volatility;
use datafusion::prelude::SessionConfig;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature};
use datafusion::logical_expr::{Expr, LogicalPlan, ReturnFieldArgs};
use datafusion::optimizer::AnalyzerRule;

use crate::Result;

/// What the chain's built-in functions return in one transaction: `CALLER()`, `BLOCK_HEIGHT()`,
/// `BLOCK_TIME()` and `TX_HASH()`.
#[derive(Debug, Clone)]
pub struct ChainContext {
    /// The sender's address, `0x` + hex.
    pub caller: String,
    pub block_height: u64,
    pub block_time_ms: u64,
    /// The transaction hash, `0x` + hex.
    pub transaction_hash: String,
}

/// A nullary function with a value fixed for the transaction. Immutable, so the optimizer folds
/// it into a literal.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConstantFunction {
    name: String,
    value: ScalarValue,
    signature: Signature,
}

impl ConstantFunction {
    fn udf(name: &str, value: ScalarValue) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(ConstantFunction {
            name: name.to_string(),
            value,
            signature: Signature::nullary(Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for ConstantFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// Registers the chain's built-in functions with their values for one transaction.
pub fn register_chain_functions(state: &mut SessionState, context: &ChainContext) -> Result<()> {
    let functions = [
        ConstantFunction::udf("caller", ScalarValue::Utf8(Some(context.caller.clone()))),
        ConstantFunction::udf(
            "block_height",
            ScalarValue::Int64(Some(context.block_height as i64)),
        ),
        ConstantFunction::udf(
            "block_time",
            ScalarValue::TimestampMillisecond(Some(context.block_time_ms as i64), Some("+00:00".into())),
        ),
        ConstantFunction::udf(
            "tx_hash",
            ScalarValue::Utf8(Some(context.transaction_hash.clone())),
        ),
    ];
    for function in functions {
        state.register_udf(function)?;
    }
    Ok(())
}

/// Marks scalar subqueries nullable.
///
/// A scalar subquery that finds no row yields NULL, but DataFusion 55 gives `(SELECT c FROM t
/// WHERE ...)` the nullability of `c` (apache/datafusion#24513, fixed after 55). Over a `NOT NULL`
/// column that makes an empty subquery fail ("declared as non-nullable but contains null
/// values") and lets the simplifier fold `(SELECT ...) IS NULL` to false: wrong answers, and
/// contract `REQUIRE`s that cannot see a missing row. This rule wraps every scalar subquery in
/// an identity function whose result is nullable, keeping expression names.
#[derive(Debug)]
struct NullableSubqueries {
    identity: Arc<ScalarUDF>,
}

impl NullableSubqueries {
    fn new() -> NullableSubqueries {
        NullableSubqueries {
            identity: Arc::new(ScalarUDF::from(NullableIdentity {
                signature: Signature::any(1, Volatility::Immutable),
            })),
        }
    }

    fn is_identity(&self, expr: &Expr) -> bool {
        matches!(expr, Expr::ScalarFunction(f) if f.func.name() == NULLABLE_IDENTITY)
    }
}

const NULLABLE_IDENTITY: &str = "__chainql_nullable";

impl AnalyzerRule for NullableSubqueries {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> datafusion::error::Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let names = NamePreserver::new(&plan);
            let rewritten = plan.map_expressions(|expr| {
                let name = names.save(&expr);
                let rewritten = expr.transform_down(|e| {
                    if self.is_identity(&e) {
                        return Ok(Transformed::new(e, false, TreeNodeRecursion::Jump));
                    }
                    if let Expr::ScalarSubquery(_) = e {
                        let wrapped = self.identity.call(vec![e]);
                        return Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump));
                    }
                    Ok(Transformed::no(e))
                })?;
                Ok(rewritten.update_data(|e| name.restore(e)))
            })?;
            if rewritten.transformed {
                rewritten.map_data(LogicalPlan::recompute_schema)
            } else {
                Ok(rewritten)
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "chainql_nullable_subqueries"
    }
}

/// `__chainql_nullable(x)`: returns `x`, typed as nullable.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullableIdentity {
    signature: Signature,
}

impl ScalarUDFImpl for NullableIdentity {
    fn name(&self) -> &str {
        NULLABLE_IDENTITY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> datafusion::error::Result<FieldRef> {
        let data_type = args
            .arg_fields
            .first()
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Null);
        Ok(Arc::new(Field::new(NULLABLE_IDENTITY, data_type, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        args.args
            .into_iter()
            .next()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("no argument".into()))
    }
}

/// Pre-built session states, cloned per statement.
#[derive(Clone)]
pub struct SessionTemplates {
    transaction: SessionState,
    query: SessionState,
}

impl std::fmt::Debug for SessionTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTemplates").finish_non_exhaustive()
    }
}

fn config(target_partitions: usize, information_schema: bool) -> Result<SessionConfig> {
    let mut options = ConfigOptions::new();
    options.set("datafusion.sql_parser.dialect", "postgresql")?;
    options.set("datafusion.execution.time_zone", "+00:00")?;
    options.set("datafusion.catalog.default_catalog", "datafusion")?;
    options.set("datafusion.catalog.default_schema", "public")?;
    Ok(SessionConfig::from(options)
        .with_target_partitions(target_partitions.max(1))
        .with_information_schema(information_schema)
        .with_create_default_catalog_and_schema(false))
}

impl SessionTemplates {
    /// Builds both templates; queries use `query_partitions` partitions.
    pub fn new(query_partitions: usize) -> Result<SessionTemplates> {
        let mut transaction = SessionStateBuilder::new()
            .with_config(config(1, false)?)
            .with_default_features()
            .with_analyzer_rule(Arc::new(NullableSubqueries::new()))
            .build();
        let volatile: Vec<String> = transaction
            .scalar_functions()
            .iter()
            .filter(|(_, f)| f.signature().volatility == Volatility::Volatile)
            .map(|(name, _)| name.clone())
            .collect();
        for name in volatile {
            transaction.deregister_udf(&name)?;
        }
        let query = SessionStateBuilder::new()
            .with_config(config(query_partitions, true)?)
            .with_default_features()
            .with_analyzer_rule(Arc::new(NullableSubqueries::new()))
            .build();
        Ok(SessionTemplates { transaction, query })
    }

    /// A session for a statement of a transaction in a block with timestamp `block_time_ms`,
    /// reading `catalog`.
    pub fn transaction_session(
        &self,
        block_time_ms: u64,
        catalog: Arc<dyn CatalogProviderList>,
    ) -> SessionState {
        let mut state = self.transaction.clone();
        state.register_catalog_list(catalog);
        state.mark_start_execution();
        let block_time = i64::try_from(block_time_ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or_default();
        state.execution_props_mut().query_execution_start_time = Some(block_time);
        state
    }

    /// A session for a read-only query of `catalog`.
    pub fn query_session(&self, catalog: Arc<dyn CatalogProviderList>) -> SessionState {
        let mut state = self.query.clone();
        state.register_catalog_list(catalog);
        state.mark_start_execution();
        state
    }
}
