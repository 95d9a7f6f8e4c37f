//! A read-only `pg_catalog` over one state version, and the functions and syntax PostgreSQL
//! clients use to read it, so that psql's `\dt`, `\d` and `\d NAME` and drivers' introspection
//! work against a node.
//!
//! - **Relations**: `pg_namespace` (`pg_catalog`, `public`, `chain`, `information_schema`),
//!   `pg_class` (user tables, their primary-key indexes, and the `chain` system tables as views),
//!   `pg_attribute`, `pg_type` (the built-in types ChainQL uses), `pg_index`, `pg_constraint`,
//!   `pg_database`, `pg_roles` (one role per table owner) and `pg_am` (`btree`, `heap`). The
//!   catalogs of features ChainQL does not have (policies, publications, inheritance, extended
//!   statistics, defaults' expression trees, collations) exist and are empty.
//! - **Object ids** are assigned in name order per version (tables from 16384, each table's
//!   primary-key index right after it), so they are stable while the schema is.
//! - **Functions**: `pg_get_userbyid`, `pg_table_is_visible`, `format_type`, `pg_get_indexdef`,
//!   `pg_get_constraintdef`, `pg_get_expr`, `version`, `current_schema`, `current_database`,
//!   and the small helpers psql calls; see [`register`].
//! - **Syntax** ([`rewrite`]): `pg_catalog.`-qualified function and type names,
//!   `OPERATOR(pg_catalog.~)`, `COLLATE pg_catalog.default`, and casts to `regclass`, `regtype`
//!   and `regnamespace`, which DataFusion does not read, become their plain equivalents.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Expr, ObjectName, ObjectNamePart, visit_expressions_mut,
};

use crate::provider::BatchesProvider;
use crate::table::Table;

/// The schema's name.
pub const PG_CATALOG: &str = "pg_catalog";
/// The PostgreSQL version ChainQL reports.
pub const POSTGRES_VERSION: &str = "15.0";

const NAMESPACE_PG_CATALOG: i64 = 11;
const NAMESPACE_PUBLIC: i64 = 2200;
const NAMESPACE_INFORMATION_SCHEMA: i64 = 13_000;
const NAMESPACE_CHAIN: i64 = 16_000;
const FIRST_USER_OID: i64 = 16_384;
const AM_HEAP: i64 = 2;
const AM_BTREE: i64 = 403;
const DATABASE_OID: i64 = 16_001;

/// A built-in PostgreSQL type: oid, name, length (-1: variable), and how `format_type` writes it.
struct PgType {
    oid: i64,
    name: &'static str,
    length: i16,
    sql_name: &'static str,
}

const TYPES: &[PgType] = &[
    PgType {
        oid: 16,
        name: "bool",
        length: 1,
        sql_name: "boolean",
    },
    PgType {
        oid: 17,
        name: "bytea",
        length: -1,
        sql_name: "bytea",
    },
    PgType {
        oid: 18,
        name: "char",
        length: 1,
        sql_name: "\"char\"",
    },
    PgType {
        oid: 19,
        name: "name",
        length: 64,
        sql_name: "name",
    },
    PgType {
        oid: 20,
        name: "int8",
        length: 8,
        sql_name: "bigint",
    },
    PgType {
        oid: 21,
        name: "int2",
        length: 2,
        sql_name: "smallint",
    },
    PgType {
        oid: 23,
        name: "int4",
        length: 4,
        sql_name: "integer",
    },
    PgType {
        oid: 25,
        name: "text",
        length: -1,
        sql_name: "text",
    },
    PgType {
        oid: 26,
        name: "oid",
        length: 4,
        sql_name: "oid",
    },
    PgType {
        oid: 700,
        name: "float4",
        length: 4,
        sql_name: "real",
    },
    PgType {
        oid: 701,
        name: "float8",
        length: 8,
        sql_name: "double precision",
    },
    PgType {
        oid: 1043,
        name: "varchar",
        length: -1,
        sql_name: "character varying",
    },
    PgType {
        oid: 1082,
        name: "date",
        length: 4,
        sql_name: "date",
    },
    PgType {
        oid: 1083,
        name: "time",
        length: 8,
        sql_name: "time without time zone",
    },
    PgType {
        oid: 1114,
        name: "timestamp",
        length: 8,
        sql_name: "timestamp without time zone",
    },
    PgType {
        oid: 1184,
        name: "timestamptz",
        length: 8,
        sql_name: "timestamp with time zone",
    },
    PgType {
        oid: 1700,
        name: "numeric",
        length: -1,
        sql_name: "numeric",
    },
];

/// The PostgreSQL type oid and type modifier of a ChainQL column.
fn column_type(column: &chainql_planner::ColumnDefinition) -> (i64, i32) {
    let oid = match &column.column_type.data_type {
        DataType::Boolean => 16,
        DataType::Binary | DataType::LargeBinary => 17,
        DataType::Int8 | DataType::Int16 => 21,
        DataType::Int32 => 23,
        DataType::Int64 => 20,
        DataType::Float32 => 700,
        DataType::Float64 => 701,
        DataType::Decimal128(precision, scale) => {
            return (1700, ((*precision as i32) << 16 | *scale as i32) + 4);
        }
        DataType::Date32 => 1082,
        DataType::Time64(_) | DataType::Time32(_) => 1083,
        DataType::Timestamp(_, None) => 1114,
        DataType::Timestamp(_, Some(_)) => 1184,
        _ => match column.column_type.max_chars {
            Some(max) => return (1043, max as i32 + 4),
            None => 25,
        },
    };
    (oid, -1)
}

/// What `format_type(oid, typmod)` writes.
fn format_type(oid: i64, typmod: i32) -> Option<String> {
    let known = TYPES.iter().find(|t| t.oid == oid)?;
    Some(match (oid, typmod) {
        (1043, m) if m >= 4 => format!("character varying({})", m - 4),
        (1700, m) if m >= 4 => format!("numeric({},{})", (m - 4) >> 16, (m - 4) & 0xffff),
        _ => known.sql_name.to_string(),
    })
}

/// One relation of the catalog, with its rows.
struct Relation {
    columns: Vec<(&'static str, DataType)>,
    rows: Vec<Vec<ScalarValue>>,
}

impl Relation {
    fn new(columns: &[(&'static str, DataType)]) -> Relation {
        Relation {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(name, data_type)| Field::new(*name, data_type.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn batch(&self) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = self.schema();
        if self.rows.is_empty() {
            return Ok((schema, Vec::new()));
        }
        let arrays = (0..self.columns.len())
            .map(|i| {
                let values = self.rows.iter().map(|row| row[i].clone());
                let array: ArrayRef = ScalarValue::iter_to_array(values)?;
                Ok(if array.data_type() == schema.field(i).data_type() {
                    array
                } else {
                    datafusion::arrow::compute::cast(&array, schema.field(i).data_type())?
                })
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok((Arc::clone(&schema), vec![RecordBatch::try_new(schema, arrays)?]))
    }
}

fn text(value: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(value.into()))
}

fn int(value: i64) -> ScalarValue {
    ScalarValue::Int64(Some(value))
}

fn small(value: i16) -> ScalarValue {
    ScalarValue::Int16(Some(value))
}

fn boolean(value: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(value))
}

const NULL_TEXT: ScalarValue = ScalarValue::Utf8(None);

/// The catalog of one state version.
#[derive(Debug)]
pub struct PgCatalog {
    tables: Vec<(i64, Arc<Table>)>,
    system_tables: Vec<(i64, &'static str)>,
}

impl PgCatalog {
    pub fn new(tables: &BTreeMap<String, Arc<Table>>) -> PgCatalog {
        let mut next = FIRST_USER_OID;
        let tables = tables
            .values()
            .map(|table| {
                let oid = next;
                // The table, then its primary-key index.
                next += 2;
                (oid, Arc::clone(table))
            })
            .collect();
        let system_tables = crate::system::SystemTables::NAMES
            .iter()
            .map(|name| {
                let oid = next;
                next += 1;
                (oid, *name)
            })
            .collect();
        PgCatalog {
            tables,
            system_tables,
        }
    }

    const NAMES: [&'static str; 19] = [
        "pg_am",
        "pg_attrdef",
        "pg_attribute",
        "pg_class",
        "pg_collation",
        "pg_constraint",
        "pg_database",
        "pg_description",
        "pg_index",
        "pg_inherits",
        "pg_namespace",
        "pg_policy",
        "pg_publication",
        "pg_publication_namespace",
        "pg_publication_rel",
        "pg_roles",
        "pg_statistic_ext",
        "pg_tables",
        "pg_type",
    ];

    fn relation(&self, name: &str) -> Option<Relation> {
        use DataType::{Boolean, Float64, Int16, Int32, Int64, Utf8};
        Some(match name {
            "pg_namespace" => {
                let mut relation = Relation::new(&[("oid", Int64), ("nspname", Utf8), ("nspowner", Int64)]);
                for (oid, name) in [
                    (NAMESPACE_PG_CATALOG, "pg_catalog"),
                    (NAMESPACE_PUBLIC, "public"),
                    (NAMESPACE_INFORMATION_SCHEMA, "information_schema"),
                    (NAMESPACE_CHAIN, "chain"),
                ] {
                    relation.rows.push(vec![int(oid), text(name), int(10)]);
                }
                relation
            }
            "pg_class" => {
                let mut relation = Relation::new(&[
                    ("oid", Int64),
                    ("relname", Utf8),
                    ("relnamespace", Int64),
                    ("relkind", Utf8),
                    ("relowner", Utf8),
                    ("relam", Int64),
                    ("relchecks", Int16),
                    ("relhasindex", Boolean),
                    ("relhasrules", Boolean),
                    ("relhastriggers", Boolean),
                    ("relrowsecurity", Boolean),
                    ("relforcerowsecurity", Boolean),
                    ("relispartition", Boolean),
                    ("reltablespace", Int64),
                    ("reloftype", Int64),
                    ("relpersistence", Utf8),
                    ("relreplident", Utf8),
                    ("reltoastrelid", Int64),
                    ("relpartbound", Utf8),
                    ("reltuples", Float64),
                    ("relnatts", Int16),
                    ("relacl", Utf8),
                    ("reloptions", Utf8),
                ]);
                let row = |oid,
                           name: &str,
                           namespace,
                           kind: &str,
                           owner: String,
                           am,
                           has_index,
                           tuples: f64,
                           columns: usize| {
                    vec![
                        int(oid),
                        text(name),
                        int(namespace),
                        text(kind),
                        text(owner),
                        int(am),
                        small(0),
                        boolean(has_index),
                        boolean(false),
                        boolean(false),
                        boolean(false),
                        boolean(false),
                        boolean(false),
                        int(0),
                        int(0),
                        text("p"),
                        text("d"),
                        int(0),
                        NULL_TEXT,
                        ScalarValue::Float64(Some(tuples)),
                        small(columns as i16),
                        NULL_TEXT,
                        NULL_TEXT,
                    ]
                };
                for (oid, table) in &self.tables {
                    let definition = table.definition();
                    let keyed = !definition.primary_key.is_empty();
                    let owner = table.owner().to_hex();
                    relation.rows.push(row(
                        *oid,
                        &definition.name,
                        NAMESPACE_PUBLIC,
                        "r",
                        owner.clone(),
                        AM_HEAP,
                        keyed,
                        table.row_count() as f64,
                        definition.columns.len(),
                    ));
                    if keyed {
                        relation.rows.push(row(
                            oid + 1,
                            &format!("{}_pkey", definition.name),
                            NAMESPACE_PUBLIC,
                            "i",
                            owner,
                            AM_BTREE,
                            false,
                            table.row_count() as f64,
                            definition.primary_key.len(),
                        ));
                    }
                }
                for (oid, name) in &self.system_tables {
                    relation.rows.push(row(
                        *oid,
                        name,
                        NAMESPACE_CHAIN,
                        "v",
                        "chain".to_string(),
                        0,
                        false,
                        -1.0,
                        0,
                    ));
                }
                relation
            }
            "pg_attribute" => {
                let mut relation = Relation::new(&[
                    ("attrelid", Int64),
                    ("attname", Utf8),
                    ("atttypid", Int64),
                    ("atttypmod", Int32),
                    ("attnum", Int16),
                    ("attnotnull", Boolean),
                    ("atthasdef", Boolean),
                    ("attisdropped", Boolean),
                    ("attcollation", Int64),
                    ("attidentity", Utf8),
                    ("attgenerated", Utf8),
                    ("attlen", Int16),
                ]);
                for (oid, table) in &self.tables {
                    for (number, column) in table.definition().columns.iter().enumerate() {
                        let (type_oid, typmod) = column_type(column);
                        let length = TYPES.iter().find(|t| t.oid == type_oid).map_or(-1, |t| t.length);
                        relation.rows.push(vec![
                            int(*oid),
                            text(&column.name),
                            int(type_oid),
                            ScalarValue::Int32(Some(typmod)),
                            small(number as i16 + 1),
                            boolean(!column.nullable),
                            boolean(column.default.is_some()),
                            boolean(false),
                            int(0),
                            text(""),
                            text(""),
                            small(length),
                        ]);
                    }
                }
                relation
            }
            "pg_type" => {
                let mut relation = Relation::new(&[
                    ("oid", Int64),
                    ("typname", Utf8),
                    ("typnamespace", Int64),
                    ("typlen", Int16),
                    ("typtype", Utf8),
                    ("typcollation", Int64),
                    ("typbasetype", Int64),
                    ("typrelid", Int64),
                    ("typelem", Int64),
                    ("typnotnull", Boolean),
                ]);
                for t in TYPES {
                    relation.rows.push(vec![
                        int(t.oid),
                        text(t.name),
                        int(NAMESPACE_PG_CATALOG),
                        small(t.length),
                        text("b"),
                        int(0),
                        int(0),
                        int(0),
                        int(0),
                        boolean(false),
                    ]);
                }
                relation
            }
            "pg_index" => {
                let mut relation = Relation::new(&[
                    ("indexrelid", Int64),
                    ("indrelid", Int64),
                    ("indnatts", Int16),
                    ("indisunique", Boolean),
                    ("indisprimary", Boolean),
                    ("indisexclusion", Boolean),
                    ("indisclustered", Boolean),
                    ("indisvalid", Boolean),
                    ("indisreplident", Boolean),
                    ("indkey", Utf8),
                ]);
                for (oid, table) in &self.tables {
                    let key = &table.definition().primary_key;
                    if key.is_empty() {
                        continue;
                    }
                    let positions: Vec<String> = key.iter().map(|i| (i + 1).to_string()).collect();
                    relation.rows.push(vec![
                        int(oid + 1),
                        int(*oid),
                        small(key.len() as i16),
                        boolean(true),
                        boolean(true),
                        boolean(false),
                        boolean(false),
                        boolean(true),
                        boolean(false),
                        text(positions.join(" ")),
                    ]);
                }
                relation
            }
            "pg_constraint" => {
                let mut relation = Relation::new(&[
                    ("oid", Int64),
                    ("conname", Utf8),
                    ("connamespace", Int64),
                    ("contype", Utf8),
                    ("condeferrable", Boolean),
                    ("condeferred", Boolean),
                    ("conrelid", Int64),
                    ("conindid", Int64),
                ]);
                for (oid, table) in &self.tables {
                    if table.definition().primary_key.is_empty() {
                        continue;
                    }
                    relation.rows.push(vec![
                        // A constraint's oid is its index's, which no relation uses.
                        int(oid + 1),
                        text(format!("{}_pkey", table.definition().name)),
                        int(NAMESPACE_PUBLIC),
                        text("p"),
                        boolean(false),
                        boolean(false),
                        int(*oid),
                        int(oid + 1),
                    ]);
                }
                relation
            }
            "pg_am" => {
                let mut relation = Relation::new(&[("oid", Int64), ("amname", Utf8), ("amtype", Utf8)]);
                relation.rows.push(vec![int(AM_HEAP), text("heap"), text("t")]);
                relation.rows.push(vec![int(AM_BTREE), text("btree"), text("i")]);
                relation
            }
            "pg_database" => {
                let mut relation = Relation::new(&[
                    ("oid", Int64),
                    ("datname", Utf8),
                    ("datdba", Int64),
                    ("encoding", Int32),
                    ("datcollate", Utf8),
                    ("datctype", Utf8),
                    ("datallowconn", Boolean),
                ]);
                relation.rows.push(vec![
                    int(DATABASE_OID),
                    text("chainql"),
                    int(10),
                    ScalarValue::Int32(Some(6)),
                    text("C"),
                    text("C"),
                    boolean(true),
                ]);
                relation
            }
            "pg_roles" => {
                let mut relation = Relation::new(&[
                    ("oid", Int64),
                    ("rolname", Utf8),
                    ("rolsuper", Boolean),
                    ("rolcanlogin", Boolean),
                ]);
                let owners: std::collections::BTreeSet<String> =
                    self.tables.iter().map(|(_, t)| t.owner().to_hex()).collect();
                for (i, owner) in owners.into_iter().enumerate() {
                    relation.rows.push(vec![
                        int(20_000 + i as i64),
                        text(owner),
                        boolean(false),
                        boolean(true),
                    ]);
                }
                relation
            }
            "pg_tables" => {
                let mut relation = Relation::new(&[
                    ("schemaname", Utf8),
                    ("tablename", Utf8),
                    ("tableowner", Utf8),
                    ("hasindexes", Boolean),
                ]);
                for (_, table) in &self.tables {
                    relation.rows.push(vec![
                        text("public"),
                        text(&table.definition().name),
                        text(table.owner().to_hex()),
                        boolean(!table.definition().primary_key.is_empty()),
                    ]);
                }
                relation
            }
            // Features ChainQL does not have: the relations exist, with no rows.
            "pg_attrdef" => Relation::new(&[
                ("oid", Int64),
                ("adrelid", Int64),
                ("adnum", Int16),
                ("adbin", Utf8),
            ]),
            "pg_collation" => Relation::new(&[("oid", Int64), ("collname", Utf8), ("collnamespace", Int64)]),
            "pg_description" => Relation::new(&[
                ("objoid", Int64),
                ("classoid", Int64),
                ("objsubid", Int32),
                ("description", Utf8),
            ]),
            "pg_inherits" => Relation::new(&[
                ("inhrelid", Int64),
                ("inhparent", Int64),
                ("inhseqno", Int32),
                ("inhdetachpending", Boolean),
            ]),
            "pg_policy" => Relation::new(&[
                ("oid", Int64),
                ("polname", Utf8),
                ("polrelid", Int64),
                ("polcmd", Utf8),
                ("polpermissive", Boolean),
                ("polroles", Utf8),
                ("polqual", Utf8),
                ("polwithcheck", Utf8),
            ]),
            "pg_publication" => {
                Relation::new(&[("oid", Int64), ("pubname", Utf8), ("puballtables", Boolean)])
            }
            "pg_publication_namespace" => {
                Relation::new(&[("oid", Int64), ("pnpubid", Int64), ("pnnspid", Int64)])
            }
            "pg_publication_rel" => Relation::new(&[
                ("oid", Int64),
                ("prpubid", Int64),
                ("prrelid", Int64),
                ("prqual", Utf8),
                ("prattrs", Utf8),
            ]),
            "pg_statistic_ext" => Relation::new(&[
                ("oid", Int64),
                ("stxrelid", Int64),
                ("stxname", Utf8),
                ("stxnamespace", Int64),
                ("stxkind", Utf8),
                ("stxstattarget", Int32),
            ]),
            _ => return None,
        })
    }

    /// The table whose primary-key index (and constraint) has `oid`, and its key columns.
    fn primary_key(&self, oid: i64) -> Option<(&str, Vec<&str>)> {
        let (_, table) = self.tables.iter().find(|(table, _)| table + 1 == oid)?;
        let definition = table.definition();
        let columns: Vec<&str> = definition
            .primary_key
            .iter()
            .map(|i| definition.columns[*i].name.as_str())
            .collect();
        (!columns.is_empty()).then_some((definition.name.as_str(), columns))
    }

    /// `pg_get_indexdef` of the primary-key index with `oid`.
    fn index_definition(&self, oid: i64) -> Option<String> {
        let (table, columns) = self.primary_key(oid)?;
        Some(format!(
            "CREATE UNIQUE INDEX {table}_pkey ON public.{table} USING btree ({})",
            columns.join(", ")
        ))
    }

    /// `pg_get_constraintdef` of the primary key whose constraint oid is `oid`.
    fn constraint_definition(&self, oid: i64) -> Option<String> {
        let (_, columns) = self.primary_key(oid)?;
        Some(format!("PRIMARY KEY ({})", columns.join(", ")))
    }

    /// The name of relation `oid`, for `::regclass`.
    fn relation_name(&self, oid: i64) -> Option<String> {
        self.tables
            .iter()
            .find_map(|(table, t)| (*table == oid).then(|| t.definition().name.clone()))
            .or_else(|| {
                self.system_tables
                    .iter()
                    .find_map(|(table, name)| (*table == oid).then(|| format!("chain.{name}")))
            })
    }
}

/// The `pg_catalog` schema.
#[derive(Debug)]
pub struct PgCatalogSchema {
    catalog: Arc<PgCatalog>,
}

impl PgCatalogSchema {
    pub fn new(catalog: Arc<PgCatalog>) -> PgCatalogSchema {
        PgCatalogSchema { catalog }
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        PgCatalog::NAMES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let Some(relation) = self.catalog.relation(name) else {
            return Ok(None);
        };
        let (schema, batches) = relation.batch()?;
        Ok(Some(Arc::new(BatchesProvider {
            schema,
            batches,
            stored: false,
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        PgCatalog::NAMES.contains(&name)
    }
}

/// What a catalog function computes from one row's arguments.
type FunctionBody = Box<dyn Fn(&[ScalarValue]) -> ScalarValue + Send + Sync>;

/// A catalog function evaluated value by value.
struct CatalogFunction {
    name: &'static str,
    returns: DataType,
    signature: Signature,
    body: FunctionBody,
}

impl std::fmt::Debug for CatalogFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogFunction")
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for CatalogFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for CatalogFunction {}

impl std::hash::Hash for CatalogFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|arg| arg.to_array(rows))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut values = Vec::with_capacity(rows);
        for row in 0..rows {
            let arguments = arrays
                .iter()
                .map(|array| ScalarValue::try_from_array(array, row))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            values.push((self.body)(&arguments));
        }
        if values.is_empty() {
            return Ok(ColumnarValue::Array(datafusion::arrow::array::new_empty_array(
                &self.returns,
            )));
        }
        let array = ScalarValue::iter_to_array(values)?;
        Ok(ColumnarValue::Array(if array.data_type() == &self.returns {
            array
        } else {
            datafusion::arrow::compute::cast(&array, &self.returns)?
        }))
    }
}

fn function(
    name: &'static str,
    returns: DataType,
    body: impl Fn(&[ScalarValue]) -> ScalarValue + Send + Sync + 'static,
) -> ScalarUDF {
    let signature = if name_is_nullary(name) {
        Signature::nullary(Volatility::Stable)
    } else {
        Signature::variadic_any(Volatility::Stable)
    };
    ScalarUDF::from(CatalogFunction {
        name,
        returns,
        signature,
        body: Box::new(body),
    })
}

fn name_is_nullary(name: &str) -> bool {
    matches!(
        name,
        "version" | "current_schema" | "current_database" | "pg_backend_pid"
    )
}

fn as_i64(value: Option<&ScalarValue>) -> Option<i64> {
    match value? {
        ScalarValue::Int64(v) => *v,
        ScalarValue::Int32(v) => v.map(i64::from),
        ScalarValue::Int16(v) => v.map(i64::from),
        ScalarValue::UInt32(v) => v.map(i64::from),
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => s.parse().ok(),
        _ => None,
    }
}

fn as_text(value: Option<&ScalarValue>) -> Option<String> {
    match value? {
        ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => v.clone(),
        ScalarValue::Null => None,
        other => Some(other.to_string()),
    }
}

/// Registers the catalog functions with `session`, answering from `catalog`.
pub fn register(session: &mut SessionState, catalog: &Arc<PgCatalog>) -> datafusion::error::Result<()> {
    let indexes = Arc::clone(catalog);
    let constraints = Arc::clone(catalog);
    let relations = Arc::clone(catalog);
    let functions = [
        function("version", DataType::Utf8, |_| {
            text(format!(
                "PostgreSQL {POSTGRES_VERSION} (ChainQL {})",
                env!("CARGO_PKG_VERSION")
            ))
        }),
        function("current_schema", DataType::Utf8, |_| text("public")),
        function("current_database", DataType::Utf8, |_| text("chainql")),
        function("pg_get_userbyid", DataType::Utf8, |args| {
            ScalarValue::Utf8(as_text(args.first()))
        }),
        function("pg_table_is_visible", DataType::Boolean, |_| boolean(true)),
        function("pg_type_is_visible", DataType::Boolean, |_| boolean(true)),
        function("format_type", DataType::Utf8, |args| {
            ScalarValue::Utf8(
                as_i64(args.first())
                    .and_then(|oid| format_type(oid, as_i64(args.get(1)).map_or(-1, |m| m as i32))),
            )
        }),
        function("pg_get_indexdef", DataType::Utf8, move |args| {
            ScalarValue::Utf8(as_i64(args.first()).and_then(|oid| indexes.index_definition(oid)))
        }),
        function("pg_get_constraintdef", DataType::Utf8, move |args| {
            ScalarValue::Utf8(as_i64(args.first()).and_then(|oid| constraints.constraint_definition(oid)))
        }),
        function("pg_regclass", DataType::Utf8, move |args| {
            ScalarValue::Utf8(
                as_i64(args.first())
                    .map(|oid| relations.relation_name(oid).unwrap_or_else(|| oid.to_string())),
            )
        }),
        // ChainQL stores no expression trees: defaults are kept as SQL text elsewhere.
        function("pg_get_expr", DataType::Utf8, |_| NULL_TEXT),
        function("pg_get_statisticsobjdef_columns", DataType::Utf8, |_| NULL_TEXT),
        function("obj_description", DataType::Utf8, |_| NULL_TEXT),
        function("col_description", DataType::Utf8, |_| NULL_TEXT),
        function("shobj_description", DataType::Utf8, |_| NULL_TEXT),
        function("pg_relation_is_publishable", DataType::Boolean, |_| {
            boolean(false)
        }),
        function("pg_encoding_to_char", DataType::Utf8, |_| text("UTF8")),
        function("has_table_privilege", DataType::Boolean, |_| boolean(true)),
        function("has_schema_privilege", DataType::Boolean, |_| boolean(true)),
        function("pg_backend_pid", DataType::Int32, |_| ScalarValue::Int32(Some(0))),
    ];
    for udf in functions {
        session.register_udf(Arc::new(udf))?;
    }
    Ok(())
}

/// True when `name` is `pg_catalog.NAME` (any case).
fn strip_pg_catalog(name: &mut ObjectName) {
    if name.0.len() == 2
        && let Some(first) = name.0[0].as_ident()
        && first.value.eq_ignore_ascii_case(PG_CATALOG)
    {
        name.0.remove(0);
    }
}

fn names_type(name: &ObjectName, wanted: &[&str]) -> bool {
    name.0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .is_some_and(|ident| wanted.iter().any(|w| ident.value.eq_ignore_ascii_case(w)))
}

/// The catalogs of features ChainQL does not have: always empty.
const EMPTY_CATALOGS: [&str; 9] = [
    "pg_attrdef",
    "pg_collation",
    "pg_description",
    "pg_inherits",
    "pg_policy",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_statistic_ext",
];

fn is_empty_catalog(relation: &ast::TableFactor) -> bool {
    match relation {
        ast::TableFactor::Table { name, .. } => {
            let parts: Vec<&str> = name
                .0
                .iter()
                .filter_map(|part| part.as_ident().map(|ident| ident.value.as_str()))
                .collect();
            match parts.as_slice() {
                [schema, table] => {
                    schema.eq_ignore_ascii_case(PG_CATALOG)
                        && EMPTY_CATALOGS.iter().any(|e| e.eq_ignore_ascii_case(table))
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// True when a `SELECT` cannot yield a row: it inner-joins a catalog that is always empty, and
/// has no aggregate or grouping that would make a row of nothing.
fn selects_from_empty_catalog(select: &ast::Select) -> bool {
    let inner_empty = select.from.iter().any(|from| {
        is_empty_catalog(&from.relation)
            || from.joins.iter().any(|join| {
                matches!(
                    join.join_operator,
                    ast::JoinOperator::Inner(_)
                        | ast::JoinOperator::Join(_)
                        | ast::JoinOperator::CrossJoin(_)
                ) && is_empty_catalog(&join.relation)
            })
    });
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(list, _) if list.is_empty());
    let aggregated = select.projection.iter().any(|item| match item {
        ast::SelectItem::UnnamedExpr(Expr::Function(f))
        | ast::SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        } => names_type(
            &f.name,
            &[
                "count",
                "sum",
                "max",
                "min",
                "avg",
                "string_agg",
                "array_agg",
                "bool_and",
                "bool_or",
            ],
        ),
        _ => false,
    });
    inner_empty && !grouped && !aggregated && select.having.is_none()
}

/// psql's description queries read catalogs ChainQL leaves empty (policies, publications,
/// inheritance) with PostgreSQL syntax DataFusion does not plan (`ARRAY(subquery)`, casts to
/// `int2[]`, array subscripts). A branch that inner-joins an always-empty catalog has no rows
/// whatever it computes, so its outputs become NULL and its filter `false`: the same (empty)
/// answer, in a form DataFusion plans.
fn empty_branches(body: &mut ast::SetExpr) {
    match body {
        ast::SetExpr::Select(select) if selects_from_empty_catalog(select) => {
            for (i, item) in select.projection.iter_mut().enumerate() {
                let alias = match item {
                    ast::SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                    ast::SelectItem::UnnamedExpr(Expr::Identifier(ident)) => ident.clone(),
                    ast::SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts
                        .last()
                        .cloned()
                        .unwrap_or_else(|| ast::Ident::new(format!("column{}", i + 1))),
                    _ => ast::Ident::new(format!("column{}", i + 1)),
                };
                *item = ast::SelectItem::ExprWithAlias {
                    expr: Expr::Value(ast::Value::Null.into()),
                    alias,
                };
            }
            select.selection = Some(Expr::Value(ast::Value::Boolean(false).into()));
        }
        ast::SetExpr::SetOperation { left, right, .. } => {
            empty_branches(left);
            empty_branches(right);
        }
        ast::SetExpr::Query(query) => empty_branches(&mut query.body),
        _ => {}
    }
}

/// Rewrites PostgreSQL catalog syntax DataFusion does not read into what it does: see the module
/// documentation. Statements that use none of it are left as they are.
pub fn rewrite(statement: &mut ast::Statement) {
    if let ast::Statement::Query(query) = statement {
        empty_branches(&mut query.body);
        if query
            .body
            .as_select()
            .is_some_and(|s| s.selection == Some(Expr::Value(ast::Value::Boolean(false).into())))
        {
            // An empty answer needs no order: ORDER BY may name what the branch no longer has.
            query.order_by = None;
        }
    }
    let _ = visit_expressions_mut(statement, |expr| {
        loop {
            match expr {
                Expr::Subquery(query) => {
                    if let ast::SetExpr::Select(select) = query.body.as_ref()
                        && selects_from_empty_catalog(select)
                    {
                        // No row can match: the subquery's value is NULL.
                        *expr = Expr::Value(ast::Value::Null.into());
                        continue;
                    }
                    aggregate_catalog_lookup(query)
                }
                Expr::Function(function) => strip_pg_catalog(&mut function.name),
                Expr::BinaryOp { op, .. } => {
                    if let BinaryOperator::PGCustomBinaryOperator(parts) = op
                        && let Some(last) = parts.last()
                    {
                        let plain = match last.as_str() {
                            "~" => Some(BinaryOperator::PGRegexMatch),
                            "~*" => Some(BinaryOperator::PGRegexIMatch),
                            "!~" => Some(BinaryOperator::PGRegexNotMatch),
                            "!~*" => Some(BinaryOperator::PGRegexNotIMatch),
                            "=" => Some(BinaryOperator::Eq),
                            _ => None,
                        };
                        if let Some(plain) = plain {
                            *op = plain;
                        }
                    }
                }
                Expr::Collate {
                    expr: inner,
                    collation,
                } if names_type(collation, &["default", "C", "POSIX"]) => {
                    *expr = (**inner).clone();
                    continue;
                }
                Expr::Cast {
                    expr: inner,
                    data_type,
                    ..
                } => {
                    if let ast::DataType::Custom(name, _) = data_type {
                        if names_type(name, &["regclass"]) {
                            let argument = (**inner).clone();
                            *expr = call("pg_regclass", argument);
                            continue;
                        }
                        if names_type(name, &["regtype", "regnamespace", "regproc", "regrole"]) {
                            // Shown by oid: ChainQL's catalog has no such objects to name.
                            *data_type = ast::DataType::Text;
                        } else if names_type(name, &["oid"]) {
                            *data_type = ast::DataType::BigInt(None);
                        } else if names_type(name, &["text", "name"]) {
                            *data_type = ast::DataType::Text;
                        } else {
                            strip_pg_catalog(name);
                        }
                    }
                }
                _ => {}
            }
            break;
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// psql reads single values with correlated scalar subqueries over catalogs, such as
/// `(SELECT collname FROM pg_collation c WHERE c.oid = a.attcollation)`, which DataFusion plans
/// only when aggregated. A lookup of one value over `pg_catalog` relations alone, where at most one
/// row matches, is the same as its `max`: wrap it so.
fn aggregate_catalog_lookup(query: &mut ast::Query) {
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let only_catalogs = !select.from.is_empty()
        && select.from.iter().all(|from| {
            std::iter::once(&from.relation)
                .chain(from.joins.iter().map(|join| &join.relation))
                .all(|relation| match relation {
                    ast::TableFactor::Table { name, .. } => {
                        name.0.len() == 2
                            && name.0[0]
                                .as_ident()
                                .is_some_and(|schema| schema.value.eq_ignore_ascii_case(PG_CATALOG))
                    }
                    _ => false,
                })
        });
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(list, _) if list.is_empty());
    if !only_catalogs || grouped || select.projection.len() != 1 {
        return;
    }
    let target = match &mut select.projection[0] {
        ast::SelectItem::UnnamedExpr(expr) | ast::SelectItem::ExprWithAlias { expr, .. } => expr,
        _ => return,
    };
    if let Expr::Function(function) = target
        && names_type(
            &function.name,
            &["max", "min", "count", "sum", "avg", "string_agg", "array_agg"],
        )
    {
        return;
    }
    *target = call("max", target.clone());
}

fn call(name: &str, argument: Expr) -> Expr {
    let sql = format!("{name}(NULL)");
    let mut parsed = datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(&sql)
    .and_then(|mut parser| parser.parse_expr())
    .unwrap_or(Expr::Value(ast::Value::Null.into()));
    if let Expr::Function(function) = &mut parsed
        && let ast::FunctionArguments::List(list) = &mut function.args
        && let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(slot))) = list.args.first_mut()
    {
        *slot = argument;
    }
    parsed
}
