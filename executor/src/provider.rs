//! DataFusion catalogs and table providers over one state version.
//!
//! A catalog is built per statement from a state version, so every table a statement names is
//! read at the same version, and a state changed afterwards is never seen. Providers hand
//! DataFusion the version's Arrow chunks without copying them (cloning a `RecordBatch` clones
//! `Arc`s).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chainql_planner::{EXCLUDED_TABLE, SYSTEM_SCHEMA, USER_SCHEMA, WRITE_TARGET_TABLE};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown, expr::BinaryExpr};
use datafusion::physical_plan::ExecutionPlan;

use crate::contract::Contract;
use crate::encode::encode_key;
use crate::gas::StoredRowsExec;
use crate::system::SystemTables;
use crate::table::{RowLocation, Table};

/// A scan of stored rows: its rows are charged as reads when a transaction's plan is metered.
fn stored_rows_exec(
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
    projection: Option<&Vec<usize>>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    let plan: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[batches], schema, projection.cloned())?;
    Ok(Arc::new(StoredRowsExec::new(plan)))
}

/// A user table at one version. As the target of an `UPDATE` or `DELETE` it also exposes each
/// row's position (the last column, [`chainql_planner::ROW_POSITION_COLUMN`]).
#[derive(Debug)]
pub struct UserTableProvider {
    table: Arc<Table>,
    schema: SchemaRef,
    with_positions: bool,
}

impl UserTableProvider {
    pub fn new(table: Arc<Table>, with_positions: bool) -> Self {
        let schema = if with_positions {
            table.schema_with_positions()
        } else {
            table.definition().schema()
        };
        UserTableProvider {
            table,
            schema,
            with_positions,
        }
    }
}

/// For a table with a single-column primary key `k`, the literal of a filter `k = literal`.
fn key_literal<'a>(table: &Table, filter: &'a Expr) -> Option<&'a ScalarValue> {
    let definition = table.definition();
    let [key] = definition.primary_key.as_slice() else {
        return None;
    };
    let key_name = &definition.columns[*key].name;
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = filter
    else {
        return None;
    };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c))
            if c.name == *key_name && !v.is_null() =>
        {
            Some(v)
        }
        _ => None,
    }
}

/// Filters a scan answers exactly: equality on the single-column primary key.
fn key_pushdown(table: &Table, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| match key_literal(table, f) {
            Some(_) => TableProviderFilterPushDown::Exact,
            None => TableProviderFilterPushDown::Unsupported,
        })
        .collect()
}

/// Resolves pushed-down key filters through the primary-key index: `None` when there are none
/// (scan everything), otherwise the one row they all name, if it exists.
fn key_lookup(table: &Table, filters: &[Expr]) -> datafusion::error::Result<Option<Option<RowLocation>>> {
    let literals: Vec<&ScalarValue> = filters.iter().filter_map(|f| key_literal(table, f)).collect();
    if literals.is_empty() {
        return Ok(None);
    }
    let definition = table.definition();
    let key_type = &definition.columns[definition.primary_key[0]]
        .column_type
        .data_type;
    let schema = Arc::new(Schema::new(vec![Field::new("k", key_type.clone(), false)]));
    let mut keys = Vec::with_capacity(literals.len());
    for literal in literals {
        let batch = RecordBatch::try_new(schema.clone(), vec![literal.cast_to(key_type)?.to_array()?])?;
        keys.push(encode_key(&batch, &[0], 0).map_err(DataFusionError::from)?);
    }
    if keys.windows(2).any(|w| w[0] != w[1]) {
        return Ok(Some(None));
    }
    Ok(Some(table.locate(&keys[0])))
}

#[async_trait]
impl TableProvider for UserTableProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(key_pushdown(&self.table, filters))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let table = &self.table;
        let batches = match key_lookup(table, filters)? {
            None if self.with_positions => table.scan_with_positions().map_err(DataFusionError::from)?,
            None => table.scan().map_err(DataFusionError::from)?,
            Some(None) => Vec::new(),
            Some(Some(location)) => {
                vec![
                    table
                        .user_row(location, self.with_positions)
                        .map_err(DataFusionError::from)?,
                ]
            }
        };
        stored_rows_exec(batches, self.schema.clone(), projection)
    }
}

/// Rows given up front: a system table built from a state version, an upsert's existing rows
/// (both stored: reading them costs read gas), or an upsert's proposed rows (not stored).
#[derive(Debug)]
pub struct BatchesProvider {
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) stored: bool,
}

#[async_trait]
impl TableProvider for BatchesProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if self.stored {
            return stored_rows_exec(self.batches.clone(), self.schema.clone(), projection);
        }
        let plan: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
            std::slice::from_ref(&self.batches),
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(plan)
    }
}

/// Relations a write statement adds to the catalog for its own row query.
#[derive(Debug, Default)]
pub struct Extras {
    /// The table being updated or deleted from, with row positions, as `__chainql_target`.
    pub write_target: Option<Arc<Table>>,
    /// An upsert's conflicting proposed rows, as `excluded`.
    pub excluded: Option<(SchemaRef, Vec<RecordBatch>)>,
    /// Instead of the whole `write_target`, only these of its rows (with positions): an
    /// upsert's existing rows, looked up by key, so its update never scans the table.
    pub target_rows: Option<(SchemaRef, Vec<RecordBatch>)>,
}

/// The `public` schema: user tables at one version, and the relations of a write's row query.
#[derive(Debug)]
struct UserSchema {
    tables: BTreeMap<String, Arc<Table>>,
    extras: Extras,
}

#[async_trait]
impl SchemaProvider for UserSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        if name == EXCLUDED_TABLE
            && let Some((schema, batches)) = &self.extras.excluded
        {
            return Ok(Some(Arc::new(BatchesProvider {
                schema: schema.clone(),
                batches: batches.clone(),
                stored: false,
            })));
        }
        if name == WRITE_TARGET_TABLE
            && let Some((schema, batches)) = &self.extras.target_rows
        {
            return Ok(Some(Arc::new(BatchesProvider {
                schema: schema.clone(),
                batches: batches.clone(),
                stored: true,
            })));
        }
        if name == WRITE_TARGET_TABLE {
            return Ok(self.extras.write_target.as_ref().map(|table| {
                Arc::new(UserTableProvider::new(table.clone(), true)) as Arc<dyn TableProvider>
            }));
        }
        Ok(self
            .tables
            .get(name)
            .map(|table| Arc::new(UserTableProvider::new(table.clone(), false)) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// The `chain` schema: system tables.
#[derive(Debug)]
struct SystemSchema {
    system: SystemTables,
    /// The user tables of the same version, which `chain.tables` and `chain.columns` describe.
    tables: BTreeMap<String, Arc<Table>>,
    /// The contracts of the same version, which `chain.contracts` describes.
    contracts: BTreeMap<String, Arc<Contract>>,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SystemTables::NAMES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let Some((schema, batches)) = self.system.get(name, &self.tables, &self.contracts)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(BatchesProvider {
            schema,
            batches,
            stored: true,
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        SystemTables::NAMES.contains(&name)
    }
}

/// The single catalog, `datafusion`, with the `public` and `chain` schemas, and `pg_catalog` for
/// PostgreSQL clients (built when a statement names it).
#[derive(Debug)]
struct Catalog {
    public: Arc<UserSchema>,
    chain: Arc<SystemSchema>,
}

impl CatalogProvider for Catalog {
    fn schema_names(&self) -> Vec<String> {
        vec![
            SYSTEM_SCHEMA.to_string(),
            crate::pg_catalog::PG_CATALOG.to_string(),
            USER_SCHEMA.to_string(),
        ]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match name {
            USER_SCHEMA => Some(self.public.clone()),
            SYSTEM_SCHEMA => Some(self.chain.clone()),
            crate::pg_catalog::PG_CATALOG => Some(Arc::new(crate::pg_catalog::PgCatalogSchema::new(
                Arc::new(crate::pg_catalog::PgCatalog::new(&self.public.tables)),
            ))),
            _ => None,
        }
    }
}

/// The catalog list DataFusion sessions are given.
#[derive(Debug)]
pub struct CatalogList {
    catalog: Arc<Catalog>,
}

impl CatalogList {
    pub fn new(
        tables: BTreeMap<String, Arc<Table>>,
        contracts: BTreeMap<String, Arc<Contract>>,
        system: SystemTables,
        extras: Extras,
    ) -> Arc<CatalogList> {
        Arc::new(CatalogList {
            catalog: Arc::new(Catalog {
                chain: Arc::new(SystemSchema {
                    system,
                    tables: tables.clone(),
                    contracts,
                }),
                public: Arc::new(UserSchema { tables, extras }),
            }),
        })
    }
}

impl CatalogProviderList for CatalogList {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        vec!["datafusion".to_string()]
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        (name == "datafusion").then(|| self.catalog.clone() as Arc<dyn CatalogProvider>)
    }
}
