//! Named prepared statements in transaction pooling: each distinct
//! (query, parameter types) gets one proxy-wide id and is prepared on a server
//! connection as `sg_<id>` the first time a client needs it there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shardgate_router::{Classification, ShardPlan};

use crate::routing::StatementRouting;

/// One distinct statement known to the proxy.
#[derive(Debug)]
pub struct Statement {
    /// Proxy-wide id.
    pub id: u64,
    /// SQL text.
    pub query: String,
    /// Raw parameter type OIDs from Parse (4 bytes each).
    pub param_types: Vec<u8>,
    /// Server-side name.
    pub server_name: String,
    /// A SET or RESET statement (session state to track when it runs).
    pub is_set: bool,
    /// Some server accepted this statement, so a Parse of it outside a
    /// transaction can be answered without a server connection.
    validated: std::sync::atomic::AtomicBool,
    routing: std::sync::OnceLock<StatementRouting>,
    /// Its shard plan (literals resolved) and the shard map version it
    /// was made for: a statement is planned once, not at every Bind.
    shard_plan: std::sync::OnceLock<(u64, Arc<ShardPlan>)>,
    /// Its query statistics counters (found once).
    pub stats: std::sync::OnceLock<Arc<crate::stats::queries::QueryStat>>,
}

impl Statement {
    /// How the statement routes, `classify`ing its text on first use.
    pub fn routing(&self, classify: impl FnOnce() -> Classification) -> &StatementRouting {
        self.routing
            .get_or_init(|| StatementRouting::of(&classify()))
    }

    /// Its shard plan for shard map `version`, made by `plan` the first
    /// time (and again, uncached, for another version after a reload).
    pub fn shard_plan(&self, version: u64, plan: impl FnOnce() -> ShardPlan) -> Arc<ShardPlan> {
        match self.shard_plan.get() {
            Some((v, p)) if *v == version => p.clone(),
            Some(_) => Arc::new(plan()),
            None => self
                .shard_plan
                .get_or_init(|| (version, Arc::new(plan())))
                .1
                .clone(),
        }
    }

    /// Whether a server has parsed this statement successfully.
    pub fn is_validated(&self) -> bool {
        self.validated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records that a server parsed it successfully.
    pub fn mark_validated(&self) {
        self.validated
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Proxy-wide table of distinct statements.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    by_text: Mutex<HashMap<String, Vec<Arc<Statement>>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl StatementRegistry {
    /// The statement for this text and parameter types, registering it if new.
    pub fn intern(&self, query: &str, param_types: &[u8]) -> Arc<Statement> {
        let mut map = self.by_text.lock().expect("statement registry lock");
        if let Some(found) = map
            .get(query)
            .and_then(|v| v.iter().find(|s| s.param_types == param_types))
        {
            return found.clone();
        }
        let id = 1 + self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stmt = Arc::new(Statement {
            id,
            query: query.to_owned(),
            param_types: param_types.to_vec(),
            server_name: format!("sg_{id}"),
            is_set: crate::session::is_set_statement(query),
            validated: Default::default(),
            routing: Default::default(),
            shard_plan: Default::default(),
            stats: Default::default(),
        });
        map.entry(query.to_owned()).or_default().push(stmt.clone());
        stmt
    }

    /// Number of distinct statements seen.
    pub fn len(&self) -> usize {
        self.next_id.load(std::sync::atomic::Ordering::Relaxed) as usize
    }

    /// Whether no statement was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's own statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Arc<Statement>>,
}

impl ClientStatements {
    /// The statement the client calls `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Whether the client already uses `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Binds `name` to `stmt`.
    pub fn insert(&mut self, name: &str, stmt: Arc<Statement>) {
        self.by_name.insert(name.to_owned(), stmt);
    }

    /// Forgets `name`; returns whether it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Forgets every name.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_planned_once_per_shard_map_version() {
        let registry = StatementRegistry::default();
        let stmt = registry.intern("SELECT 1", &[]);
        let calls = std::cell::Cell::new(0);
        let plan = || {
            calls.set(calls.get() + 1);
            ShardPlan::NoTable
        };
        stmt.shard_plan(7, plan);
        stmt.shard_plan(7, plan);
        assert_eq!(calls.get(), 1, "planned once for version 7");
        stmt.shard_plan(8, plan);
        stmt.shard_plan(8, plan);
        assert_eq!(calls.get(), 3, "another version is planned every time");
        assert!(matches!(*stmt.shard_plan(7, plan), ShardPlan::NoTable));
        assert_eq!(calls.get(), 3);
    }
}
