//! Table column order, fetched from a server when routing needs it (an
//! INSERT or COPY without a column list into a sharded table) and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate_protocol::PgError;

/// Column names of one table, in table order.
pub type Columns = Arc<Vec<String>>;

/// Column names of tables, per database.
#[derive(Debug, Default)]
pub struct Catalog {
    columns: Mutex<HashMap<(String, String), Columns>>,
    facts: Mutex<HashMap<String, Arc<DatabaseFacts>>>,
    estimates: Mutex<HashMap<(String, String), (Instant, f64)>>,
}

/// How long a table's estimated row count is reused.
const ESTIMATE_TTL: Duration = Duration::from_secs(60);

/// What merging rows of several shards needs to know about a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseFacts {
    /// The default collation orders text bytewise (`C`, `POSIX`, `C.UTF-8`),
    /// as the merge compares text.
    pub bytewise_collation: bool,
    /// The database collation's name.
    pub collation: String,
    /// Names of aggregates outside `pg_catalog` (user-defined): their
    /// per-shard results cannot be combined.
    pub user_aggregates: std::collections::HashSet<String>,
}

/// How to reach a server to ask.
pub struct CatalogSource<'a> {
    /// `host:port` of a server holding the table.
    pub addr: &'a str,
    /// Role to log in as.
    pub user: &'a str,
    /// Its password.
    pub password: Option<&'a str>,
    /// Database.
    pub database: &'a str,
    /// TLS towards the servers (`proxy.server_tls`).
    pub tls: &'a shardgate_pool::ServerTls,
}

impl Catalog {
    /// The columns of `table` (as written in the statement, schema-qualified
    /// or not) in their table order.
    pub async fn columns(
        &self,
        src: &CatalogSource<'_>,
        table: &str,
    ) -> Result<Arc<Vec<String>>, PgError> {
        let key = (src.database.to_owned(), table.to_owned());
        if let Some(c) = self.columns.lock().expect("catalog lock").get(&key) {
            return Ok(c.clone());
        }
        let cols = Arc::new(fetch(src, table).await?);
        self.columns
            .lock()
            .expect("catalog lock")
            .insert(key, cols.clone());
        Ok(cols)
    }

    /// Facts about `src.database` for cross-shard merges (cached).
    pub async fn facts(&self, src: &CatalogSource<'_>) -> Result<Arc<DatabaseFacts>, PgError> {
        if let Some(f) = self.facts.lock().expect("catalog lock").get(src.database) {
            return Ok(f.clone());
        }
        let client = connect(src, "the database's collation").await?;
        let failed = |e: tokio_postgres::Error| {
            PgError::error("08006", format!("shardgate: cannot read the catalog: {e}"))
        };
        // datlocprovider / daticulocale exist from Postgres 15 on (read
        // through jsonb so older servers answer NULL).
        let row = client
            .query_one(
                "SELECT datcollate::text, to_jsonb(d) ->> 'datlocprovider', coalesce(to_jsonb(d) ->> 'daticulocale', to_jsonb(d) ->> 'datlocale') FROM pg_catalog.pg_database d WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(failed)?;
        let libc: String = row.get(0);
        let provider: Option<String> = row.get(1);
        let icu: Option<String> = row.get(2);
        let (collation, bytewise) = match provider.as_deref() {
            Some("i") => (format!("ICU {}", icu.unwrap_or_default()), false),
            _ => (libc.clone(), is_bytewise(&libc)),
        };
        let user_aggregates = client
            .query(
                "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc WHERE prokind = 'a' AND pronamespace <> 'pg_catalog'::regnamespace",
                &[],
            )
            .await
            .map_err(failed)?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let facts = Arc::new(DatabaseFacts {
            bytewise_collation: bytewise,
            collation,
            user_aggregates,
        });
        self.facts
            .lock()
            .expect("catalog lock")
            .insert(src.database.to_owned(), facts.clone());
        Ok(facts)
    }

    /// The size of `table` on the server of `src` in bytes
    /// (`pg_relation_size`: known even before the table was analysed),
    /// reused for a minute.
    pub async fn table_size(&self, src: &CatalogSource<'_>, table: &str) -> Result<f64, PgError> {
        let key = (src.database.to_owned(), table.to_owned());
        if let Some((at, n)) = self.estimates.lock().expect("catalog lock").get(&key) {
            if at.elapsed() < ESTIMATE_TTL {
                return Ok(*n);
            }
        }
        let what = format!("the size of {table}");
        let client = connect(src, &what).await?;
        let row = client
            .query_one(
                "SELECT pg_catalog.pg_relation_size($1::text::regclass)::float8",
                &[&table],
            )
            .await
            .map_err(|e| catalog_error(&what, e))?;
        let n: f64 = row.get(0);
        self.estimates
            .lock()
            .expect("catalog lock")
            .insert(key, (Instant::now(), n));
        Ok(n)
    }

    /// Forgets everything (after DDL).
    pub fn clear(&self) {
        self.columns.lock().expect("catalog lock").clear();
        self.facts.lock().expect("catalog lock").clear();
        self.estimates.lock().expect("catalog lock").clear();
    }
}

/// Collations whose text order is the byte order of UTF-8.
fn is_bytewise(collation: &str) -> bool {
    matches!(collation, "C" | "POSIX" | "ucs_basic")
        || collation.eq_ignore_ascii_case("c.utf8")
        || collation.eq_ignore_ascii_case("c.utf-8")
}

/// A catalog connection to `src`.
async fn connect(src: &CatalogSource<'_>, what: &str) -> Result<tokio_postgres::Client, PgError> {
    let unreachable =
        |e: String| PgError::error("08006", format!("shardgate: cannot read {what}: {e}"));
    let (host, port) = src
        .addr
        .rsplit_once(':')
        .ok_or_else(|| unreachable(format!("bad address {}", src.addr)))?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(
            port.parse()
                .map_err(|_| unreachable(format!("bad address {}", src.addr)))?,
        )
        .user(src.user)
        .dbname(src.database)
        .application_name("shardgate-catalog")
        .connect_timeout(Duration::from_secs(5));
    if let Some(pw) = src.password {
        cfg.password(pw);
    }
    src.tls
        .connect_pg(&mut cfg)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

async fn fetch(src: &CatalogSource<'_>, table: &str) -> Result<Vec<String>, PgError> {
    let what = format!("the column list of {table}");
    let client = connect(src, &what).await?;
    let rows = client
        .query(
            "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(|e| {
            let e = catalog_error(&what, e);
            match e.code.as_str() {
                "42P01" => e.with_hint(
                    "shardgate reads a table's columns outside your transaction, so a table created in it is not seen yet: name the columns (INSERT INTO t (a, b) ...), or commit the CREATE TABLE first.",
                ),
                _ => e,
            }
        })?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// A catalog query's failure: the server's error as it is, or the
/// connection's.
fn catalog_error(what: &str, e: tokio_postgres::Error) -> PgError {
    match e.as_db_error() {
        Some(db) => PgError::error(db.code().code(), db.message().to_owned()),
        None => PgError::error("08006", format!("shardgate: cannot read {what}: {e}")),
    }
}
