//! Executing blocks of transactions, and answering queries.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::{Schema, SchemaRef, UInt64Type};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::common::ScalarValue;
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::StreamExt;

use chainql::contract::ChainStatement;
use chainql::sql::StatementKind;
use chainql::wire::{Receipt, ReceiptStatus, StatementResult};
use chainql::{Address, Hash, PublicKey};
use chainql_planner::{
    ChainContext, DeletePlan, InsertPlan, Privileges, SessionTemplates, TableDefinition, UpdatePlan,
    WritePlan, plan_write, register_chain_functions,
};

use crate::contract::{EmittedEvent, call_argument_refs, is_native_transfer};
use crate::gas::{GasMeter, meter_plan};
use crate::keys::{Analyzer, ContractTemplates, Footprint, stages};
use crate::parallel::Split;
use crate::provider::Extras;
use crate::r2::{self, CallSuccess, CompiledContracts, VectorCall, VectorContract};
use crate::state::State;
use crate::system::{BlockRecord, TransactionRecord};
use crate::table::{RowLocation, Table, check_constraints};
use crate::{Error, Result};

/// Gas charged per statement; the schedule is documented in `docs/architecture.md`.
pub const GAS_PER_STATEMENT: u64 = 1_000;
/// Extra gas for `CREATE TABLE` and `DROP TABLE`.
pub const GAS_PER_DDL: u64 = 10_000;
/// Gas per row inserted, updated or deleted.
pub const GAS_PER_ROW_WRITTEN: u64 = 100;
/// The gas a `VIEW` contract answered as a query may use.
pub const VIEW_GAS_LIMIT: u64 = 100_000_000;
/// The most tables a chain may hold.
pub const TABLES_MAX: usize = 10_000;

/// A transaction as the executor needs it: decoded and admitted, its signature already checked.
#[derive(Debug, Clone)]
pub struct ExecutableTransaction {
    pub hash: Hash,
    pub sender: Address,
    /// The sender's public key (32 bytes, not yet decoded: only `STAKE` needs it, to make it a
    /// validator key); `None` where the caller has only the address (then it cannot stake).
    pub sender_key: Option<[u8; 32]>,
    pub nonce: u64,
    pub gas_limit: u64,
    pub statements: Vec<String>,
}

/// The header facts of the block being executed.
#[derive(Debug, Clone)]
pub struct BlockContext {
    pub height: u64,
    pub hash: Hash,
    pub parent_hash: Hash,
    pub timestamp_ms: u64,
    pub transactions_root: Hash,
    /// The state root the header carries (the state before this block).
    pub state_root: Hash,
    pub proposer: Address,
    /// Validators the block proves signed conflicting votes, each punished once (consensus
    /// checked the evidence).
    pub offences: Vec<Offence>,
}

/// A validator's offence a block carries evidence of: two conflicting votes at `height` and
/// `round`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offence {
    pub validator: Address,
    pub height: u64,
    pub round: u32,
}

/// Rows and schema of a query's answer.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn row_count(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Encodes the answer as an Arrow IPC stream.
    pub fn to_ipc(&self) -> Result<Vec<u8>> {
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)?;
        for batch in &self.batches {
            writer.write(batch)?;
        }
        writer.finish()?;
        Ok(writer.into_inner()?)
    }

    /// Decodes an Arrow IPC stream.
    pub fn from_ipc(bytes: &[u8]) -> Result<QueryResult> {
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(QueryResult { schema, batches })
    }
}

/// Bounds on query answers.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Rows in one answer.
    pub rows_max: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { rows_max: 1_000_000 }
    }
}

/// Runs blocks and queries. Holds no state of its own: every call takes the state version it
/// works on, so the same executor serves any number of versions.
#[derive(Debug, Clone)]
pub struct Executor {
    templates: SessionTemplates,
    query_limits: QueryLimits,
    /// Native units per unit of gas (the genesis's `gas_price`).
    gas_price: u64,
    /// Blocks per staking epoch (the genesis's `epoch_blocks`); 0: stake never moves.
    epoch_blocks: u64,
    /// Run blocks through R2's stages (vectorized calls); off, every transaction runs alone in
    /// block order — the reference R2 must equal.
    r2: bool,
    /// How a vectorized group's row work is shared over threads; its thread count also serves
    /// the key-set analysis.
    pub(crate) row_split: Split,
}

/// What a statement runs within: its block, its transaction's gas, whose rights it uses, and the
/// values its placeholders are bound to (a contract's parameters and `LET` values).
#[derive(Clone)]
pub(crate) struct TransactionScope<'a> {
    pub block: &'a BlockContext,
    pub gas: Arc<GasMeter>,
    /// The account whose rights the statements use: the sender, or inside a contract the
    /// contract's owner.
    pub actor: Address,
    /// The transaction's sender: what `CALLER()` returns.
    pub caller: Address,
    pub transaction: Hash,
    /// Values of the placeholders `$1`, `$2`, ... of the statements run in this scope.
    pub params: Arc<Vec<ScalarValue>>,
    /// Contract calls deep.
    pub depth: u32,
    /// Events emitted and the result returned so far in the transaction.
    pub output: Arc<std::sync::Mutex<CallOutput>>,
}

/// What the contracts of one transaction produced.
#[derive(Debug, Default)]
pub(crate) struct CallOutput {
    pub events: Vec<crate::contract::EmittedEvent>,
    pub result: Option<QueryResult>,
}

impl TransactionScope<'_> {
    /// Refuses a write `table` does not allow the actor.
    fn require(&self, table: &Table, wanted: Privileges) -> Result<()> {
        let held = self.actor_privileges(table);
        let missing = wanted.without(held);
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            table: table.name().to_string(),
            account: self.actor,
            action: missing.names(),
        })
    }

    fn actor_privileges(&self, table: &Table) -> Privileges {
        table.privileges_of(&self.actor)
    }

    /// Refuses anything but the owner.
    fn require_owner(&self, table: &Table, action: &str) -> Result<()> {
        if table.owner() == self.actor {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            table: table.name().to_string(),
            account: self.actor,
            action: action.to_string(),
        })
    }
}

/// The first window of transactions analyzed for a stretch, and the largest.
const ANALYSIS_WINDOW_MIN: usize = 1;
const ANALYSIS_WINDOW_MAX: usize = 8192;
/// Rows of a vectorized group's step per thread below which it stays on fewer threads.
const PARALLEL_ROWS_MIN: usize = 1024;
/// Transactions per thread below which analysis stays on fewer threads.
const PARALLEL_ANALYSIS_MIN: usize = 32;

/// Each transaction's footprint (its key sets against `state`, a barrier included), and its
/// statement parsed when it has exactly one. Every transaction is analyzed on its own, so the
/// work is split over the machine's cores; the result does not depend on how.
fn analyze(
    state: &State,
    block: &BlockContext,
    transactions: &[ExecutableTransaction],
    threads: usize,
) -> Vec<(Footprint, Option<(ChainStatement, StatementKind)>)> {
    let one = |templates: &ContractTemplates, transaction: &ExecutableTransaction| {
        let analyzer = Analyzer::with_templates(state, Some(transaction.sender), templates);
        let statement = match transaction.statements.as_slice() {
            [sql] => chainql::sql::parse_transaction_statement(sql).ok(),
            _ => None,
        };
        let mut sets = match &statement {
            Some((statement, _)) => analyzer.single(statement),
            None => analyzer.transaction(&transaction.statements),
        };
        if transaction.sender == block.proposer {
            // Its gas reservation reads a balance every transaction's fee adds to.
            sets.barrier = Some("the proposer's own transaction".into());
        }
        (Footprint::of(&sets), statement)
    };
    let analyzed = crate::parallel::map_ranges(
        transactions.len(),
        threads,
        PARALLEL_ANALYSIS_MIN,
        |range| -> std::result::Result<_, std::convert::Infallible> {
            let templates = ContractTemplates::default();
            Ok(transactions[range].iter().map(|t| one(&templates, t)).collect())
        },
    );
    match analyzed {
        Ok(analyzed) => analyzed,
        Err(never) => match never {},
    }
}

/// The contract a statement calls, the call and its command kind: a `CALL` of a contract by
/// name (not the native transfer), the statement the vectorized path may take.
fn contract_call(
    statement: &Option<(ChainStatement, StatementKind)>,
) -> Option<(String, &ast::Function, &StatementKind)> {
    let Some((ChainStatement::Sql(statement), kind)) = statement else {
        return None;
    };
    let Statement::Call(function) = statement.as_ref() else {
        return None;
    };
    if is_native_transfer(&function.name) {
        return None;
    }
    let name = chainql::contract::call_target(&function.name).ok()?;
    Some((name, function, kind))
}

impl Executor {
    pub fn new(query_partitions: usize, query_limits: QueryLimits) -> Result<Executor> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Executor {
            templates: SessionTemplates::new(query_partitions)?,
            query_limits,
            gas_price: 0,
            epoch_blocks: 0,
            r2: true,
            row_split: Split {
                threads,
                min_per_thread: PARALLEL_ROWS_MIN,
            },
        })
    }

    /// Charges `gas_price` native units per unit of gas: before a transaction runs, its gas
    /// limit's worth is reserved from the sender's balance; afterwards the gas used is paid to
    /// the block's proposer and the rest refunded.
    pub fn with_gas_price(mut self, gas_price: u64) -> Executor {
        self.gas_price = gas_price;
        self
    }

    /// Ends a staking epoch after every block whose height is a multiple of `epoch_blocks`
    /// (see [`crate::Staking`]); 0 never does.
    pub fn with_epoch_blocks(mut self, epoch_blocks: u64) -> Executor {
        self.epoch_blocks = epoch_blocks;
        self
    }

    /// Shares key-set analysis and the row work of vectorized groups over `threads` threads
    /// (default: one per core), giving each at least `min_rows_per_thread` rows of a group's
    /// work (default 1,024). The result does not depend on either; tests use small values to
    /// run the parallel paths on small blocks.
    pub fn with_threads(mut self, threads: usize, min_rows_per_thread: usize) -> Executor {
        self.row_split = Split {
            threads: threads.max(1),
            min_per_thread: min_rows_per_thread.max(1),
        };
        self
    }

    /// Executes every block one transaction at a time, in block order, without R2's stages:
    /// the reference the R2 runtime is checked against.
    pub fn with_serial_execution(mut self) -> Executor {
        self.r2 = false;
        self
    }

    /// Executes `transactions`, in order, on `state`: the block's result is a new state and one
    /// receipt per transaction. A transaction either applies all its statements or none; a failed
    /// one still uses its nonce. Only an internal failure (never a transaction's fault) returns
    /// an error.
    pub async fn execute_block(
        &self,
        state: &State,
        block: &BlockContext,
        transactions: &[ExecutableTransaction],
    ) -> Result<(State, Vec<Receipt>)> {
        assert_eq!(block.height, state.height + 1, "blocks execute in height order");
        let mut state = state.clone();
        state.staking.begin_block(block.height);
        for offence in &block.offences {
            let burned = state
                .staking
                .slash(&offence.validator, offence.height, offence.round);
            tracing::info!(validator = %offence.validator, height = offence.height, round = offence.round, burned, "slashed a validator for conflicting votes");
        }
        let mut outcomes: Vec<Option<(Receipt, TransactionRecord)>> =
            (0..transactions.len()).map(|_| None).collect();
        if self.r2 {
            self.execute_stages(&mut state, block, transactions, &mut outcomes)
                .await?;
        } else {
            for (index, transaction) in transactions.iter().enumerate() {
                let (receipt, mut record) = self
                    .execute_transaction(&mut state, block, index as u32, transaction)
                    .await?;
                record.stage = index as u32 + 1;
                outcomes[index] = Some((receipt, record));
            }
        }
        let (receipts, records): (Vec<Receipt>, Vec<TransactionRecord>) = outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::Internal("a transaction of the block did not run".into())))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        if self.epoch_blocks > 0 && block.height.is_multiple_of(self.epoch_blocks) {
            for (address, amount) in state.staking.end_epoch(block.height) {
                state.adjust_balance(&address, amount as i128)?;
            }
        }
        state.height = block.height;
        state.block_hash = block.hash;
        state.timestamp_ms = block.timestamp_ms;
        state.root = state.compute_root_with(self.row_split)?;
        let accounts = state.accounts.map().clone();
        state.system.set_accounts(accounts);
        let staking = state.staking.clone();
        state.system.set_staking(staking, block.height);
        state.system.push_block(
            &BlockRecord {
                height: block.height,
                hash: block.hash,
                parent_hash: block.parent_hash,
                timestamp_ms: block.timestamp_ms,
                transaction_count: transactions.len() as u32,
                transactions_root: block.transactions_root,
                state_root: block.state_root,
                proposer: block.proposer,
            },
            &records,
        )?;
        crate::parallel::drop_elsewhere(records);
        Ok((state, receipts))
    }

    /// R2: cuts the block into stretches between barriers (transactions that change the catalog,
    /// whose key sets the analysis of the stretch's state cannot know), each stretch into
    /// conflict-free stages, and runs each stage's calls of one contract vectorized and the rest
    /// one by one. Equivalent to running the block in order: a stage's transactions touch
    /// disjoint keys, and the stages run in order.
    async fn execute_stages(
        &self,
        state: &mut State,
        block: &BlockContext,
        transactions: &[ExecutableTransaction],
        outcomes: &mut [Option<(Receipt, TransactionRecord)>],
    ) -> Result<()> {
        let mut next = 0;
        let mut stage_number = 0;
        while next < transactions.len() {
            // The stretch runs until the first barrier. Transactions are analyzed in windows
            // that start at one and double while no barrier turns up: the analysis thrown away
            // past a barrier is at most three times the stretch before it, and a long stretch is
            // analyzed on every core.
            let mut footprints = Vec::new();
            let mut parsed = Vec::new();
            let mut end = next;
            let mut window = ANALYSIS_WINDOW_MIN;
            'stretch: while end < transactions.len() {
                let window_end = (end + window).min(transactions.len());
                for (footprint, statement) in analyze(
                    state,
                    block,
                    &transactions[end..window_end],
                    self.row_split.threads,
                ) {
                    if footprint.is_barrier() {
                        break 'stretch;
                    }
                    footprints.push(footprint);
                    parsed.push(statement);
                    end += 1;
                }
                window = (window * 2).min(ANALYSIS_WINDOW_MAX);
            }
            let mut compiled = CompiledContracts::new();
            for stage in stages(&footprints) {
                stage_number += 1;
                let members: Vec<usize> = stage.iter().map(|i| next + i).collect();
                let statements: Vec<_> = stage.iter().map(|&i| parsed[i].take()).collect();
                self.execute_stage(
                    state,
                    block,
                    transactions,
                    &members,
                    statements,
                    &mut compiled,
                    outcomes,
                )
                .await?;
                for &i in &members {
                    if let Some((_, record)) = &mut outcomes[i] {
                        record.stage = stage_number;
                    }
                }
            }
            if end < transactions.len() {
                stage_number += 1;
                let (receipt, mut record) = self
                    .execute_transaction(state, block, end as u32, &transactions[end])
                    .await?;
                record.stage = stage_number;
                outcomes[end] = Some((receipt, record));
                next = end + 1;
            } else {
                next = end;
            }
        }
        Ok(())
    }

    /// Runs one stage: the calls of each compiled contract as one vectorized group;
    /// the rest (and calls the group hands back) one by one in block order.
    #[allow(clippy::too_many_arguments)]
    async fn execute_stage(
        &self,
        state: &mut State,
        block: &BlockContext,
        transactions: &[ExecutableTransaction],
        members: &[usize],
        statements: Vec<Option<(ChainStatement, StatementKind)>>,
        compiled: &mut CompiledContracts,
        outcomes: &mut [Option<(Receipt, TransactionRecord)>],
    ) -> Result<()> {
        // Per contract: its compiled form, the calls' block positions and command tags, and the
        // calls.
        type Group = (Arc<VectorContract>, Vec<(usize, String)>, Vec<VectorCall>);
        // The contracts the stage calls, compiled once each, in block order.
        let mut session = None;
        for statement in &statements {
            if let Some((name, _, _)) = contract_call(statement)
                && !compiled.contains_key(&name)
            {
                let vectorized = match state.contract(&name) {
                    Some(contract) => {
                        if session.is_none() {
                            session = Some(self.stage_session(state, block)?);
                        }
                        let session = session.as_ref().expect("the stage's session was just made");
                        r2::compile(state, session, contract).map(Arc::new)
                    }
                    None => None,
                };
                compiled.insert(name, vectorized);
            }
        }
        // Which calls can join a group, checked on every thread: a stage's transactions touch
        // disjoint keys, so each check reads only what no other member changes.
        let compiled: &CompiledContracts = compiled;
        let candidates = self.row_split.map(members.len(), |range| {
            Ok::<_, Error>(
                range
                    .map(|k| self.vector_call(state, &transactions[members[k]], &statements[k], compiled))
                    .collect(),
            )
        })?;
        let mut groups: Vec<Group> = Vec::new();
        let mut serial = Vec::new();
        for (&i, candidate) in members.iter().zip(candidates) {
            match candidate {
                Some((contract, command, call)) => {
                    match groups
                        .iter_mut()
                        .find(|(c, _, _)| c.contract.definition.name == contract.contract.definition.name)
                    {
                        Some((_, indices, calls)) => {
                            indices.push((i, command));
                            calls.push(call);
                        }
                        None => groups.push((contract, vec![(i, command)], vec![call])),
                    }
                }
                None => serial.push(i),
            }
        }
        // A group of one call runs vectorized too: its statements are planned as expressions
        // over one row, far cheaper than planning each as a query.
        for (contract, indices, calls) in groups {
            let results = match self.run_vectorized(state, block, &contract, &calls) {
                Ok(results) => results,
                Err(error) => {
                    // Nothing of the group was applied: its calls run one by one instead.
                    tracing::warn!(contract = %contract.contract.definition.name, %error, "a vectorized group fell back to serial execution");
                    calls.iter().map(|_| None).collect()
                }
            };
            let mut settled = Vec::with_capacity(indices.len());
            for ((i, command), result) in indices.into_iter().zip(results) {
                match result {
                    Some(success) => settled.push((i, command, success)),
                    None => serial.push(i),
                }
            }
            self.settle_calls(state, block, transactions, settled, outcomes)?;
            crate::parallel::drop_elsewhere(calls);
        }
        crate::parallel::drop_elsewhere((statements, session));
        serial.sort_unstable();
        for i in serial {
            outcomes[i] = Some(
                self.execute_transaction(state, block, i as u32, &transactions[i])
                    .await?,
            );
        }
        Ok(())
    }

    /// A transaction that is one `CALL` of a compiled contract (in `compiled`) with literal
    /// arguments, by a sender who may call it and whose nonce and gas reservation hold: a
    /// member of a vectorized group.
    fn vector_call(
        &self,
        state: &State,
        transaction: &ExecutableTransaction,
        statement: &Option<(ChainStatement, StatementKind)>,
        compiled: &CompiledContracts,
    ) -> Option<(Arc<VectorContract>, String, VectorCall)> {
        let (name, function, kind) = contract_call(statement)?;
        let contract = compiled.get(&name)?.as_ref()?;
        if !r2::may_call(&contract.contract, &transaction.sender) {
            return None;
        }
        let args = call_argument_refs(function).ok()?;
        if args.len() != contract.parameter_types.len() {
            return None;
        }
        let args = args
            .iter()
            .zip(&contract.parameter_types)
            .map(|(arg, wanted)| {
                let value = r2::literal_argument(arg)?;
                // A cast goes through a one-row Arrow array: skipped when the type is already right.
                if value.data_type() == *wanted {
                    Some(value)
                } else {
                    value.cast_to(wanted).ok()
                }
            })
            .collect::<Option<Vec<_>>>()?;
        let account = state.account(&transaction.sender);
        let affordable = transaction
            .gas_limit
            .checked_mul(self.gas_price)
            .is_some_and(|reserved| reserved <= account.balance);
        if transaction.nonce != account.nonce || !affordable {
            return None;
        }
        Some((
            Arc::clone(contract),
            kind.command_tag().to_string(),
            VectorCall {
                caller: transaction.sender,
                transaction: transaction.hash,
                gas_limit: transaction.gas_limit,
                args,
            },
        ))
    }

    /// The session a stage's vectorized expressions are planned in: the block's values, no
    /// transaction's (each call's caller and hash are columns of its batch).
    pub(crate) fn stage_session(&self, state: &State, block: &BlockContext) -> Result<SessionState> {
        let scope = TransactionScope {
            block,
            gas: Arc::new(GasMeter::new(0)),
            actor: Address([0; 20]),
            caller: Address([0; 20]),
            transaction: Hash::ZERO,
            params: Arc::new(Vec::new()),
            depth: 0,
            output: Arc::new(std::sync::Mutex::new(CallOutput::default())),
        };
        self.transaction_session(state, &scope, Extras::default())
    }

    /// Pays for the calls a vectorized group ran (block position, command tag, result), as the
    /// serial path would have: each fee from its sender, who uses its nonce, and all to the
    /// proposer; and makes their receipts. The receipts are made on every thread; the senders
    /// are charged in address order, each charge walking the account map next to the last.
    /// The order changes nothing: the senders differ, and no charge can fail, each call's
    /// whole gas limit having been affordable when the group formed.
    fn settle_calls(
        &self,
        state: &mut State,
        block: &BlockContext,
        transactions: &[ExecutableTransaction],
        calls: Vec<(usize, String, CallSuccess)>,
        outcomes: &mut [Option<(Receipt, TransactionRecord)>],
    ) -> Result<()> {
        let fee_of = |i: usize, success: &CallSuccess| {
            let gas_used = success.gas_used.min(transactions[i].gas_limit);
            (gas_used, gas_used * self.gas_price)
        };
        let mut charges: Vec<(Address, u64)> = calls
            .iter()
            .map(|(i, _, success)| (transactions[*i].sender, fee_of(*i, success).1))
            .collect();
        charges.sort_unstable_by_key(|(sender, _)| *sender);
        let mut fees: u64 = 0;
        for (sender, fee) in charges {
            state.charge_sender(&sender, fee)?;
            fees = fees
                .checked_add(fee)
                .ok_or_else(|| Error::LimitExceeded("a stage's fees pass the largest balance".into()))?;
        }
        state.adjust_balance(&block.proposer, fees as i128)?;
        let count = calls.len();
        let settled = self.row_split.map_each(calls, count, |(i, command, success)| {
            let transaction = &transactions[i];
            let (gas_used, fee) = fee_of(i, &success);
            let receipt = Receipt {
                transaction_hash: transaction.hash.0.to_vec(),
                block_height: block.height,
                index: i as u32,
                status: ReceiptStatus::Success as i32,
                error: String::new(),
                statements: vec![StatementResult { command, rows: 0 }],
                gas_used,
                fee,
                events: success.events.iter().map(EmittedEvent::to_wire).collect(),
                ..Receipt::default()
            };
            let record = TransactionRecord {
                hash: transaction.hash,
                sender: transaction.sender,
                nonce: transaction.nonce,
                success: true,
                error: None,
                statements: transaction.statements.join(";\n"),
                gas_used,
                events: success.events,
                stage: 0,
                vectorized: true,
            };
            (i, receipt, record)
        });
        for (i, receipt, record) in settled {
            outcomes[i] = Some((receipt, record));
        }
        Ok(())
    }

    async fn execute_transaction(
        &self,
        state: &mut State,
        block: &BlockContext,
        index: u32,
        transaction: &ExecutableTransaction,
    ) -> Result<(Receipt, TransactionRecord)> {
        let mut receipt = Receipt {
            transaction_hash: transaction.hash.0.to_vec(),
            block_height: block.height,
            index,
            status: ReceiptStatus::Failed as i32,
            error: String::new(),
            statements: Vec::new(),
            gas_used: 0,
            ..Receipt::default()
        };
        let mut record = TransactionRecord {
            hash: transaction.hash,
            sender: transaction.sender,
            nonce: transaction.nonce,
            success: false,
            error: None,
            statements: transaction.statements.join(";\n"),
            gas_used: 0,
            events: Vec::new(),
            stage: 0,
            vectorized: false,
        };
        let expected = state.account(&transaction.sender).nonce;
        if transaction.nonce != expected {
            // Admission never lets this happen on an honest node; a block that carries such a
            // transaction still executes deterministically, without using the nonce.
            let error = format!(
                "invalid nonce {}: the sender's next nonce is {expected}",
                transaction.nonce
            );
            receipt.error = error.clone();
            receipt.code = chainql::sqlstate::SERIALIZATION_FAILURE.to_string();
            record.error = Some(error);
            return Ok((receipt, record));
        }

        // Reserve the most the transaction may pay; a sender who cannot cover it uses the nonce
        // and pays nothing.
        let reserved = transaction.gas_limit.checked_mul(self.gas_price);
        let balance = state.account(&transaction.sender).balance;
        let reserved = match reserved {
            Some(reserved) if reserved <= balance => reserved,
            _ => {
                let error = format!(
                    "insufficient balance for gas: a gas limit of {} at price {} needs {}, the sender holds {balance}",
                    transaction.gas_limit,
                    self.gas_price,
                    transaction.gas_limit as u128 * self.gas_price as u128
                );
                receipt.error = error.clone();
                receipt.code = chainql::sqlstate::CHECK_VIOLATION.to_string();
                record.error = Some(error);
                state.use_nonce(&transaction.sender);
                return Ok((receipt, record));
            }
        };
        state.adjust_balance(&transaction.sender, -(reserved as i128))?;

        let mut working = state.clone();
        let scope = TransactionScope {
            block,
            gas: Arc::new(GasMeter::new(transaction.gas_limit)),
            actor: transaction.sender,
            caller: transaction.sender,
            transaction: transaction.hash,
            params: Arc::new(Vec::new()),
            depth: 0,
            output: Arc::new(std::sync::Mutex::new(CallOutput::default())),
        };
        let mut results = Vec::with_capacity(transaction.statements.len());
        let mut outcome = Ok(());
        for sql in &transaction.statements {
            match self
                .execute_statement(&mut working, &scope, transaction.sender_key.as_ref(), sql)
                .await
            {
                Ok(result) => results.push(result),
                Err(error) => {
                    if let Error::Internal(message) = &error {
                        tracing::error!(transaction = %transaction.hash, %message, "internal error while executing a transaction");
                    }
                    outcome = Err(error);
                    break;
                }
            }
        }
        match outcome {
            Ok(()) => {
                *state = working;
                receipt.status = ReceiptStatus::Success as i32;
                receipt.statements = results;
                record.success = true;
                let output = std::mem::take(&mut *scope.output.lock().unwrap_or_else(|p| p.into_inner()));
                if let Some(result) = output.result {
                    receipt.result = result.to_ipc()?;
                }
                receipt.events = output.events.iter().map(EmittedEvent::to_wire).collect();
                record.events = output.events;
            }
            Err(error) => {
                if let Error::OutOfGas { .. } = error {
                    // Running out of gas spends all of it.
                    scope.gas.exhaust();
                }
                let message = error.to_string();
                receipt.error = message.clone();
                receipt.code = error.sqlstate().to_string();
                record.error = Some(message);
            }
        }
        receipt.gas_used = scope.gas.used();
        record.gas_used = receipt.gas_used;
        // Settle: the gas used goes to the proposer, the rest of the reservation back.
        let fee = receipt.gas_used.min(transaction.gas_limit) * self.gas_price;
        state.adjust_balance(&transaction.sender, (reserved - fee) as i128)?;
        state.adjust_balance(&block.proposer, fee as i128)?;
        receipt.fee = fee;
        state.use_nonce(&transaction.sender);
        Ok((receipt, record))
    }

    async fn execute_statement(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        sender_key: Option<&[u8; 32]>,
        sql: &str,
    ) -> Result<StatementResult> {
        let (statement, kind) = chainql::sql::parse_transaction_statement(sql)?;
        scope.gas.charge(GAS_PER_STATEMENT)?;
        let rows = match statement {
            ChainStatement::CreateContract(definition) => {
                scope.gas.charge(GAS_PER_DDL)?;
                self.deploy(working, scope, *definition).await?;
                0
            }
            ChainStatement::DropContract { name, if_exists } => {
                scope.gas.charge(GAS_PER_DDL)?;
                self.drop_contract(working, scope, &name, if_exists)?;
                0
            }
            ChainStatement::Stake(amount) => {
                let key = sender_key
                    .and_then(|bytes| PublicKey::from_bytes(bytes).ok())
                    .filter(|key| key.address() == scope.caller)
                    .ok_or_else(|| Error::Invalid("STAKE needs the sender's public key".into()))?;
                working.adjust_balance(&scope.caller, -(amount as i128))?;
                working.staking.bond(&key, amount)?;
                0
            }
            ChainStatement::Unstake(amount) => {
                let returned = working.staking.unbond(&scope.caller, amount)?;
                working.adjust_balance(&scope.caller, returned as i128)?;
                0
            }
            ChainStatement::Sql(statement) => match *statement {
                Statement::Call(function) => self.call(working, scope, &function).await?,
                statement => self.execute_write(working, scope, &statement).await?,
            },
        };
        Ok(StatementResult {
            command: kind.command_tag().to_string(),
            rows: rows as u64,
        })
    }

    /// Runs a plain write statement (DDL, DML, GRANT/REVOKE); returns the rows it changed.
    pub(crate) async fn execute_write(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        statement: &Statement,
    ) -> Result<usize> {
        let plan = plan_write(statement)?;
        let rows = match plan {
            WritePlan::CreateTable {
                definition,
                if_not_exists,
            } => {
                scope.gas.charge(GAS_PER_DDL)?;
                if working.tables.contains_key(&definition.name) {
                    if !if_not_exists {
                        return Err(Error::DuplicateTable(definition.name));
                    }
                } else {
                    if working.tables.len() >= TABLES_MAX {
                        return Err(Error::LimitExceeded(format!(
                            "a chain holds at most {TABLES_MAX} tables"
                        )));
                    }
                    working.tables.insert(
                        definition.name.clone(),
                        Arc::new(Table::new(definition, scope.actor)),
                    );
                }
                0
            }
            WritePlan::DropTable { names, if_exists } => {
                scope.gas.charge(GAS_PER_DDL)?;
                for name in names {
                    match working.tables.get(&name) {
                        Some(table) => {
                            scope.require_owner(table, "DROP")?;
                            working.tables.remove(&name);
                        }
                        None if if_exists => {}
                        None => return Err(Error::UndefinedTable(name)),
                    }
                }
                0
            }
            WritePlan::Grant {
                grant,
                privileges,
                tables,
                grantees,
            } => {
                for name in tables {
                    let table = working
                        .tables
                        .get_mut(&name)
                        .ok_or_else(|| Error::UndefinedTable(name.clone()))?;
                    scope.require_owner(table, if grant { "GRANT" } else { "REVOKE" })?;
                    let table = Arc::make_mut(table);
                    for grantee in &grantees {
                        table.change_grant(*grantee, privileges, grant);
                    }
                }
                0
            }
            WritePlan::Insert(plan) => self.insert(working, scope, plan).await?,
            WritePlan::Update(plan) => self.update(working, scope, plan).await?,
            WritePlan::Delete(plan) => self.delete(working, scope, plan).await?,
        };
        Ok(rows)
    }

    pub(crate) fn transaction_session(
        &self,
        state: &State,
        scope: &TransactionScope<'_>,
        extras: Extras,
    ) -> Result<SessionState> {
        let catalog = state.catalog(extras);
        let mut session = self
            .templates
            .transaction_session(scope.block.timestamp_ms, catalog);
        register_chain_functions(
            &mut session,
            &ChainContext {
                caller: scope.caller.to_hex(),
                block_height: scope.block.height,
                block_time_ms: scope.block.timestamp_ms,
                transaction_hash: scope.transaction.to_hex(),
            },
        )?;
        Ok(session)
    }

    /// Runs a query inside a transaction, metered: every operator's rows cost gas, and each row
    /// the query yields costs `gas_per_row` more (the rows a write will write), paid as they
    /// stream, so a statement that cannot afford its rows stops there.
    pub(crate) async fn run_query(
        &self,
        session: &SessionState,
        scope: &TransactionScope<'_>,
        statement: Statement,
        gas_per_row: u64,
    ) -> Result<Vec<RecordBatch>> {
        let plan = session
            .statement_to_plan(DFStatement::Statement(Box::new(statement)))
            .await?;
        read_only_options().verify_plan(&plan)?;
        let plan = bind(plan, &scope.params)?;
        let physical = meter_plan(session.create_physical_plan(&plan).await?, &scope.gas)?;
        let mut stream = execute_stream(physical, session.task_ctx())?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            scope
                .gas
                .charge((batch.num_rows() as u64).saturating_mul(gas_per_row))?;
            batches.push(batch);
        }
        Ok(batches)
    }

    async fn insert(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        plan: InsertPlan,
    ) -> Result<usize> {
        let table = working
            .table(&plan.table)
            .cloned()
            .ok_or_else(|| Error::UndefinedTable(plan.table.clone()))?;
        scope.require(
            &table,
            Privileges {
                insert: true,
                ..Privileges::default()
            },
        )?;
        let definition = table.definition().clone();
        let targets: Vec<usize> = match &plan.columns {
            None => (0..definition.columns.len()).collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    definition
                        .column_index(name)
                        .ok_or_else(|| Error::UndefinedColumn {
                            table: definition.name.clone(),
                            column: name.clone(),
                        })
                })
                .collect::<Result<_>>()?,
        };
        let session = self.transaction_session(working, scope, Extras::default())?;
        let (source, rows) = match plan.source {
            Some(query) => {
                let batches = self
                    .run_query(&session, scope, Statement::Query(query), GAS_PER_ROW_WRITTEN)
                    .await?;
                let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
                let source = match batches.first() {
                    Some(first) => concat_batches(&first.schema(), &batches)?,
                    None => RecordBatch::new_empty(Arc::new(Schema::empty())),
                };
                if rows > 0 && source.num_columns() != targets.len() {
                    return Err(Error::Invalid(format!(
                        "INSERT has {} expressions but {} target columns",
                        source.num_columns(),
                        targets.len()
                    )));
                }
                (source, rows)
            }
            None => {
                if plan.columns.is_some() {
                    return Err(Error::Invalid("DEFAULT VALUES takes no column list".into()));
                }
                let empty = RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                (empty, 1)
            }
        };
        if rows == 0 {
            return Ok(0);
        }
        let source_columns: Vec<Option<ArrayRef>> = if source.num_columns() == 0 {
            vec![None; definition.columns.len()]
        } else {
            let mut columns = vec![None; definition.columns.len()];
            for (position, &target) in targets.iter().enumerate() {
                columns[target] = Some(source.column(position).clone());
            }
            columns
        };
        let mut columns = Vec::with_capacity(definition.columns.len() + 1);
        for (i, column) in definition.columns.iter().enumerate() {
            let values = match &source_columns[i] {
                Some(values) => values.clone(),
                None => match &column.default {
                    Some(default) => self.default_value(&session, scope, default, rows).await?,
                    None => new_null_array(&column.column_type.data_type, rows),
                },
            };
            columns.push(cast_column(&definition, i, &values)?);
        }
        check_constraints(&definition, &columns)?;
        let mut table = table;
        let table_mut = Arc::make_mut(&mut table);
        if definition.has_hidden_row_id() {
            columns.push(table_mut.allocate_row_ids(rows));
        }
        let batch = RecordBatch::try_new(table_mut.storage_schema().clone(), columns)?;
        let Some(conflict) = plan.on_conflict else {
            table_mut.insert(batch)?;
            working.tables.insert(plan.table, table);
            return Ok(rows);
        };
        if let Some(target) = &conflict.target {
            let key: Vec<&str> = definition
                .primary_key
                .iter()
                .map(|&k| definition.columns[k].name.as_str())
                .collect();
            let mut named: Vec<&str> = target.iter().map(String::as_str).collect();
            named.sort_unstable();
            let mut sorted_key = key.clone();
            sorted_key.sort_unstable();
            if named != sorted_key {
                return Err(Error::Invalid(format!(
                    "there is no unique constraint matching the ON CONFLICT columns ({}); the primary key of {} is ({})",
                    target.join(", "),
                    definition.name,
                    key.join(", ")
                )));
            }
        }
        let update_query = conflict
            .update
            .as_ref()
            .map(|u| u.row_query(&definition))
            .transpose()?;
        // Rows whose key is new are inserted; the others are skipped (DO NOTHING) or become
        // updates of the existing rows, with the proposed row visible as `excluded`.
        let (fresh, conflicting) = table_mut.split_conflicts(&batch, update_query.is_some())?;
        let mut changed = table_mut.insert(fresh)?;
        if let (Some(sql), true) = (update_query, conflicting.num_rows() > 0) {
            let user_columns: Vec<usize> = (0..definition.columns.len()).collect();
            let excluded = conflicting.project(&user_columns)?;
            // The update joins the existing rows with `excluded` on the key: only the rows the
            // index finds for these keys take part, so the cost (and gas) does not grow with the
            // table.
            let existing = table.rows_with_keys_of(&conflicting)?;
            let extras = Extras {
                write_target: Some(table.clone()),
                excluded: Some((excluded.schema(), vec![excluded])),
                target_rows: Some((existing.schema(), vec![existing])),
            };
            let (batch, locations) = self.target_rows(working, scope, extras, &sql).await?;
            changed += replace_rows(&mut table, batch, &locations)?;
        }
        working.tables.insert(plan.table, table);
        Ok(changed)
    }

    async fn default_value(
        &self,
        session: &SessionState,
        scope: &TransactionScope<'_>,
        default: &str,
        rows: usize,
    ) -> Result<ArrayRef> {
        let statement = chainql::sql::parse_statement(&format!("SELECT {default}"))?;
        let batches = self.run_query(session, scope, statement, 0).await?;
        let value = match batches.iter().find(|b| b.num_rows() > 0) {
            Some(batch) => ScalarValue::try_from_array(batch.column(0), 0)?,
            None => ScalarValue::Null,
        };
        Ok(value.to_array_of_size(rows)?)
    }

    /// Runs a row query of an `UPDATE` or `DELETE` and returns its rows and the locations they
    /// name.
    pub(crate) async fn target_rows(
        &self,
        working: &State,
        scope: &TransactionScope<'_>,
        extras: Extras,
        sql: &str,
    ) -> Result<(Option<RecordBatch>, Vec<RowLocation>)> {
        let statement = chainql::sql::parse_statement(sql)?;
        let session = self.transaction_session(working, scope, extras)?;
        let batches = self
            .run_query(&session, scope, statement, GAS_PER_ROW_WRITTEN)
            .await?;
        let Some(first) = batches.first() else {
            return Ok((None, Vec::new()));
        };
        let batch = concat_batches(&first.schema(), &batches)?;
        let positions = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| Error::Internal("the row position column is not UInt64".into()))?;
        let locations = positions
            .values()
            .iter()
            .map(|p| RowLocation::unpack(*p))
            .collect();
        Ok((Some(batch), locations))
    }

    async fn update(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        plan: UpdatePlan,
    ) -> Result<usize> {
        let table = working
            .table(&plan.table)
            .cloned()
            .ok_or_else(|| Error::UndefinedTable(plan.table.clone()))?;
        scope.require(
            &table,
            Privileges {
                update: true,
                ..Privileges::default()
            },
        )?;
        let definition = table.definition().clone();
        let sql = plan.row_query(&definition)?;
        let extras = Extras {
            write_target: Some(table.clone()),
            excluded: None,
            target_rows: None,
        };
        let (batch, locations) = self.target_rows(working, scope, extras, &sql).await?;
        let mut table = table;
        let rows = replace_rows(&mut table, batch, &locations)?;
        working.tables.insert(plan.table, table);
        Ok(rows)
    }

    async fn delete(
        &self,
        working: &mut State,
        scope: &TransactionScope<'_>,
        plan: DeletePlan,
    ) -> Result<usize> {
        let table = working
            .table(&plan.table)
            .cloned()
            .ok_or_else(|| Error::UndefinedTable(plan.table.clone()))?;
        scope.require(
            &table,
            Privileges {
                delete: true,
                ..Privileges::default()
            },
        )?;
        let (_, mut locations) = self
            .target_rows(
                working,
                scope,
                Extras {
                    write_target: Some(table.clone()),
                    excluded: None,
                    target_rows: None,
                },
                &plan.row_query(),
            )
            .await?;
        // `USING` may match a row more than once; it is deleted once.
        locations.sort_unstable();
        locations.dedup();
        if locations.is_empty() {
            return Ok(0);
        }
        let mut table = table;
        let deleted = Arc::make_mut(&mut table).delete(&locations)?;
        working.tables.insert(plan.table, table);
        Ok(deleted)
    }

    /// Answers a read-only query on `state`. Writes are refused: they travel as transactions.
    pub async fn query(&self, state: &State, sql: &str) -> Result<QueryResult> {
        if let Some(height) = crate::explain::explain_block_height(sql)? {
            return self.explain_block(state, height).await;
        }
        self.read(state, sql).await
    }

    /// The DataFusion session queries on `state` run in.
    pub(crate) fn read_session(&self, state: &State) -> Result<SessionState> {
        let mut session = self.templates.query_session(state.catalog(Extras::default()));
        crate::pg_catalog::register(
            &mut session,
            &Arc::new(crate::pg_catalog::PgCatalog::new(&state.tables)),
        )?;
        register_chain_functions(
            &mut session,
            &ChainContext {
                caller: Address([0; 20]).to_hex(),
                block_height: state.height(),
                block_time_ms: state.timestamp_ms(),
                transaction_hash: Hash::ZERO.to_hex(),
            },
        )?;
        Ok(session)
    }

    /// A read-only query, a `VIEW` call or `EXPLAIN CALL`.
    pub(crate) async fn read(&self, state: &State, sql: &str) -> Result<QueryResult> {
        let session = self.read_session(state)?;
        let mut statement = session.sql_to_statement(sql, &datafusion::config::Dialect::PostgreSQL)?;
        if let DFStatement::Statement(inner) = &mut statement {
            crate::pg_catalog::rewrite(inner);
        }
        if let DFStatement::Explain(explain) = &statement
            && let DFStatement::Statement(inner) = explain.statement.as_ref()
            && let Statement::Call(function) = inner.as_ref()
        {
            return crate::explain::explain_call(state, function);
        }
        if let DFStatement::Statement(inner) = &statement {
            if let Statement::Call(function) = inner.as_ref() {
                return self.call_view(state, function, VIEW_GAS_LIMIT).await;
            }

            let kind = chainql::sql::classify(inner);
            if kind.is_write() {
                return Err(Error::WriteInQuery(kind.command_tag().to_string()));
            }
        }
        let plan: LogicalPlan = session.statement_to_plan(statement).await?;
        read_only_options().verify_plan(&plan)?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let physical = session.create_physical_plan(&plan).await?;
        let mut stream = execute_stream(physical, session.task_ctx())?;
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            if rows > self.query_limits.rows_max {
                return Err(Error::LimitExceeded(format!(
                    "the query returns more than {} rows; add a LIMIT or narrow it",
                    self.query_limits.rows_max
                )));
            }
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
        }
        let schema = batches.first().map(|b| b.schema()).unwrap_or(schema);
        Ok(QueryResult { schema, batches })
    }
}

/// Applies the answer of an update row query (each row: its position, then every column's new
/// value): replaces those rows, checking the table's constraints. Returns the rows replaced.
fn replace_rows(
    table: &mut Arc<Table>,
    batch: Option<RecordBatch>,
    locations: &[RowLocation],
) -> Result<usize> {
    let Some(batch) = batch else {
        return Ok(0);
    };
    if locations.is_empty() {
        return Ok(0);
    }
    let definition = table.definition().clone();
    let mut columns = Vec::with_capacity(definition.columns.len() + 1);
    for i in 0..definition.columns.len() {
        columns.push(cast_column(&definition, i, batch.column(i + 1))?);
    }
    check_constraints(&definition, &columns)?;
    let table_mut = Arc::make_mut(table);
    if definition.has_hidden_row_id() {
        columns.push(table_mut.row_ids_at(locations)?);
    }
    let new_rows = RecordBatch::try_new(table_mut.storage_schema().clone(), columns)?;
    table_mut.delete(locations)?;
    table_mut.insert(new_rows)?;
    Ok(locations.len())
}

/// Binds a plan's placeholders to `params` (a contract's parameters and `LET` values).
pub(crate) fn bind(plan: LogicalPlan, params: &[ScalarValue]) -> Result<LogicalPlan> {
    if params.is_empty() {
        return Ok(plan);
    }
    Ok(plan.with_param_values(params.to_vec())?)
}

pub(crate) fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Casts `values` to the type of column `i`, refusing values that do not fit (no silent
/// truncation or overflow).
pub(crate) fn cast_column(definition: &TableDefinition, i: usize, values: &ArrayRef) -> Result<ArrayRef> {
    let column = &definition.columns[i];
    let target = &column.column_type.data_type;
    if values.data_type() == target {
        return Ok(values.clone());
    }
    let options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    cast_with_options(values, target, &options).map_err(|e| Error::InvalidValue {
        column: column.name.clone(),
        column_type: column.column_type.sql_name(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key sets and parsed statements of a block do not depend on how many threads derive
    /// them.
    #[tokio::test]
    async fn analysis_is_the_same_on_any_number_of_threads() {
        let owner = Address([1; 20]);
        let genesis = State::genesis(Hash::ZERO, 0, &[(owner, 1_000)]).expect("genesis");
        let executor = Executor::new(1, QueryLimits::default()).expect("executor");
        let block = |state: &State| BlockContext {
            height: state.height() + 1,
            hash: Hash::ZERO,
            parent_hash: state.block_hash(),
            timestamp_ms: 1,
            transactions_root: Hash::ZERO,
            state_root: state.root(),
            proposer: Address([9; 20]),
            offences: Vec::new(),
        };
        let setup: Vec<ExecutableTransaction> = [
            "CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
            "CREATE CONTRACT pay(to_addr TEXT, amount BIGINT) AS $$
               UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
               INSERT INTO tokens VALUES (to_addr, amount)
                 ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
             $$",
        ]
        .iter()
        .enumerate()
        .map(|(nonce, sql)| ExecutableTransaction {
            hash: Hash::ZERO,
            sender: owner,
            sender_key: None,
            nonce: nonce as u64,
            gas_limit: 10_000_000,
            statements: vec![sql.to_string()],
        })
        .collect();
        let (state, receipts) = executor
            .execute_block(&genesis, &block(&genesis), &setup)
            .await
            .expect("setup");
        assert!(receipts.iter().all(|r| r.error.is_empty()), "{receipts:?}");
        let transactions: Vec<ExecutableTransaction> = (0..1_000u64)
            .map(|i| ExecutableTransaction {
                hash: Hash::ZERO,
                sender: Address([(i % 200) as u8; 20]),
                sender_key: None,
                nonce: i / 200,
                gas_limit: 1_000_000,
                statements: match i % 7 {
                    0 => vec!["UPDATE tokens SET balance = 0".into()],
                    1 => vec![
                        format!("INSERT INTO tokens VALUES ('x{i}', 1)"),
                        "SELECT 1".into(),
                    ],
                    _ => vec![format!("CALL pay('0x{:040x}', {i})", i % 50)],
                },
            })
            .collect();
        let context = block(&state);
        let one = analyze(&state, &context, &transactions, 1);
        assert_eq!(one.len(), transactions.len());
        assert!(
            one.iter().any(|(sets, _)| sets.is_barrier()),
            "the proposer's transactions"
        );
        for threads in [2, 3, 8] {
            let many = analyze(&state, &context, &transactions, threads);
            assert_eq!(many, one, "{threads} threads");
        }
    }
}
