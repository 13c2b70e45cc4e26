//! diesel glue for pgvector's `vector` type, without pgvector's `diesel` feature (which would pull in
//! libpq): the binary wire format is `u16 dim, u16 unused, dim × f32`, all big-endian.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use std::io::Write;

/// The SQL type `vector`.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId, Clone, Copy, Debug)]
#[diesel(postgres_type(name = "vector"))]
pub struct Vector;

/// A vector value.
#[derive(
    Debug, Clone, PartialEq, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = Vector)]
pub struct Embedding(pub Vec<f32>);

impl ToSql<Vector, Pg> for Embedding {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&u16::try_from(self.0.len())?.to_be_bytes())?;
        out.write_all(&0u16.to_be_bytes())?;
        for v in &self.0 {
            out.write_all(&v.to_be_bytes())?;
        }
        Ok(IsNull::No)
    }
}

impl FromSql<Vector, Pg> for Embedding {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let b = value.as_bytes();
        if b.len() < 4 {
            return Err("vector: short buffer".into());
        }
        let dim = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if b.len() != 4 + 4 * dim {
            return Err("vector: bad length".into());
        }
        Ok(Embedding(
            b[4..]
                .chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}
