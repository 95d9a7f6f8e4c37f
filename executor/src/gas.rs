//! Gas: a deterministic bound on the work one transaction may make the executor do.
//!
//! Besides fixed charges per statement and per row written, a query plan pays for the rows it
//! reads from stored tables ([`GAS_PER_ROW_READ`]: what the scans of user and system tables
//! deliver, one row for an index lookup) and for computation: every row an operator produces
//! beyond the first [`FREE_ROWS_PER_PLAN`] of the plan costs [`GAS_PER_ROW_PROCESSED`]. The plan
//! is wrapped operator by operator in [`MeteredExec`], which charges as batches stream out, so a
//! statement that would produce more rows than its gas pays for (a join that explodes, a huge
//! `generate_series`) stops at that point instead of running to completion. With one partition
//! every operator's total output is a function of the data, so whether a transaction runs out of
//! gas is the same on every node.
//!
//! The free allowance makes the gas of a point statement (index lookups, a few rows through a
//! few operators) independent of the shape of its plan: reads, writes and the statement itself
//! are all it pays, which is what lets the R2 runtime run many calls as one vectorized plan and
//! charge each exactly what running it alone would.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ChildrenPropertiesMode;
use datafusion::physical_plan::execution_plan::ReplaceChildrenOptions;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use crate::{Error, Result};

/// Gas per row an operator of a plan produces beyond the plan's free allowance.
pub const GAS_PER_ROW_PROCESSED: u64 = 1;
/// Rows the operators of one plan produce before computation costs gas.
pub const FREE_ROWS_PER_PLAN: u64 = 1_000;
/// Gas per row a plan reads from a stored table (a user table, a system table, or an upsert's
/// existing rows).
pub const GAS_PER_ROW_READ: u64 = 10;

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

/// Wraps every operator of `plan` so the rows it produces are charged to `meter`: reads of
/// stored tables (the [`StoredRowsExec`] markers table providers put above their scans) at
/// [`GAS_PER_ROW_READ`], every other operator's rows as computation.
pub fn meter_plan(plan: Arc<dyn ExecutionPlan>, meter: &Arc<GasMeter>) -> Result<Arc<dyn ExecutionPlan>> {
    let allowance = Arc::new(AtomicU64::new(FREE_ROWS_PER_PLAN));
    meter_node(plan, meter, &allowance)
}

fn meter_node(
    node: Arc<dyn ExecutionPlan>,
    meter: &Arc<GasMeter>,
    allowance: &Arc<AtomicU64>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = node.downcast_ref::<StoredRowsExec>() {
        return Ok(Arc::new(MeteredExec {
            input: Arc::clone(&scan.input),
            meter: Arc::clone(meter),
            charge: Charge::Read,
        }));
    }
    let children = node
        .children()
        .into_iter()
        .map(|child| meter_node(Arc::clone(child), meter, allowance))
        .collect::<Result<Vec<_>>>()?;
    let node = if children.is_empty() {
        node
    } else {
        node.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?
    };
    Ok(Arc::new(MeteredExec {
        input: node,
        meter: Arc::clone(meter),
        charge: Charge::Compute(Arc::clone(allowance)),
    }))
}

/// What the rows passing a [`MeteredExec`] cost.
#[derive(Debug, Clone)]
enum Charge {
    /// Rows read from a stored table.
    Read,
    /// Rows an operator computed; free while the plan's allowance lasts.
    Compute(Arc<AtomicU64>),
}

impl Charge {
    fn gas(&self, rows: u64) -> u64 {
        match self {
            Charge::Read => rows.saturating_mul(GAS_PER_ROW_READ),
            Charge::Compute(allowance) => {
                let before = allowance
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        Some(left.saturating_sub(rows))
                    })
                    .unwrap_or(0);
                rows.saturating_sub(before).saturating_mul(GAS_PER_ROW_PROCESSED)
            }
        }
    }
}

/// Marks the scan of a stored table, so [`meter_plan`] charges its rows as reads. It passes its
/// input through unchanged.
#[derive(Debug)]
pub struct StoredRowsExec {
    input: Arc<dyn ExecutionPlan>,
}

impl StoredRowsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> StoredRowsExec {
        StoredRowsExec { input }
    }
}

impl DisplayAs for StoredRowsExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StoredRowsExec")
    }
}

impl ExecutionPlan for StoredRowsExec {
    fn name(&self) -> &str {
        "StoredRowsExec"
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
            .map_err(|_| DataFusionError::Internal("StoredRowsExec has exactly one child".into()))?;
        Ok(Arc::new(StoredRowsExec { input }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// Passes its input's batches through, charging gas per row.
#[derive(Debug)]
pub struct MeteredExec {
    input: Arc<dyn ExecutionPlan>,
    meter: Arc<GasMeter>,
    charge: Charge,
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
            charge: self.charge.clone(),
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
        let charge = self.charge.clone();
        let metered = stream.map(move |batch| {
            let batch = batch?;
            meter
                .charge(charge.gas(batch.num_rows() as u64))
                .map_err(DataFusionError::from)?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, metered)))
    }
}
