//! Plans for the statements that change state: table definitions and the queries that find the
//! rows a write touches.
//!
//! `UPDATE` and `DELETE` are not handed to DataFusion's DML path: DataFusion 55 folds an
//! always-false `WHERE` into "no filter" and leaks subquery predicates into the filters it passes
//! to `TableProvider::update`/`delete_from` (apache/datafusion#24654), which on a ledger would
//! rewrite or delete whole tables. Instead each write becomes a plain `SELECT` that DataFusion
//! evaluates with its full semantics (joins, subqueries, three-valued logic), over a view of the
//! target table that exposes each row's position:
//!
//! ```text
//! UPDATE t SET b = b + 1 WHERE a > 5
//!   ->  SELECT t.__chainql_row, t.a AS __chainql_c0, (b + 1) AS __chainql_c1
//!       FROM __chainql_target AS t WHERE a > 5
//! ```
//!
//! The executor then replaces exactly the rows at those positions.

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, ColumnOption, FromTable, Ident, ObjectName, ObjectNamePart, ObjectType,
    Statement, TableConstraint, TableFactor, TableWithJoins, UpdateTableFromKind,
};
use std::sync::Arc;

use crate::types::{ColumnType, column_type};
use crate::{Error, Result};
use chainql::Address;

/// The hidden key column of a table declared without a primary key (as CockroachDB's `rowid`).
pub const ROW_ID_COLUMN: &str = "__chainql_rowid";
/// The column through which the write-target view exposes each row's position.
pub const ROW_POSITION_COLUMN: &str = "__chainql_row";
/// The name under which the target of an `UPDATE` or `DELETE` is visible to its row query.
pub const WRITE_TARGET_TABLE: &str = "__chainql_target";
/// Names starting with this are reserved for ChainQL's own columns and tables.
pub const RESERVED_PREFIX: &str = "__chainql";
/// The schema of ChainQL's read-only system tables.
pub const SYSTEM_SCHEMA: &str = "chain";
/// The schema of user tables.
pub const USER_SCHEMA: &str = "public";
/// The most columns a table may have.
pub const COLUMNS_MAX: usize = 1024;
/// The longest table or column name, in bytes (PostgreSQL's limit is 63).
pub const NAME_BYTES_MAX: usize = 63;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnDefinition {
    pub name: String,
    pub column_type: ColumnType,
    pub nullable: bool,
    /// The `DEFAULT` expression, as SQL text, evaluated when an `INSERT` omits the column.
    pub default: Option<String>,
}

/// A table's definition: its columns and its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableDefinition {
    pub name: String,
    pub columns: Vec<ColumnDefinition>,
    /// Positions of the primary-key columns, in key order. Empty for a table keyed by a hidden
    /// row id.
    pub primary_key: Vec<usize>,
}

impl TableDefinition {
    /// True when rows are keyed by the hidden [`ROW_ID_COLUMN`].
    pub fn has_hidden_row_id(&self) -> bool {
        self.primary_key.is_empty()
    }

    /// The columns a user sees.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.column_type.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// The columns as stored: the user's, then the hidden row id if there is one.
    pub fn storage_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.column_type.data_type.clone(), c.nullable))
            .collect();
        if self.has_hidden_row_id() {
            fields.push(Field::new(ROW_ID_COLUMN, DataType::Int64, false));
        }
        Arc::new(Schema::new(fields))
    }

    /// Storage positions of the key columns.
    pub fn key_columns(&self) -> Vec<usize> {
        if self.has_hidden_row_id() {
            vec![self.columns.len()]
        } else {
            self.primary_key.clone()
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// What a write statement does, with names resolved and normalized.
#[derive(Debug, Clone)]
pub enum WritePlan {
    CreateTable {
        definition: TableDefinition,
        if_not_exists: bool,
    },
    DropTable {
        names: Vec<String>,
        if_exists: bool,
    },
    Insert(InsertPlan),
    Update(UpdatePlan),
    Delete(DeletePlan),
    /// `GRANT` (`grant` true) or `REVOKE` privileges on tables to accounts.
    Grant {
        grant: bool,
        privileges: Privileges,
        tables: Vec<String>,
        grantees: Vec<Address>,
    },
}

/// Which writes an account may make to a table it does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Privileges {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
}

impl Privileges {
    pub const ALL: Privileges = Privileges {
        insert: true,
        update: true,
        delete: true,
    };

    pub fn is_empty(self) -> bool {
        !(self.insert || self.update || self.delete)
    }

    /// The privileges in `self` or `other`.
    pub fn union(self, other: Privileges) -> Privileges {
        Privileges {
            insert: self.insert || other.insert,
            update: self.update || other.update,
            delete: self.delete || other.delete,
        }
    }

    /// The privileges in `self` but not in `other`.
    pub fn without(self, other: Privileges) -> Privileges {
        Privileges {
            insert: self.insert && !other.insert,
            update: self.update && !other.update,
            delete: self.delete && !other.delete,
        }
    }

    /// `INSERT, UPDATE`, as SQL names them.
    pub fn names(self) -> String {
        let mut names = Vec::new();
        if self.insert {
            names.push("INSERT");
        }
        if self.update {
            names.push("UPDATE");
        }
        if self.delete {
            names.push("DELETE");
        }
        names.join(", ")
    }
}

/// `INSERT INTO table [(columns)] source`.
#[derive(Debug, Clone)]
pub struct InsertPlan {
    pub table: String,
    /// The listed target columns, or `None` for all columns in order.
    pub columns: Option<Vec<String>>,
    /// The rows to insert; `None` for `DEFAULT VALUES`.
    pub source: Option<Box<ast::Query>>,
    /// What to do with rows whose key already exists.
    pub on_conflict: Option<OnConflictPlan>,
}

/// The name under which an upsert's proposed rows are visible to its `DO UPDATE` clause.
pub const EXCLUDED_TABLE: &str = "excluded";

/// `ON CONFLICT [(columns)] DO NOTHING | DO UPDATE SET ... [WHERE ...]`. Conflicts are on the
/// primary key, the only unique constraint ChainQL has.
#[derive(Debug, Clone)]
pub struct OnConflictPlan {
    /// The conflict target's columns, if named (they must be the primary key).
    pub target: Option<Vec<String>>,
    /// `None` for `DO NOTHING`.
    pub update: Option<ConflictUpdate>,
}

/// The `DO UPDATE` of an upsert.
#[derive(Debug, Clone)]
pub struct ConflictUpdate {
    assignments: Vec<(String, String)>,
    selection: Option<String>,
}

impl ConflictUpdate {
    /// The query that yields, per conflicting existing row, its position and its new values:
    /// the target table joined on its key with the `excluded` rows.
    pub fn row_query(&self, definition: &TableDefinition) -> Result<String> {
        if definition.has_hidden_row_id() {
            return Err(Error::Invalid(format!(
                "ON CONFLICT DO UPDATE needs a primary key, and {} has none",
                definition.name
            )));
        }
        let target = quote_ident(&definition.name);
        let update = UpdatePlan {
            table: definition.name.clone(),
            alias: target.clone(),
            assignments: self.assignments.clone(),
            from: None,
            selection: None,
        };
        let mut select = update.row_query(definition)?;
        let join: Vec<String> = definition
            .primary_key
            .iter()
            .map(|&k| {
                let column = quote_ident(&definition.columns[k].name);
                format!("{target}.{column} = {EXCLUDED_TABLE}.{column}")
            })
            .collect();
        select.push_str(&format!(" JOIN {EXCLUDED_TABLE} ON {}", join.join(" AND ")));
        if let Some(selection) = &self.selection {
            select.push_str(&format!(" WHERE {selection}"));
        }
        Ok(select)
    }
}

/// `UPDATE table [AS alias] SET ... [FROM ...] [WHERE ...]`.
#[derive(Debug, Clone)]
pub struct UpdatePlan {
    pub table: String,
    alias: String,
    assignments: Vec<(String, String)>,
    from: Option<String>,
    selection: Option<String>,
}

/// `DELETE FROM table [AS alias] [USING ...] [WHERE ...]`.
#[derive(Debug, Clone)]
pub struct DeletePlan {
    pub table: String,
    alias: String,
    using: Option<String>,
    selection: Option<String>,
}

impl UpdatePlan {
    /// The query that yields, per updated row, its position and then the new value of every
    /// column of `definition`, in order.
    pub fn row_query(&self, definition: &TableDefinition) -> Result<String> {
        for (column, _) in &self.assignments {
            if definition.column_index(column).is_none() {
                return Err(Error::UndefinedColumn {
                    table: self.table.clone(),
                    column: column.clone(),
                });
            }
        }
        for (i, (column, _)) in self.assignments.iter().enumerate() {
            if self.assignments[..i].iter().any(|(c, _)| c == column) {
                return Err(Error::Invalid(format!(
                    "column {column:?} is assigned more than once"
                )));
            }
        }
        let mut select = format!("SELECT {}.{ROW_POSITION_COLUMN}", self.alias);
        for (i, column) in definition.columns.iter().enumerate() {
            match self.assignments.iter().find(|(c, _)| *c == column.name) {
                Some((_, value)) => select.push_str(&format!(", ({value}) AS {RESERVED_PREFIX}_c{i}")),
                None => select.push_str(&format!(
                    ", {}.{} AS {RESERVED_PREFIX}_c{i}",
                    self.alias,
                    quote_ident(&column.name)
                )),
            }
        }
        Ok(finish_row_query(
            select,
            &self.alias,
            self.from.as_deref(),
            self.selection.as_deref(),
        ))
    }
}

impl DeletePlan {
    /// The query that yields the position of every deleted row.
    pub fn row_query(&self) -> String {
        let select = format!("SELECT {}.{ROW_POSITION_COLUMN}", self.alias);
        finish_row_query(
            select,
            &self.alias,
            self.using.as_deref(),
            self.selection.as_deref(),
        )
    }
}

fn finish_row_query(mut select: String, alias: &str, from: Option<&str>, selection: Option<&str>) -> String {
    select.push_str(&format!(" FROM {WRITE_TARGET_TABLE} AS {alias}"));
    if let Some(from) = from {
        select.push_str(", ");
        select.push_str(from);
    }
    if let Some(selection) = selection {
        select.push_str(&format!(" WHERE {selection}"));
    }
    select
}

/// A double-quoted identifier, as SQL text.
pub fn quote_ident(name: &str) -> String {
    Ident::with_quote('"', name).to_string()
}

/// An identifier as PostgreSQL resolves it: unquoted names fold to lower case.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// Resolves the name of a user table: `t` or `public.t`. System tables cannot be written.
pub fn user_table_name(name: &ObjectName) -> Result<String> {
    let parts: Vec<&Ident> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(ident),
            other => Err(Error::Unsupported(format!("table name {other}"))),
        })
        .collect::<Result<_>>()?;
    let table = match parts.as_slice() {
        [table] => table,
        [schema, table] => {
            let schema = normalize_ident(schema);
            if schema == SYSTEM_SCHEMA {
                return Err(Error::ReadOnly(format!(
                    "{SYSTEM_SCHEMA}.{} is a system table and cannot be changed",
                    normalize_ident(table)
                )));
            }
            if schema != USER_SCHEMA {
                return Err(Error::UndefinedTable(format!(
                    "{schema}.{}",
                    normalize_ident(table)
                )));
            }
            table
        }
        _ => return Err(Error::UndefinedTable(name.to_string())),
    };
    let table = normalize_ident(table);
    check_name(&table, "table")?;
    Ok(table)
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "{what} name {name:?} must be 1 to {NAME_BYTES_MAX} bytes"
        )));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(Error::Invalid(format!(
            "{what} name {name:?} is reserved: names starting with {RESERVED_PREFIX} belong to ChainQL"
        )));
    }
    Ok(())
}

/// Plans a write statement.
pub fn plan_write(statement: &Statement) -> Result<WritePlan> {
    match statement {
        Statement::CreateTable(create) => plan_create_table(create),
        Statement::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            cascade,
            ..
        } => {
            if *cascade {
                return Err(Error::Unsupported("DROP TABLE ... CASCADE".into()));
            }
            Ok(WritePlan::DropTable {
                names: names.iter().map(user_table_name).collect::<Result<_>>()?,
                if_exists: *if_exists,
            })
        }
        Statement::Insert(insert) => plan_insert(insert),
        Statement::Update(update) => plan_update(update),
        Statement::Delete(delete) => plan_delete(delete),
        Statement::Grant(grant) => {
            if grant.with_grant_option || grant.as_grantor.is_some() || grant.granted_by.is_some() {
                return Err(Error::Unsupported(
                    "GRANT ... WITH GRANT OPTION, AS or GRANTED BY".into(),
                ));
            }
            plan_grant(true, &grant.privileges, grant.objects.as_ref(), &grant.grantees)
        }
        Statement::Revoke(revoke) => {
            if revoke.granted_by.is_some() {
                return Err(Error::Unsupported("REVOKE ... GRANTED BY".into()));
            }
            plan_grant(
                false,
                &revoke.privileges,
                revoke.objects.as_ref(),
                &revoke.grantees,
            )
        }
        other => Err(Error::Unsupported(format!(
            "statement in a transaction: {}",
            other
                .to_string()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ))),
    }
}

fn plan_create_table(create: &ast::CreateTable) -> Result<WritePlan> {
    let unsupported = |what: &str| Err(Error::Unsupported(format!("CREATE TABLE with {what}")));
    if create.or_replace {
        return unsupported("OR REPLACE");
    }
    if create.temporary || create.external {
        return unsupported("TEMPORARY or EXTERNAL");
    }
    if create.query.is_some() {
        return unsupported("AS SELECT");
    }
    if create.like.is_some() || create.clone.is_some() {
        return unsupported("LIKE or CLONE");
    }
    let name = user_table_name(&create.name)?;
    if create.columns.is_empty() {
        return Err(Error::Invalid(format!("table {name} needs at least one column")));
    }
    if create.columns.len() > COLUMNS_MAX {
        return Err(Error::Invalid(format!(
            "table {name} has {} columns; the limit is {COLUMNS_MAX}",
            create.columns.len()
        )));
    }
    let mut columns: Vec<ColumnDefinition> = Vec::with_capacity(create.columns.len());
    let mut primary_key: Vec<usize> = Vec::new();
    for (index, column) in create.columns.iter().enumerate() {
        let column_name = normalize_ident(&column.name);
        check_name(&column_name, "column")?;
        if columns.iter().any(|c| c.name == column_name) {
            return Err(Error::Invalid(format!(
                "column {column_name:?} is declared more than once"
            )));
        }
        let mut definition = ColumnDefinition {
            name: column_name.clone(),
            column_type: column_type(&column.data_type)?,
            nullable: true,
            default: None,
        };
        for option in &column.options {
            match &option.option {
                ColumnOption::Null => definition.nullable = true,
                ColumnOption::NotNull => definition.nullable = false,
                ColumnOption::Default(expr) => definition.default = Some(expr.to_string()),
                ColumnOption::PrimaryKey(_) => {
                    if !primary_key.is_empty() {
                        return Err(Error::Invalid(format!(
                            "table {name} has more than one primary key"
                        )));
                    }
                    primary_key.push(index);
                }
                other => {
                    return Err(Error::Unsupported(format!(
                        "column constraint {other} (on {column_name})"
                    )));
                }
            }
        }
        columns.push(definition);
    }
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(key) => {
                if !primary_key.is_empty() {
                    return Err(Error::Invalid(format!(
                        "table {name} has more than one primary key"
                    )));
                }
                for index_column in &key.columns {
                    let ast::Expr::Identifier(ident) = &index_column.column.expr else {
                        return Err(Error::Unsupported(format!(
                            "primary key on expression {}",
                            index_column.column.expr
                        )));
                    };
                    let column_name = normalize_ident(ident);
                    let position = columns
                        .iter()
                        .position(|c| c.name == column_name)
                        .ok_or_else(|| Error::UndefinedColumn {
                            table: name.clone(),
                            column: column_name.clone(),
                        })?;
                    if primary_key.contains(&position) {
                        return Err(Error::Invalid(format!(
                            "column {column_name:?} appears twice in the primary key"
                        )));
                    }
                    primary_key.push(position);
                }
            }
            other => return Err(Error::Unsupported(format!("table constraint {other}"))),
        }
    }
    for &position in &primary_key {
        let column = &mut columns[position];
        column.nullable = false;
        if !is_key_type(&column.column_type.data_type) {
            return Err(Error::Unsupported(format!(
                "primary key column {:?} of type {}: keys must be integers, text, bytea, boolean, numeric, date or timestamp",
                column.name,
                column.column_type.sql_name()
            )));
        }
    }
    Ok(WritePlan::CreateTable {
        definition: TableDefinition {
            name,
            columns,
            primary_key,
        },
        if_not_exists: create.if_not_exists,
    })
}

/// Types that can be part of a primary key: their values have one exact encoding (floats do not:
/// `-0.0 = 0.0` and NaN).
pub fn is_key_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Boolean
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Utf8
            | DataType::Binary
            | DataType::Date32
            | DataType::Timestamp(_, _)
            | DataType::Decimal128(_, _)
    )
}

fn plan_grant(
    grant: bool,
    privileges: &ast::Privileges,
    objects: Option<&ast::GrantObjects>,
    grantees: &[ast::Grantee],
) -> Result<WritePlan> {
    let privileges = match privileges {
        ast::Privileges::All { .. } => Privileges::ALL,
        ast::Privileges::Actions(actions) => {
            let mut chosen = Privileges::default();
            for action in actions {
                match action {
                    ast::Action::Insert { columns: None } => chosen.insert = true,
                    ast::Action::Update { columns: None } => chosen.update = true,
                    ast::Action::Delete => chosen.delete = true,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "privilege {other}: tables grant INSERT, UPDATE and DELETE (reads are public)"
                        )));
                    }
                }
            }
            chosen
        }
    };
    let Some(ast::GrantObjects::Tables(names)) = objects else {
        return Err(Error::Unsupported("privileges on anything but tables".into()));
    };
    let tables = names.iter().map(user_table_name).collect::<Result<Vec<_>>>()?;
    let grantees = grantees
        .iter()
        .map(|grantee| {
            let name = match &grantee.name {
                Some(ast::GranteeName::ObjectName(name)) => match name.0.as_slice() {
                    [ObjectNamePart::Identifier(ident)] => ident.value.clone(),
                    _ => name.to_string(),
                },
                _ => String::new(),
            };
            Address::from_hex(&name).map_err(|_| {
                Error::Invalid(format!(
                    "grantee {name:?} is not an account address: expected '0x' followed by 40 hex digits"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if grantees.is_empty() {
        return Err(Error::Invalid("name at least one account".into()));
    }
    Ok(WritePlan::Grant {
        grant,
        privileges,
        tables,
        grantees,
    })
}

fn plan_insert(insert: &ast::Insert) -> Result<WritePlan> {
    let unsupported = |what: &str| Err(Error::Unsupported(format!("INSERT with {what}")));
    let on_conflict = match &insert.on {
        None => None,
        Some(ast::OnInsert::OnConflict(conflict)) => {
            let target = match &conflict.conflict_target {
                None => None,
                Some(ast::ConflictTarget::Columns(columns)) => {
                    Some(columns.iter().map(normalize_ident).collect())
                }
                Some(ast::ConflictTarget::OnConstraint(_)) => {
                    return unsupported("ON CONFLICT ON CONSTRAINT");
                }
            };
            let update = match &conflict.action {
                ast::OnConflictAction::DoNothing => None,
                ast::OnConflictAction::DoUpdate(update) => Some(ConflictUpdate {
                    assignments: assignments(&update.assignments)?,
                    selection: update.selection.as_ref().map(ToString::to_string),
                }),
            };
            Some(OnConflictPlan { target, update })
        }
        Some(_) => return unsupported("ON DUPLICATE KEY"),
    };
    if insert.returning.is_some() {
        return unsupported("RETURNING");
    }
    if !insert.assignments.is_empty() || insert.overwrite || insert.or.is_some() || insert.replace_into {
        return unsupported("this form");
    }
    let ast::TableObject::TableName(table_name) = &insert.table else {
        return unsupported("a table function");
    };
    let table = user_table_name(table_name)?;
    let columns = if insert.columns.is_empty() {
        None
    } else {
        let mut names = Vec::with_capacity(insert.columns.len());
        for column in &insert.columns {
            let ident = column
                .0
                .last()
                .and_then(ObjectNamePart::as_ident)
                .ok_or_else(|| Error::Invalid(format!("column name {column}")))?;
            let name = normalize_ident(ident);
            if names.contains(&name) {
                return Err(Error::Invalid(format!(
                    "column {name:?} is listed more than once"
                )));
            }
            names.push(name);
        }
        Some(names)
    };
    Ok(WritePlan::Insert(InsertPlan {
        table,
        columns,
        source: insert.source.clone(),
        on_conflict,
    }))
}

/// The table name and the alias its row query refers to it by.
fn target(relation: &TableWithJoins) -> Result<(String, String)> {
    if !relation.joins.is_empty() {
        return Err(Error::Unsupported(
            "JOIN in the target of UPDATE or DELETE; use FROM or USING".into(),
        ));
    }
    let TableFactor::Table { name, alias, .. } = &relation.relation else {
        return Err(Error::Unsupported(format!("target {}", relation.relation)));
    };
    let table = user_table_name(name)?;
    let alias = match alias {
        Some(alias) if alias.columns.is_empty() => alias.name.to_string(),
        Some(_) => return Err(Error::Unsupported("column aliases on the target".into())),
        None => match name.0.last() {
            Some(part) => part.to_string(),
            None => quote_ident(&table),
        },
    };
    Ok((table, alias))
}

fn join_tables(tables: &[TableWithJoins]) -> Option<String> {
    (!tables.is_empty()).then(|| {
        tables
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// `SET column = expression, ...` as (column, expression text) pairs.
fn assignments(assignments: &[ast::Assignment]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(assignments.len());
    for assignment in assignments {
        let AssignmentTarget::ColumnName(column) = &assignment.target else {
            return Err(Error::Unsupported("assigning a tuple of columns".into()));
        };
        let ident = column
            .0
            .last()
            .and_then(ObjectNamePart::as_ident)
            .ok_or_else(|| Error::Invalid(format!("column name {column}")))?;
        out.push((normalize_ident(ident), assignment.value.to_string()));
    }
    Ok(out)
}

fn plan_update(update: &ast::Update) -> Result<WritePlan> {
    if update.returning.is_some() {
        return Err(Error::Unsupported("UPDATE with RETURNING".into()));
    }
    if update.limit.is_some() || !update.order_by.is_empty() || update.or.is_some() {
        return Err(Error::Unsupported("UPDATE with ORDER BY or LIMIT".into()));
    }
    let (table, alias) = target(&update.table)?;
    let assignments = assignments(&update.assignments)?;
    let from = match &update.from {
        None => None,
        Some(UpdateTableFromKind::AfterSet(tables) | UpdateTableFromKind::BeforeSet(tables)) => {
            join_tables(tables)
        }
    };
    Ok(WritePlan::Update(UpdatePlan {
        table,
        alias,
        assignments,
        from,
        selection: update.selection.as_ref().map(ToString::to_string),
    }))
}

fn plan_delete(delete: &ast::Delete) -> Result<WritePlan> {
    if delete.returning.is_some() {
        return Err(Error::Unsupported("DELETE with RETURNING".into()));
    }
    if delete.limit.is_some() || !delete.order_by.is_empty() || !delete.tables.is_empty() {
        return Err(Error::Unsupported("this form of DELETE".into()));
    }
    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
    let [relation] = from.as_slice() else {
        return Err(Error::Unsupported("DELETE from more than one table".into()));
    };
    let (table, alias) = target(relation)?;
    Ok(WritePlan::Delete(DeletePlan {
        table,
        alias,
        using: delete.using.as_deref().and_then(join_tables),
        selection: delete.selection.as_ref().map(ToString::to_string),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn plan(sql: &str) -> Result<WritePlan> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .remove(0);
        plan_write(&statement)
    }

    fn create(sql: &str) -> TableDefinition {
        match plan(sql).expect("plans") {
            WritePlan::CreateTable { definition, .. } => definition,
            other => panic!("not a CREATE TABLE: {other:?}"),
        }
    }

    #[test]
    fn create_table_resolves_keys_and_names() {
        let t = create(
            "CREATE TABLE Accounts (ID BIGINT PRIMARY KEY, \"Name\" TEXT NOT NULL, note VARCHAR(5) DEFAULT 'x')",
        );
        assert_eq!(t.name, "accounts");
        assert_eq!(
            t.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["id", "Name", "note"]
        );
        assert_eq!(t.primary_key, [0]);
        assert!(!t.columns[0].nullable && !t.columns[1].nullable && t.columns[2].nullable);
        assert_eq!(t.columns[2].default.as_deref(), Some("'x'"));

        let t = create("CREATE TABLE p (a INT, b TEXT, c INT, PRIMARY KEY (c, a))");
        assert_eq!(t.primary_key, [2, 0]);
        assert_eq!(t.key_columns(), [2, 0]);

        let t = create("CREATE TABLE log (msg TEXT)");
        assert!(t.has_hidden_row_id());
        assert_eq!(t.key_columns(), [1]);
        assert_eq!(t.storage_schema().field(1).name(), ROW_ID_COLUMN);
        assert_eq!(t.storage_schema().field(1).data_type(), &DataType::Int64);
        assert_eq!(t.schema().fields().len(), 1);
    }

    #[test]
    fn create_table_refusals() {
        for sql in [
            "CREATE TABLE t (a INT, a INT)",
            "CREATE TABLE t (a INT PRIMARY KEY, b INT PRIMARY KEY)",
            "CREATE TABLE t (a INT, PRIMARY KEY (b))",
            "CREATE TABLE t (a INT UNIQUE)",
            "CREATE TABLE t (a JSONB)",
            "CREATE TABLE chain.t (a INT)",
            "CREATE TABLE __chainql_t (a INT)",
            "CREATE TABLE t (__chainql_row INT)",
            "CREATE TABLE other.t (a INT)",
            "CREATE TABLE t (a DOUBLE PRECISION PRIMARY KEY)",
        ] {
            assert!(plan(sql).is_err(), "{sql} should be refused");
        }
    }

    #[test]
    fn update_becomes_a_row_query() {
        let t = create("CREATE TABLE t (id BIGINT PRIMARY KEY, b BIGINT, c TEXT)");
        let WritePlan::Update(update) =
            plan("UPDATE T SET b = b + 1 WHERE id IN (SELECT id FROM u)").expect("plans")
        else {
            panic!("not an update")
        };
        assert_eq!(update.table, "t");
        assert_eq!(
            update.row_query(&t).expect("query"),
            "SELECT T.__chainql_row, T.\"id\" AS __chainql_c0, (b + 1) AS __chainql_c1, T.\"c\" AS __chainql_c2 \
             FROM __chainql_target AS T WHERE id IN (SELECT id FROM u)"
        );
        let WritePlan::Update(bad) = plan("UPDATE t SET nope = 1").expect("plans") else {
            panic!("not an update")
        };
        assert!(matches!(bad.row_query(&t), Err(Error::UndefinedColumn { .. })));
    }

    #[test]
    fn delete_becomes_a_row_query() {
        let WritePlan::Delete(delete) =
            plan("DELETE FROM public.t AS x USING u WHERE x.id = u.id").expect("plans")
        else {
            panic!("not a delete")
        };
        assert_eq!(
            delete.row_query(),
            "SELECT x.__chainql_row FROM __chainql_target AS x, u WHERE x.id = u.id"
        );
        assert!(matches!(
            plan("DELETE FROM chain.blocks"),
            Err(Error::ReadOnly(_))
        ));
    }
}
