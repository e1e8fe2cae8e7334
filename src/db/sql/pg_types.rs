//! `Millis`: a PostgreSQL `TIMESTAMPTZ` column whose Rust value is `Ms` (integer milliseconds),
//! so the shared operations compare and store timestamps the same way on every engine.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, SqlOrd};

use super::Ms;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01), in ms.
const PG_EPOCH_MS: i64 = 946_684_800_000;

#[derive(
    Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
)]
#[diesel(postgres_type(name = "timestamptz"))]
pub struct Millis;

impl SqlOrd for Millis {}

impl ToSql<Millis, Pg> for Ms {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        // Saturating: a client's absurd `newer=` must match nothing, not overflow.
        let micros = self.0.saturating_sub(PG_EPOCH_MS).saturating_mul(1000);
        <i64 as ToSql<BigInt, Pg>>::to_sql(&micros, &mut out.reborrow())
    }
}

impl FromSql<Millis, Pg> for Ms {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let micros = <i64 as FromSql<BigInt, Pg>>::from_sql(bytes)?;
        Ok(Ms(micros.div_euclid(1000) + PG_EPOCH_MS))
    }
}

/// On the engines that store ms as BIGINT, `Ms` is its i64.
macro_rules! bigint_ms {
    ($($db:ty),*) => {$(
        impl ToSql<BigInt, $db> for Ms {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, $db>) -> serialize::Result {
                <i64 as ToSql<BigInt, $db>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<BigInt, $db> for Ms {
            fn from_sql(bytes: <$db as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                <i64 as FromSql<BigInt, $db>>::from_sql(bytes).map(Ms)
            }
        }
    )*};
}

bigint_ms!(diesel::sqlite::Sqlite, diesel::mysql::Mysql);
