//! Table column order, fetched from a server when routing needs it (an
//! INSERT or COPY without a column list into a sharded table) and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardgate_protocol::PgError;

/// Column names of one table, in table order.
pub type Columns = Arc<Vec<String>>;

/// Column names of tables, per database.
#[derive(Debug, Default)]
pub struct Catalog {
    columns: Mutex<HashMap<(String, String), Columns>>,
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

    /// Forgets everything (after DDL).
    pub fn clear(&self) {
        self.columns.lock().expect("catalog lock").clear();
    }
}

async fn fetch(src: &CatalogSource<'_>, table: &str) -> Result<Vec<String>, PgError> {
    let unreachable = |e: String| {
        PgError::error(
            "08006",
            format!("shardgate: cannot read the column list of {table}: {e}"),
        )
    };
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
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let rows = client
        .query(
            "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => PgError::error(db.code().code(), db.message().to_owned()),
            None => unreachable(e.to_string()),
        })?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
