//! Arrow answers as PostgreSQL rows: each Arrow type's PostgreSQL type (OID), and each value in
//! the text or binary format the client asked for.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use rust_decimal::Decimal;

use super::{internal_error, user_error};
use chainql::sqlstate;

/// The PostgreSQL type a column of `data_type` is sent as. Types PostgreSQL has no match for are
/// sent as their text.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        // UInt64 is what counting functions (rank(), row_number()) return: sent as int8, and a
        // value beyond it is an error, not a wrong number.
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            Type::BYTEA
        }
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        _ => Type::TEXT,
    }
}

/// The row description of an answer with `schema`, in the formats the client asked for.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let pg = pg_type(field.data_type());
            let mut info = FieldInfo::new(field.name().clone(), None, None, pg, format.format_for(i));
            if let DataType::Decimal128(precision, scale) = field.data_type() {
                info = info.with_type_modifier(((*precision as i32) << 16 | *scale as i32) + 4);
            }
            info
        })
        .collect()
}

/// The Arrow type each PostgreSQL type is encoded from: a column is cast to it first, so one
/// encoder per PostgreSQL type serves every Arrow type sent as it.
fn carrier(pg: &Type, data_type: &DataType) -> DataType {
    match *pg {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::NUMERIC => match data_type {
            DataType::Decimal128(_, _) => data_type.clone(),
            _ => DataType::Decimal128(38, 0),
        },
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => DataType::Utf8,
    }
}

/// Encodes every row of `batch` as described by `fields` (one per column).
pub fn encode_batch(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    if batch.num_columns() != fields.len() {
        return Err(internal_error(format!(
            "the answer has {} columns, its description {}",
            batch.num_columns(),
            fields.len()
        )));
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(column, field)| {
            let target = carrier(field.datatype(), column.data_type());
            if column.data_type() == &target {
                Ok(Arc::clone(column))
            } else {
                cast_with_options(column, &target, &STRICT).map_err(|e| {
                    user_error(
                        sqlstate::DATATYPE_MISMATCH,
                        format!(
                            "column {:?} cannot be sent as {}: {e}",
                            field.name(),
                            field.datatype()
                        ),
                    )
                })
            }
        })
        .collect::<PgWireResult<_>>()?;
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (column, field) in columns.iter().zip(fields.iter()) {
            encode_value(&mut encoder, column, row, field.format() == FieldFormat::Text)?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

/// Casts that fail on a value the target cannot hold, rather than sending NULL.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: datafusion::arrow::util::display::FormatOptions::new(),
};

const UNIX_EPOCH_DATE: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");

fn encode_value(encoder: &mut DataRowEncoder, column: &ArrayRef, row: usize, text: bool) -> PgWireResult<()> {
    if column.is_null(row) {
        return encoder.encode_field(&None::<i64>);
    }
    match column.data_type() {
        DataType::Boolean => encoder.encode_field(&column.as_boolean().value(row)),
        DataType::Int16 => encoder.encode_field(&column.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => encoder.encode_field(&column.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => encoder.encode_field(&column.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => encoder.encode_field(&column.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => encoder.encode_field(&column.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => {
            let value = column.as_primitive::<Decimal128Type>().value(row);
            let decimal = u32::try_from(*scale)
                .ok()
                .and_then(|scale| Decimal::try_from_i128_with_scale(value, scale).ok())
                .ok_or_else(|| {
                    user_error(
                        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                        format!("the numeric value {value} (scale {scale}) is beyond 28 digits"),
                    )
                })?;
            encoder.encode_field(&decimal)
        }
        DataType::Binary => encoder.encode_field(&column.as_binary::<i32>().value(row)),
        DataType::Date32 => {
            let days = column.as_primitive::<Date32Type>().value(row);
            let date = UNIX_EPOCH_DATE
                .checked_add_signed(chrono::Duration::days(days as i64))
                .ok_or_else(|| out_of_range("date"))?;
            encoder.encode_field(&date)
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            let micros = column.as_primitive::<Time64MicrosecondType>().value(row);
            let time = NaiveTime::from_num_seconds_from_midnight_opt(
                (micros / 1_000_000) as u32,
                ((micros % 1_000_000) * 1_000) as u32,
            )
            .ok_or_else(|| out_of_range("time"))?;
            if text {
                return encoder.encode_field(&pg_text(time.format("%H:%M:%S%.f").to_string()));
            }
            encoder.encode_field(&time)
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            let instant: DateTime<Utc> =
                DateTime::from_timestamp_micros(micros).ok_or_else(|| out_of_range("timestamp"))?;
            match (zone, text) {
                (None, true) => {
                    encoder.encode_field(&pg_text(instant.format("%Y-%m-%d %H:%M:%S%.f").to_string()))
                }
                (Some(_), true) => encoder
                    .encode_field(&(pg_text(instant.format("%Y-%m-%d %H:%M:%S%.f").to_string()) + "+00")),
                (None, false) => encoder.encode_field(&instant.naive_utc()),
                (Some(_), false) => encoder.encode_field(&instant),
            }
        }
        DataType::Utf8 => encoder.encode_field(&column.as_string::<i32>().value(row)),
        other => Err(internal_error(format!("no encoder for {other}"))),
    }
}

/// A time's text as PostgreSQL writes it: the fraction of a second without trailing zeros, and
/// none when it is zero.
fn pg_text(formatted: String) -> String {
    match formatted.split_once('.') {
        Some((whole, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                whole.to_string()
            } else {
                format!("{whole}.{fraction}")
            }
        }
        None => formatted,
    }
}

fn out_of_range(what: &str) -> PgWireError {
    user_error(
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        format!("a {what} is out of PostgreSQL's range"),
    )
}
