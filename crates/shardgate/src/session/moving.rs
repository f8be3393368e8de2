//! Statements and a rebalancing move's hold (docs/ARCHITECTURE.md §10): a
//! statement that touches rows being moved waits at the move's gate, then
//! routes by the map in force after it.

use shardgate_protocol::error::PgError;
use shardgate_router::shard::{KeyFilter, ShardPlan, ValueSource};

use super::sharded::{key_from, Params, Unknown};
use super::{Session, SessionError};
use crate::rebalance::gate::{MoveGate, Touch};

impl Session {
    /// Waits while a move holds what `plan` touches. After a wait the
    /// session takes the runtime's current snapshot, even inside a
    /// transaction: in mode block_writes a transaction that began on the
    /// gate's snapshot cannot have written moving rows (its writes waited),
    /// and the moving rows it read are the same on both shards until the
    /// switch; in mode logical a transaction that touched moving keys never
    /// waits here, the cutover waits for it instead.
    pub(super) async fn pass_move_gate(
        &mut self,
        sql: &str,
        plan: &ShardPlan,
        params: Params<'_>,
    ) -> Result<(), PgError> {
        if writes_shards(plan) && self.runtime.registry.fenced() && self.is_write(sql) {
            self.wait_unfenced().await?;
        }
        loop {
            let Some(gate) = self.snap.move_gate.clone() else {
                return Ok(());
            };
            let touch = self.touch_of(&gate, plan, params).await?;
            if touch == Touch::Stays {
                return Ok(());
            }
            let write = self.is_write(sql);
            // Announce before looking at the phase: the cutover waits for
            // every transaction that touched moving keys to end (see
            // `ClientInfo::touching_moves`).
            let mine = self.info.touching_moves();
            self.info.set_touching_moves(true);
            // In mode logical a transaction that already touched moving keys
            // (and may have written them) goes on: the cutover waits for it,
            // so that its changes reach the last catch-up.
            let exempt = mine && gate.exempts_touching();
            if !gate.must_wait(write, touch) || exempt {
                if gate.phase() != crate::rebalance::gate::GatePhase::Open {
                    return Ok(());
                }
                if self.runtime.version() == self.snap.version {
                    return Ok(());
                }
            } else {
                // Mode block_writes: this transaction wrote no moving key
                // (those writes wait), so it may wait here and go on by
                // the new map.
                self.info.set_touching_moves(false);
                gate.wait_change().await;
            }
            self.take_snapshot().map_err(|e| match e {
                SessionError::Fatal(e) => e,
                other => PgError::error("57P01", other.to_string()),
            })?;
            self.info.use_snapshot(self.snap.version);
        }
    }

    /// Waits while this proxy cannot renew its lease (see
    /// `rebalance::registry`), up to `rebalance_hold_timeout_ms`.
    async fn wait_unfenced(&self) -> Result<(), PgError> {
        let ms = self.snap.config.sharding.rebalance_hold_timeout_ms;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        if self.runtime.registry.wait_unfenced(deadline).await {
            return Ok(());
        }
        Err(PgError::error(
            "55000",
            format!("shardgate could not renew its lease in shardgate_meta (sharding.metadata_node) for {ms} ms: writes to sharded tables wait while it cannot, so that a rebalancing move run by another proxy cannot lose them"),
        )
        .with_hint("check that the metadata node (sharding.metadata_node, by default shard 0's primary) is up and reachable from this proxy; reads go on meanwhile"))
    }

    /// Whether `plan` touches rows the gate's move relocates.
    async fn touch_of(
        &mut self,
        gate: &MoveGate,
        plan: &ShardPlan,
        params: Params<'_>,
    ) -> Result<Touch, PgError> {
        let t = &gate.transition;
        let map = t.from().clone();
        let moving = |rule: &shardgate_shardmap::TableRule| t.table_moves(rule);
        let touch = |b: bool| if b { Touch::Moving } else { Touch::Stays };
        Ok(match plan {
            ShardPlan::Unsharded
            | ShardPlan::NoTable
            | ShardPlan::ReferenceRead
            | ShardPlan::Unsupported { .. } => Touch::Stays,
            ShardPlan::ReferenceWrite => touch(gate.holds_reference_writes),
            ShardPlan::Broadcast => Touch::Unnamed,
            ShardPlan::NoKey { .. } => {
                if map.tables().iter().any(|r| moving(r)) {
                    Touch::Unnamed
                } else {
                    Touch::Stays
                }
            }
            ShardPlan::Keyed { table, filter } => {
                let Some(rule) = map.table(table.0.as_deref(), &table.1).cloned() else {
                    return Ok(Touch::Stays);
                };
                if !moving(&rule) {
                    return Ok(Touch::Stays);
                }
                match filter {
                    KeyFilter::Range { .. } => Touch::Unnamed,
                    KeyFilter::Eq(values) => {
                        let mut most = Touch::Stays;
                        for v in values {
                            most = most.max(self.value_touch(gate, &rule, v, params)?);
                        }
                        most
                    }
                }
            }
            ShardPlan::Insert(ins) => {
                let Some(rule) = map.table(ins.table.0.as_deref(), &ins.table.1).cloned() else {
                    return Ok(Touch::Stays);
                };
                if !moving(&rule) {
                    return Ok(Touch::Stays);
                }
                let index = self.insert_key_index(ins, &rule).await?;
                let Some(index) = index.filter(|_| !ins.from_select && !ins.rows.is_empty()) else {
                    return Ok(Touch::Unnamed);
                };
                let mut most = Touch::Stays;
                for row in &ins.rows {
                    let v = row.values.get(index).unwrap_or(&ValueSource::Other);
                    most = most.max(self.value_touch(gate, &rule, v, params)?);
                }
                most
            }
        })
    }

    /// What the key `v` denotes: a key that moves, one that stays, or a
    /// value the proxy cannot read as a key (unnamed).
    fn value_touch(
        &self,
        gate: &MoveGate,
        rule: &shardgate_shardmap::TableRule,
        v: &ValueSource,
        params: Params<'_>,
    ) -> Result<Touch, PgError> {
        Ok(match key_from(rule, v, params)? {
            Ok(Some(key)) => match gate.transition.key_moves(rule, &key) {
                Ok(None) => Touch::Stays,
                _ => Touch::Moving,
            },
            Ok(None) => Touch::Stays,
            Err(Unknown) => Touch::Unnamed,
        })
    }
}

/// Whether a plan reaches sharded or reference tables (what a fenced proxy
/// must not write).
fn writes_shards(plan: &ShardPlan) -> bool {
    !matches!(
        plan,
        ShardPlan::Unsharded
            | ShardPlan::NoTable
            | ShardPlan::ReferenceRead
            | ShardPlan::Unsupported { .. }
    )
}
