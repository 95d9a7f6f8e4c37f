//! Gas: a deterministic bound on the work one transaction may make the executor do.
//!
//! Besides fixed charges per statement, every row that any operator of a statement's physical
//! plan produces costs gas. The plan is wrapped operator by operator in [`MeteredExec`], which
//! charges as batches stream out, so a statement that would produce more rows than its gas pays
//! for (a join that explodes, a huge `generate_series`) stops at that point instead of running
//! to completion. With one partition every operator's total output is a function of the data, so
//! whether a transaction runs out of gas is the same on every node.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use crate::{Error, Result};

/// Gas per row an operator of a statement's plan produces.
pub const GAS_PER_ROW_PROCESSED: u64 = 1;

/// A transaction's gas: what it may spend and what it has spent.
#[derive(Debug)]
pub struct GasMeter {
    used: AtomicU64,
    limit: u64,
}

impl GasMeter {
    pub fn new(limit: u64) -> GasMeter {
        GasMeter {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Spends `gas`; fails once the total is over the limit.
    pub fn charge(&self, gas: u64) -> Result<()> {
        let before = self.used.fetch_add(gas, Ordering::Relaxed);
        if before.saturating_add(gas) > self.limit {
            return Err(Error::OutOfGas { limit: self.limit });
        }
        Ok(())
    }

    /// Gas spent so far, at most the limit.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed).min(self.limit)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Gas left.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Marks all gas as spent (a transaction that ran out of gas pays its whole limit).
    pub fn exhaust(&self) {
        self.used.store(self.limit, Ordering::Relaxed);
    }
}

/// Wraps every operator of `plan` so the rows it produces are charged to `meter`.
pub fn meter_plan(plan: Arc<dyn ExecutionPlan>, meter: &Arc<GasMeter>) -> Result<Arc<dyn ExecutionPlan>> {
    let metered = plan.transform_up(|node| {
        Ok(Transformed::yes(Arc::new(MeteredExec {
            input: node,
            meter: Arc::clone(meter),
        }) as Arc<dyn ExecutionPlan>))
    })?;
    Ok(metered.data)
}

/// Passes its input's batches through, charging gas per row.
#[derive(Debug)]
pub struct MeteredExec {
    input: Arc<dyn ExecutionPlan>,
    meter: Arc<GasMeter>,
}

impl DisplayAs for MeteredExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MeteredExec")
    }
}

impl ExecutionPlan for MeteredExec {
    fn name(&self) -> &str {
        "MeteredExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("MeteredExec has exactly one child".into()))?;
        Ok(Arc::new(MeteredExec {
            input,
            meter: Arc::clone(&self.meter),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = stream.schema();
        let meter = Arc::clone(&self.meter);
        let metered = stream.map(move |batch| {
            let batch = batch?;
            meter
                .charge((batch.num_rows() as u64).saturating_mul(GAS_PER_ROW_PROCESSED))
                .map_err(DataFusionError::from)?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, metered)))
    }
}
