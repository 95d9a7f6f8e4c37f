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

use crate::Result;

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
